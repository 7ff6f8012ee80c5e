"""Expert iteration's demonstrations are the best-of-n winners as sampled: SFT appends an EOS to a
finished completion, and a winner cut off at max_new_tokens must not learn one (it would teach the
policy to stop mid-sentence)."""

import json

from rlhfkit.config import SFTConfig
from rlhfkit.data import DataError, load_sft
from rlhfkit.models import load_tokenizer
from rlhfkit.train.expert_iteration import expert_demonstrations
from rlhfkit.train.sft import sft_tokens

import pytest


def test_truncated_winners_are_marked_unfinished():
    rows = [{"best": 1, "ended": [False, True]}, {"best": 0, "ended": [False, True]}]
    assert expert_demonstrations(["p0", "p1"], ["a0", "a1"], rows) == [
        {"prompt": "p0", "completion": "a0"},
        {"prompt": "p1", "completion": "a1", "finished": False},
    ]


def test_sft_learns_no_eos_after_an_unfinished_completion(tmp_path):
    tok = load_tokenizer("tiny")
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "completion": "a long answer"}) + "\n"
                    + json.dumps({"prompt": "Hi", "completion": "a long answer", "finished": False}) + "\n")
    done, cut = load_sft(path)
    cfg = SFTConfig(data=str(path))
    _, resp_done, loss_done = sft_tokens(tok, done, cfg)
    _, resp_cut, loss_cut = sft_tokens(tok, cut, cfg)
    assert resp_done == resp_cut + [tok.eos_token_id] and tok.eos_token_id not in resp_cut
    assert loss_cut == [1] * len(resp_cut) and loss_done == [1] * len(resp_done)


def test_finished_must_be_a_boolean(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "completion": "x", "finished": "no"}) + "\n")
    with pytest.raises(DataError, match=r'sft.jsonl:1: "finished" must be true or false'):
        load_sft(path)
