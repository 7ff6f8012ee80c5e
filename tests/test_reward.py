"""Reward models: saved files that plain transformers scores as rlhfkit does, the tokenisation saved with
them, grouping and weighting by prompt, normalisation on the pipeline's SFT samples, and the missing-EOS
rule of reward scoring. All on the tiny model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.config import PPOConfig, RewardConfig
from rlhfkit.data import load_preferences, read_jsonl, write_jsonl
from rlhfkit.models import RewardModel, load_tokenizer

PROMPTS = ["Review: a quiet film.", "Hi", "Write one line about the sea, please, and keep it short.", "Review: a quiet film."]
RESPONSES = ["Lovely.", "A long and rather tedious film with nothing to recommend it at all.", "Waves.", "It drags."]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def _random_head_rm(seed: int = 0) -> RewardModel:
    rm = RewardModel.from_pretrained("tiny")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rm.model.score.weight.copy_(torch.randn(rm.model.score.weight.shape, generator=g))
    return rm.eval()


def _chat_texts(tok, prompts, responses, system_prompt):
    """What a transformers user feeds the model: the chat-formatted prompt, the response, the EOS."""
    def fmt(p):
        msgs = [{"role": "user", "content": p}]
        if system_prompt is not None:
            msgs.insert(0, {"role": "system", "content": system_prompt})
        return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    return [fmt(p) + r + tok.eos_token for p, r in zip(prompts, responses)]


# ------------------------------------------------------------------------- files transformers reads the same


@pytest.mark.parametrize("side", ["right", "left"])
def test_plain_transformers_scores_a_saved_reward_model_as_rlhfkit_does(tmp_path, tok, side):
    """from_pretrained + the model's own forward on chat prompt + response + EOS, batched with padding,
    equals RewardScorer (normalisation included), whichever side pads."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.scoring import RewardScorer

    rm = _random_head_rm()
    rm.set_normalization(0.3, 2.0)
    rm.set_scoring("Be brief.", 256, 128)
    rm.save_pretrained(tmp_path / "rm", tok)
    ours = RewardScorer.load(tmp_path / "rm", device="cpu")(PROMPTS, RESPONSES)

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    user_tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    assert user_tok.pad_token_id != user_tok.eos_token_id == tok.eos_token_id
    assert plain.config.pad_token_id == user_tok.pad_token_id
    user_tok.padding_side = side
    enc = user_tok(_chat_texts(user_tok, PROMPTS, RESPONSES, "Be brief."), padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # rows of different lengths: the pooling rule is exercised
    with torch.no_grad():
        theirs = plain(**enc).logits[:, 0]
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert ours.std() > 1e-2  # the scores differ: the comparison can fail
    # centred scores subtract the recorded reference mean (the head has no bias to hold it)
    centred = RewardScorer.load(tmp_path / "rm", device="cpu", center=True)(PROMPTS, RESPONSES)
    torch.testing.assert_close(centred, ours - 0.15, rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["rlhfkit_reference_mean"] == pytest.approx(0.15)


def test_spare_pad_token_is_special_and_never_in_chat_text(tok):
    from rlhfkit.models import spare_pad_token

    pad = spare_pad_token(tok)
    assert pad not in (tok.eos_token, tok.bos_token, tok.unk_token) and pad not in tok.chat_template
    assert len(tok(pad, add_special_tokens=False)["input_ids"]) == 1  # one special token
    text = _chat_texts(tok, PROMPTS, RESPONSES, None)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert all(tok.convert_tokens_to_ids(pad) not in row for row in ids)


def test_old_format_reward_model_loads_and_scores_as_before(tmp_path, tok):
    """A folder saved before the normalisation moved into the head (unscaled head, mean/std config keys,
    pad == EOS): the centred score is the old normalised score (raw - mean) / std."""
    from rlhfkit.scoring import RewardScorer

    rm = _random_head_rm(seed=2)
    del rm.model.config.rlhfkit_reference_mean
    rm.model.config.rlhfkit_reward_mean, rm.model.config.rlhfkit_reward_std = 0.5, 4.0
    rm.model.save_pretrained(tmp_path / "old")
    tok.save_pretrained(tmp_path / "old")
    raw = RewardScorer(rm, tok, SimpleNamespace(system_prompt=None, max_prompt_tokens=256, max_completion_tokens=128))(PROMPTS, RESPONSES)
    again = RewardScorer.load(tmp_path / "old", device="cpu", center=True)
    torch.testing.assert_close(again(PROMPTS, RESPONSES), (raw - 0.5) / 4.0, rtol=0, atol=1e-5)
    assert not hasattr(again.rm.config, "rlhfkit_reward_std")  # upgraded: saving it writes the new format


def _rankings(n, k=3, start=0):
    words = "good fine great bad dull awful long short".split()
    rows = []
    for i in range(start, start + n):
        responses = [" ".join(words[(i + j + m) % len(words)] for m in range(2 + j)) for j in range(k)]
        rows.append({"prompt": f"Review {i}: a film.", "responses": responses, "ranking": list(range(k))})
    return rows


def test_reward_model_saves_its_tokenisation_and_scores_with_it(tmp_path, tok):
    """The system prompt and the token limits the reward model was trained with are saved with it, and
    RewardScorer.load scores with them (no caller passes them)."""
    from rlhfkit.scoring import RewardScorer
    from rlhfkit.train.reward import train_reward

    data = write_jsonl(tmp_path / "prefs.jsonl", _rankings(8))
    out = train_reward(RewardConfig(model="tiny", data=str(data), out=str(tmp_path / "rm"), max_steps=2, batch_size=4, lr=1e-2,
                                    eval_fraction=0.0, system_prompt="Be brief.", max_prompt_tokens=40,
                                    max_completion_tokens=6), progress=False)
    rm = RewardModel.from_pretrained(out)
    assert rm.scoring == {"system_prompt": "Be brief.", "max_prompt_tokens": 40, "max_completion_tokens": 6, "chat_template": "auto"}
    scorer = RewardScorer.load(out, device="cpu")
    long = "one two three four five six seven eight nine ten eleven"
    cut = tok.decode(tok(long, add_special_tokens=False)["input_ids"][:5])  # 5 tokens + the EOS = 6
    torch.testing.assert_close(scorer(["Hi"], [long]), scorer(["Hi"], [cut]), rtol=0, atol=1e-6)
    default = RewardScorer(scorer.rm, scorer.tokenizer, SimpleNamespace(system_prompt=None, max_prompt_tokens=256, max_completion_tokens=128))
    assert (default(PROMPTS, RESPONSES) - scorer(PROMPTS, RESPONSES)).abs().max() > 1e-4  # the system prompt matters
    # and a transformers user with the saved system prompt gets the saved model's score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    user_tok = AutoTokenizer.from_pretrained(out)
    enc = user_tok(_chat_texts(user_tok, PROMPTS, ["Lovely.", "Fine", "Waves.", "It drags."], "Be brief."), padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = AutoModelForSequenceClassification.from_pretrained(out).eval()(**enc).logits[:, 0]
    torch.testing.assert_close(theirs, scorer(PROMPTS, ["Lovely.", "Fine", "Waves.", "It drags."]), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------- grouping and weighting by prompt


def _mixed_file(tmp_path):
    """Each prompt has several pair lines, interleaved with the other prompts', and prompt 0 a ranking too."""
    rows = [{"prompt": f"Prompt {i}", "chosen": f"good {j}", "rejected": f"bad {j}"} for j in range(3) for i in range(10)]
    rows.append({"prompt": "Prompt 0", "responses": ["best", "worse", "worst"], "ranking": [0, 1, 2]})
    return write_jsonl(tmp_path / "mixed.jsonl", rows)


def test_pairs_group_by_prompt_so_no_prompt_straddles_the_split(tmp_path):
    from rlhfkit.train.reward import group_pairs

    groups = group_pairs(load_preferences(_mixed_file(tmp_path)))
    assert len(groups) == 10
    assert all(len({p.prompt for p in g}) == 1 for g in groups)
    assert sorted(len(g) for g in groups) == [3] * 9 + [6]

    from rlhfkit.train.reward import split_groups

    for seed in range(8):
        train, held = split_groups(groups, 0.3, seed)
        assert len(held) == 3 and len(train) == 7
        assert not {p.prompt for g in train for p in g} & {p.prompt for g in held for p in g}


def test_bradley_terry_weights_hand_computed():
    import math

    from rlhfkit import ops

    chosen, rejected = torch.tensor([1.0, 0.0, 2.0, 0.5], dtype=torch.float64), torch.tensor([0.0, 0.0, 0.0, 1.5], dtype=torch.float64)
    w = ops.prompt_weights(torch.tensor([7, 7, 7, 3]), dtype=torch.float64)
    torch.testing.assert_close(w, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0], dtype=torch.float64))
    nll = [math.log1p(math.exp(-d)) for d in (1.0, 0.0, 2.0, -1.0)]
    want = 0.5 * (sum(nll[:3]) / 3 + nll[3])
    got = ops.bradley_terry_loss(chosen, rejected, weight=w)
    assert abs(got.item() - want) < 1e-12
    assert abs(ops.bradley_terry_loss(chosen, rejected).item() - sum(nll) / 4) < 1e-12


def test_each_prompt_weighs_the_same_in_the_reward_loss(tmp_path, tok):
    """A prompt with 6 pairs and one with 1: the batch loss is the mean over prompts of each prompt's mean
    pair loss (InstructGPT), not the mean over pairs."""
    from rlhfkit.train.reward import batch_loss, group_pairs

    pairs = load_preferences(write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "A", "responses": ["w", "x y", "z z z", "q"], "ranking": [0, 1, 2, 3]},
        {"prompt": "B", "chosen": "yes", "rejected": "no"}]))
    groups = group_pairs(pairs)
    rm = _random_head_rm(seed=4)
    cfg = SimpleNamespace(system_prompt=None, max_prompt_tokens=256, max_completion_tokens=128)
    with torch.no_grad():
        loss, _, _ = batch_loss(rm, tok, groups, cfg, False, "cpu")
        per_prompt = [torch.stack([batch_loss(rm, tok, [[p]], cfg, False, "cpu")[0] for p in g]) for g in groups]
    want = torch.stack([x.mean() for x in per_prompt]).mean()
    torch.testing.assert_close(loss, want, rtol=0, atol=1e-5)
    assert abs(torch.cat(per_prompt).mean() - want) > 1e-3  # per pair would differ: the test can fail


# ------------------------------------------------------------------------- the pipeline: SFT reference, missing EOS


def _ctx(run, **kw):
    from rlhfkit.pipeline.config import PipelineConfig, wire

    from rlhfkit.processes import Processes

    return SimpleNamespace(cfg=wire(PipelineConfig(out=str(run), **kw), run, "no"), run=run, mp="no", progress=False,
                           processes=Processes())


def test_pipeline_reward_model_is_normalised_on_sft_samples(tmp_path, monkeypatch):
    from rlhfkit.pipeline import stages
    from rlhfkit.train import reward

    run = tmp_path / "run"
    write_jsonl(run / "prefs" / "rankings.jsonl", [
        {"prompt": "P1", "responses": ["s1", "i1", "s2", "i2"], "ranking": [0, 1, 2, 3], "sources": ["sft", "initial", "sft", "initial"]},
        {"prompt": "P2", "responses": ["i3", "s3"], "ranking": [1, 0], "sources": ["initial", "sft"]}])
    seen = {}
    monkeypatch.setattr(reward, "train_reward", lambda cfg, progress=True: seen.setdefault("cfg", cfg))
    stages.stage_reward(_ctx(run))
    ref = seen["cfg"].reference
    assert ref is not None
    assert [(r["prompt"], r["response"]) for _, r in read_jsonl(ref)] == [("P1", "s1"), ("P1", "s2"), ("P2", "s3")]
    # rankings that do not record sources: every response, as before
    write_jsonl(run / "prefs" / "rankings.jsonl", [{"prompt": "P1", "responses": ["a", "b"], "ranking": [0, 1]}])
    seen.clear()
    stages.stage_reward(_ctx(run))
    assert seen["cfg"].reference is None


def test_missing_eos_penalty_is_on_by_default_in_ppo():
    assert PPOConfig(prompts="p.jsonl").missing_eos_penalty > 0


def test_best_of_n_penalises_truncated_candidates_as_ppo_does():
    """The reward model scores every candidate as finished; a truncated one loses the PPO missing-EOS
    penalty before the argmax (and can still win by more than the penalty)."""
    from rlhfkit.train.best_of_n import select_best

    ro = SimpleNamespace(responses=["cut off and", "done.", "short.", "much better but cut"],
                         ended=torch.tensor([False, True, True, False]))
    picked, rows = select_best(["p1", "p2"], ro, torch.tensor([2.0, 1.8, 0.0, 5.0]), 2, missing_eos_penalty=0.5)
    assert picked == ["done.", "much better but cut"]
    assert rows[0]["best"] == 1 and rows[0]["ended"] == [False, True] and rows[0]["penalised_scores"] == pytest.approx([1.5, 1.8])
    assert rows[0]["scores"] == pytest.approx([2.0, 1.8])


def test_reward_model_trains_the_eos_embedding(tok):
    """The score is read at the EOS; with pad == EOS the embedding's padding_idx would withhold that row's
    gradient (and a resumed run, whose saved config has a spare pad token, would withhold another's)."""
    rm = _random_head_rm(seed=5).train()
    ids = torch.tensor([tok("A film.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
    rm(ids, torch.ones_like(ids)).sum().backward()
    grad = rm.model.get_input_embeddings().weight.grad
    assert grad[tok.eos_token_id].abs().sum() > 0
