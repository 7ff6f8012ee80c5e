"""The bundled toy translation task (English -> Veltan): the builder, the files, the rules, the BLEU/chrF
rewards and judge, the pipeline's Context on it, and that SFT on its pairs raises dev BLEU."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rlhfkit.tasks import Judge, load_task

ROOT = Path(__file__).resolve().parents[1]
FILES = ("sft", "dev", "eval", "preference", "unlabeled")


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location("build_toy_translation", ROOT / "scripts" / "build_toy_translation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def task():
    return load_task("toy_translation")


def _rows(task, name):
    return [json.loads(line) for line in (task.root / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_build_is_deterministic_and_matches_shipped_files(builder, task):
    a, b = builder.build(seed=0), builder.build(seed=0)
    assert a == b
    for name, text in builder.file_texts(a).items():
        assert (task.root / name).read_text(encoding="utf-8") == text, f"{name}: run scripts/build_toy_translation.py"
    other = builder.build(seed=1)
    assert other["eval"] != a["eval"] and other["lexicon"] == a["lexicon"]  # the seed draws sentences, not the language


def test_sizes_lengths_and_no_overlap(task):
    rows = {name: _rows(task, name) for name in FILES}
    assert {n: len(r) for n, r in rows.items()} == {"sft": 2400, "dev": 200, "eval": 200, "preference": 400,
                                                     "unlabeled": 800}
    sources = [r["prompt"] for name in FILES for r in rows[name]]
    assert len(sources) == len(set(sources))  # no sentence in two files, none twice in one
    assert all(4 <= len(s.split()) <= 15 for s in sources)
    assert all(set(r) == ({"prompt", "completion"} if n == "sft" else {"prompt", "reference"})
               for n in FILES for r in rows[n])
    english = {w.strip(".").lower() for s in sources for w in s.split()}
    assert 250 <= len(english) <= 600  # "a few hundred" English word forms
    assert sum(len((task.root / f"{n}.jsonl").read_bytes()) for n in FILES) < 600_000


def test_rules_by_hand(builder, task):
    """A few sentences of the shipped files, translated by hand from the lexicon and the rules."""
    lex = {e: v for e, v in (line.split("\t")[1:3] for line in (task.root / "lexicon.tsv").read_text().splitlines()[1:])}
    ref = {r["prompt"]: r.get("completion") or r.get("reference") for n in FILES for r in _rows(task, n)}
    # subject - object - verb; "the" of a class-II noun is "la"; past tense -i
    assert lex["child"] == "lunu" and lex["picture"] == "paz" and lex["want"] == "gifer-"
    assert ref["She will smile because the boy will want the picture."] == "Sel voslo kar lo detaz la paz gifero."
    # negation "ne" before the verb; future -o, plural subject -n; object pronoun -k
    assert ref["We will not call the queen."] == "Nos lo falap ne bivon."
    assert ref["The child likes them."] == "La lunu lork rikela."
    # adjectives follow the noun and agree (class II, plural: -as); copula est-; prepositions stay in front
    assert ref["The box was not behind the new school."] == "Lo vosa ne esti dor la vomku vuvta."
    assert ref["They will be strong."] == "Lor kemipos eston."
    # the renderer on a structure built by hand: a number takes the plural noun (consonant-final stem: -es)
    # and the adjective agrees (dog is class I: -os); a plural subject adds -n to the verb
    s = builder.Sentence((builder.Clause("verb", builder.NP("dog", True, "two", "big"), "past", verb="see",
                                         obj=builder.NP(pronoun="3f")),))
    assert builder.english(s) == "Two big dogs saw her."
    assert (lex["dog"], lex["big"], lex["see"]) == ("bivag", "sezub-", "fuzr-")
    assert builder.veltan(s) == "Du bivages sezubos selk fuzrin."


def test_rewards_reference_wrong_empty(task):
    bleu, chrf = task.reward_functions["bleu"], task.reward_functions["chrf"]
    rows = task.splits["eval"][:3]
    src = [r["prompt"] for r in rows]
    refs = [r["reference"] for r in rows]
    framed = [task.format_prompt(s) for s in src]
    assert bleu(src, refs) == [100.0] * 3 and bleu(framed, refs) == [100.0] * 3 and chrf(framed, refs) == [100.0] * 3
    wrong = [" ".join(r.rstrip(".").split()[::-1]) + "." for r in refs]  # the right words, the wrong order
    assert all(0 < w < 100 for w in bleu(src, wrong)) and all(0 < w < 100 for w in chrf(src, wrong))
    other = [refs[1], refs[2], refs[0]]  # another sentence's reference
    assert all(b < w for b, w in zip(bleu(src, other), bleu(src, refs)))
    assert bleu(src, ["", "", ""]) == [0.0] * 3 and chrf(src, ["", "", ""]) == [0.0] * 3
    # SFT prompts and dev sentences have references too; a prompt of no file is an error naming it
    sft = task.splits["sft"][0]
    assert bleu([sft["prompt"]], [sft["completion"]]) == [100.0]
    with pytest.raises(KeyError, match="no reference for the prompt 'The moon is made of cheese.'"):
        bleu(["The moon is made of cheese."], ["x"])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        bleu(src[:2], refs[:1])


def test_judge_is_deterministic_bleu(task):
    judge = task.make_judge("tiny", False, 0)
    assert isinstance(judge, Judge)
    src = [r["prompt"] for r in task.splits["unlabeled"][:2]]
    ref = task.references["unlabeled"][:2]
    half = [" ".join(r.split()[:2]) for r in ref]
    assert judge.gold_reward(src, ref).tolist() == [100.0, 100.0]
    assert judge.compare(src, ref, half, noise=True).tolist() == [1.0, 1.0]
    assert judge.compare(src, half, ref).tolist() == [0.0, 0.0] and judge.compare(src, ref, ref).tolist() == [0.5, 0.5]
    groups = [["", r, h] for r, h in zip(ref, half)]
    assert judge.rank(src, groups, flip_prob=0.0, rng=0) == [[1, 2, 0], [1, 2, 0]]
    # label noise: flip_prob 1 reverses every pair, and the draws do not depend on flip_prob
    assert judge.rank(src, groups, flip_prob=1.0, rng=0) == [[0, 2, 1], [0, 2, 1]]
    many = judge.rank(src * 200, groups * 200, flip_prob=0.25, rng=np.random.default_rng(1))
    assert 0.3 < np.mean([r != [1, 2, 0] for r in many]) < 0.7  # a lapse (p = 0.5) shuffles the order
    report = judge.agreement_report(src, ref, half)
    assert report["n_annotators"] == 0 and report["mean_pairwise_agreement"] == 1.0 and report["prefers_a"] == 1.0


def test_loads_and_the_pipeline_context_builds_on_it(task, tmp_path):
    from rlhfkit.pipeline.config import PipelineConfig, preset_overrides
    from rlhfkit.pipeline.context import Context
    from rlhfkit.tasks.toy_translation import read_dev

    assert task.name == "toy_translation" and task.instruction.startswith("Translate")
    assert set(task.references) == {"preference", "unlabeled", "eval"}
    assert len(read_dev()) == 200 and not {r["prompt"] for r in read_dev()} & set(task.prompts("eval"))
    cfg = PipelineConfig(**{**preset_overrides("smoke"), "task": "toy_translation", "out": str(tmp_path / "run")})
    ctx = Context(cfg, progress=False)
    src = ctx.split("eval", 2)
    assert ctx.gold(ctx.frame(src), task.references["eval"][:2]).tolist() == [100.0, 100.0]
    assert ctx.gold(ctx.frame(src), ["", ""]).tolist() == [0.0, 0.0]


def test_corpus_metrics():
    from rlhfkit.eval.mt import corpus_bleu, corpus_chrf, corpus_scores

    refs = ["Lo kato vida la mus.", "Sel ne dorma."]
    assert corpus_bleu(refs, refs) == pytest.approx(100.0) and corpus_chrf(refs, refs) == pytest.approx(100.0)
    s = corpus_scores(["Lo kato vida.", "Sel dorma."], refs)
    assert 0 < s["bleu"] < 100 and 0 < s["chrf"] < 100 and s["n"] == 2 and "smooth:exp" in s["bleu_signature"]
    with pytest.raises(ValueError, match="1 hypotheses but 2 references"):
        corpus_bleu(refs[:1], refs)


@pytest.mark.slow
def test_sft_on_the_pairs_raises_dev_bleu(task, tmp_path):
    """The tiny random model (2 layers, 64 wide) learns only the shape of a Veltan sentence in a few dozen
    steps, so this runs on the short sentences (<= 6 words): mean sentence BLEU and chrF on dev rise from 0."""
    import torch

    from rlhfkit.config import SFTConfig
    from rlhfkit.eval.mt import corpus_chrf
    from rlhfkit.models import load_frozen_lm, load_tokenizer, tiny_dir
    from rlhfkit.rollout import GenerationConfig, generate
    from rlhfkit.tasks.toy_translation import read_dev
    from rlhfkit.train.sft import train_sft

    short = [r for r in task.splits["sft"] if len(r["prompt"].split()) <= 6]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": task.format_prompt(r["prompt"]), "completion": r["completion"]}) + "\n"
                            for r in short), encoding="utf-8")
    dev = [r for r in read_dev() if len(r["prompt"].split()) <= 6][:32]
    prompts, refs = [task.format_prompt(r["prompt"]) for r in dev], [r["reference"] for r in dev]

    def dev_scores(path):
        torch.manual_seed(0)
        ro = generate(load_frozen_lm(str(path), False), load_tokenizer(str(path)), prompts,
                      GenerationConfig(max_new_tokens=16, temperature=0.0, batch_size=32), seed=0)
        return float(np.mean(task.reward_functions["bleu"](prompts, ro.responses))), corpus_chrf(ro.responses, refs)

    before = dev_scores(tiny_dir())
    # fp32 on every machine: at lr 1e-2 the tiny model's bf16 trajectory moves with any change of rounding (after
    # rlhfkit.attention re-rounded bf16 attention, its dev BLEU fell under the threshold while chrF held), and
    # `auto` is bf16 on some CPUs and fp32 on others
    out = train_sft(SFTConfig(model="tiny", data=str(data), out=str(tmp_path / "run"), max_steps=50, batch_size=16,
                              lr=1e-2, max_completion_tokens=24, mixed_precision="no"), progress=False)
    after = dev_scores(out)
    assert len(short) >= 300 and len(dev) >= 20
    assert after[0] > before[0] + 2.0 and after[1] > before[1] + 1.0, (before, after)
