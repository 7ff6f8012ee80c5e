"""Data files in TRL's shapes and rlhfkit's own: what each line becomes and what the model sees
(conversations kept whole, the chat-template option), the errors that name FILE:LINE, and TRL pairs out
(`rlhfkit data to-pairs`). Runs on the tiny model's tokenizer (SmolLM2's ChatML template)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import RewardConfig, SFTConfig
from rlhfkit.data import (
    Conversation, DataError, Message, load_preferences, load_prompts, load_sft, pair_rows, read_jsonl,
)
from rlhfkit.models import load_tokenizer
from rlhfkit.forward import encode_prompts, format_prompts
from rlhfkit.train.sft import encode_sft_batch

SYSTEM = {"role": "system", "content": "You answer in French."}
U1 = {"role": "user", "content": "Complete: the grass is"}
A1 = {"role": "assistant", "content": " green."}
U2 = {"role": "user", "content": "Complete: the sky is"}
A2 = {"role": "assistant", "content": " blue."}
R = {"role": "assistant", "content": " red."}
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM"  # the SmolLM2 template's own default


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def sft_cfg(**kw):
    return SFTConfig(data="x", **kw)


# ---- a conversation is kept whole ------------------------------------------------------------------


def test_prompt_messages_keep_every_turn_and_the_given_system_message(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [{"messages": [SYSTEM, U1, A1, U2]}])
    (rec,) = load_prompts(path)
    assert rec["prompt"] == Conversation([SYSTEM, U1, A1, U2])
    (text,) = format_prompts(tok, [rec["prompt"]], system_prompt="Be brief.")
    for m in (SYSTEM, U1, A1, U2):
        assert f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>" in text
    assert "Be brief." not in text and DEFAULT_SYSTEM not in text  # the conversation's own system message only
    assert text.endswith("<|im_start|>assistant\n")


def test_system_prompt_fills_in_only_where_the_conversation_has_none(tok):
    (text,) = format_prompts(tok, [Conversation([U1, A1, U2])], system_prompt="Be brief.")
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "green." in text and "sky" in text


def test_messages_ending_with_the_answer_give_the_conversation_up_to_the_last_user_turn(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"messages": [SYSTEM, U1, A1, U2, A2]}, {"messages": [U1]}])
    a, b = load_prompts(path)
    assert a["prompt"] == Conversation([SYSTEM, U1, A1, U2])
    assert b["prompt"] == U1["content"]  # one user message is the plain string prompt


def test_sft_messages_keep_every_turn_loss_on_the_last_answer(tmp_path, tok):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [SYSTEM, U1, A1, U2, A2]}])
    (ex,) = load_sft(path)
    assert ex.prompt == Conversation([SYSTEM, U1, A1, U2]) and ex.completion == A2["content"]
    p_ids, p_mask, r_ids, r_mask, loss = encode_sft_batch(tok, [ex], sft_cfg())
    prompt = tok.decode(p_ids[0][p_mask[0].bool()])
    for m in (SYSTEM, U1, A1, U2):
        assert m["content"] in prompt
    assert DEFAULT_SYSTEM not in prompt
    assert torch.equal(loss, r_mask)
    assert tok.decode(r_ids[0][loss[0].bool()]) == A2["content"] + tok.eos_token


def test_sft_loss_on_every_assistant_turn(tmp_path, tok):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [SYSTEM, U1, A1, U2, A2]}, {"prompt": "Hi", "completion": "Yo"}])
    multi, single = load_sft(path)
    cfg = sft_cfg(loss_on="all")
    p_ids, p_mask, r_ids, r_mask, loss = encode_sft_batch(tok, [multi, single], cfg)
    prompt = tok.decode(p_ids[0][p_mask[0].bool()])
    assert U1["content"] in prompt and A1["content"] not in prompt  # the first answer is trained on
    trained = tok.decode(r_ids[0][loss[0].bool()])
    assert trained == A1["content"] + tok.eos_token + A2["content"] + tok.eos_token
    # the whole sequence is exactly the chat template's text of the conversation
    seq = tok.decode(torch.cat([p_ids[0][p_mask[0].bool()], r_ids[0][r_mask[0].bool()]]))
    assert seq == tok.apply_chat_template([SYSTEM, U1, A1, U2, A2], tokenize=False).rstrip("\n")
    # a single-turn example is the same as with loss_on 'last'
    last = encode_sft_batch(tok, [single], sft_cfg())
    n = int(r_mask[1].sum())
    assert torch.equal(r_ids[1, :n], last[2][0]) and torch.equal(loss[1, :n], last[4][0])


def test_sft_encoding_of_plain_prompts_is_unchanged(tok):
    """{prompt, completion} strings: the chat prompt left-padded and cut, the completion + EOS, loss on it."""
    from rlhfkit.data import SFTExample
    from rlhfkit.forward import encode_responses

    ex = [SFTExample("Hello there friend, how are you doing today my old friend?", "Fine, thanks, and you?"), SFTExample("Hi", "Yo")]
    cfg = sft_cfg(max_prompt_tokens=20, max_completion_tokens=5, system_prompt="Be nice.")
    p, pm = encode_prompts(tok, [e.prompt for e in ex], cfg.system_prompt)
    r, rm = encode_responses(tok, [e.completion for e in ex], True, 5)
    for got, want in zip(encode_sft_batch(tok, ex, cfg), (p[:, -20:], pm[:, -20:], r, rm, rm)):
        assert torch.equal(got, want)


# ---- the chat-template option ----------------------------------------------------------------------


def test_chat_template_never_gives_raw_text(tok):
    assert format_prompts(tok, ["The sky is"], system_prompt="Be brief.", chat_template="never") == ["The sky is"]
    ids, mask = encode_prompts(tok, ["The sky is"], chat_template="never")
    assert ids[0].tolist() == tok("The sky is", add_special_tokens=False)["input_ids"]
    (auto,) = format_prompts(tok, ["The sky is"])
    assert auto.startswith("<|im_start|>system\n") and "<|im_start|>user\nThe sky is<|im_end|>" in auto
    with pytest.raises(ValueError, match="chat_template must be one of auto, never"):
        format_prompts(tok, ["x"], chat_template="sometimes")


def test_chat_template_never_sft_is_prompt_then_completion_raw(tok):
    from rlhfkit.data import SFTExample

    p_ids, p_mask, r_ids, _, _ = encode_sft_batch(tok, [SFTExample("The sky is", " blue.")], sft_cfg(chat_template="never"))
    assert tok.decode(p_ids[0]) == "The sky is" and tok.decode(r_ids[0]) == " blue." + tok.eos_token


def test_a_conversation_with_raw_text_is_an_error(tmp_path, tok):
    with pytest.raises(ValueError, match="needs a chat template, but chat_template is 'never'"):
        format_prompts(tok, [Conversation([SYSTEM, U1])], chat_template="never")
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": [SYSTEM, U1]}])
    with pytest.raises(DataError, match=rf"^{p}:2: a conversation .* needs the chat template"):
        load_prompts(p, chat_template="never")
    s = write_jsonl(tmp_path / "s.jsonl", [{"messages": [U1, A1, U2, A2]}])
    with pytest.raises(DataError, match=rf"^{s}:1: a conversation"):
        load_sft(s, chat_template="never")
    assert load_prompts(write_jsonl(tmp_path / "q.jsonl", [{"messages": [U1]}]), chat_template="never")[0]["prompt"] == U1["content"]
    result = CliRunner().invoke(app, ["sft", "--model", "tiny", "--data", str(s), "--out", str(tmp_path / "o"),
                                      "--chat-template", "never"])
    assert result.exit_code == 2 and f"error: {s}:1: a conversation" in result.output
    result = CliRunner().invoke(app, ["sft", "--model", "tiny", "--data", str(s), "--out", str(tmp_path / "o"),
                                      "--chat-template", "sometimes"])
    assert result.exit_code == 2 and "chat_template must be one of auto, never, got 'sometimes'" in result.output


def test_the_run_folder_records_the_chat_template(tmp_path):
    import yaml

    from rlhfkit.train.sft import train_sft

    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": [SYSTEM, U1], "completion": [A1]}, {"text": "The sky is blue."}])
    out = train_sft(SFTConfig(model="tiny", data=str(data), out=str(tmp_path / "run"), max_steps=1, batch_size=2,
                              loss_on="all"), progress=False)
    assert yaml.safe_load((out / "config.yaml").read_text())["chat_template"] == "auto"
    info = json.loads((out / "run_info.json").read_text())
    assert info["chat_template"] == "auto" and info["prompt_format"] == "chat template"
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"prompt": "The sky is", "completion": " blue."}])
    out = train_sft(SFTConfig(model="tiny", data=str(raw), out=str(tmp_path / "raw"), max_steps=1, chat_template="never"),
                    progress=False)
    info = json.loads((out / "run_info.json").read_text())
    assert info["chat_template"] == "never" and info["prompt_format"] == "raw text"


# ---- TRL's shapes in ---------------------------------------------------------------------------------


def test_trl_conversational_prompt_only_and_prompt_completion(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": [SYSTEM, U1]}, {"prompt": "plain"}])
    assert [r["prompt"] for r in load_prompts(p)] == [Conversation([SYSTEM, U1]), "plain"]
    s = write_jsonl(tmp_path / "s.jsonl", [{"prompt": [SYSTEM, U1, A1, U2], "completion": [A2]},
                                            {"prompt": "The sky is", "completion": " blue."}])
    a, b = load_sft(s)
    assert (a.prompt, a.completion) == (Conversation([SYSTEM, U1, A1, U2]), A2["content"])
    assert (b.prompt, b.completion) == ("The sky is", " blue.")


def test_trl_text_shape_is_language_modelling_on_the_raw_text(tmp_path, tok):
    s = write_jsonl(tmp_path / "s.jsonl", [{"text": "The sky is blue."}])
    (ex,) = load_sft(s)
    assert ex.prompt is None and ex.completion == "The sky is blue."
    p_ids, _, r_ids, r_mask, loss = encode_sft_batch(tok, [ex], sft_cfg())
    ids = tok("The sky is blue.", add_special_tokens=False)["input_ids"]
    assert p_ids[0].tolist() == ids[:1]  # no template: the first token is the context of the rest
    assert r_ids[0].tolist() == ids[1:] + [tok.eos_token_id] and torch.equal(loss, r_mask)


def test_trl_preference_shapes(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": [SYSTEM, U1], "chosen": [A1], "rejected": [{"role": "assistant", "content": " red."}]},
        {"chosen": [U1, A1, U2, A2], "rejected": [U1, A1, U2, {"role": "assistant", "content": " green."}]},
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2},
        {"prompt": [U1], "responses": ["x", "y", "z"], "ranking": [2, 0, 1]},
    ])
    prefs = load_preferences(path)
    assert (prefs[0].prompt, prefs[0].chosen, prefs[0].rejected) == (Conversation([SYSTEM, U1]), " green.", " red.")
    # implicit prompt: the shared turns are the prompt, the last assistant turns the answers
    assert (prefs[1].prompt, prefs[1].chosen, prefs[1].rejected) == (Conversation([U1, A1, U2]), " blue.", " green.")
    assert (prefs[2].prompt, prefs[2].margin) == ("p", 2.0)
    assert [(p.prompt, p.chosen, p.rejected) for p in prefs[3:]] == [
        (U1["content"], "z", "x"), (U1["content"], "z", "y"), (U1["content"], "x", "y")]
    # conversation prompts are hashable and compare by value (grouping by prompt, dict keys)
    assert len({p.prompt for p in prefs}) == 4 and hash(prefs[1].prompt) == hash(Conversation([U1, A1, U2]))
    assert isinstance(prefs[0].prompt[0], Message) and prefs[0].prompt[0].role == "system"


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "completion": "c", "label": True}, 'not read: give pairs {"prompt", "chosen", "rejected"}'),
    ({"chosen": "a", "rejected": "b"}, 'must then be conversations (lists of messages, TRL implicit prompt); with plain-string answers give "prompt"'),
    ({"chosen": [U1, A1], "rejected": [U2, A2]}, "must share every turn but their last assistant message"),
    ({"chosen": [A1], "rejected": [A2]}, "share no turn before the answer"),
    ({"chosen": [U1, A1, A2], "rejected": [U1, A1, R]}, 'share must end with a user message'),
    ({"prompt": [U1], "chosen": [A1, U2, A2], "rejected": [A2]}, '"chosen" must be one assistant message; put the earlier turns'),
    ({"prompt": [U1, A1], "chosen": [A2], "rejected": [A1]}, '"prompt" must end with a user message'),
    ({"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}, '"prompt"[0].role must be system, user or assistant'),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, '"prompt" must be a string or a list of'),
])
def test_preference_errors_name_file_line_and_the_alternative(tmp_path, row, message):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError) as e:
        load_preferences(path)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, 'a preference pair: SFT reads {"prompt", "completion"}'),
    ({"prompt": [U1], "completion": "c"}, '"prompt" and "completion" must both be strings or both lists of messages'),
    ({"prompt": "p", "completion": [A1]}, '"prompt" and "completion" must both be strings or both lists of messages'),
    ({"messages": [U1, A1, U2]}, "the last message must be the assistant reply"),
    ({"prompt": [U1], "completion": [A1, A2]}, "the last assistant reply must follow a user message"),
    ({"foo": 1}, 'missing "prompt" (or "messages", or "text")'),
])
def test_sft_errors_name_file_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}, row])
    with pytest.raises(DataError) as e:
        load_sft(path)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value)


def test_conversations_flow_through_reward_scoring(tmp_path, tok):
    """A conversational preference file trains the reward model (pairs of one prompt share a key)."""
    from rlhfkit.scoring import encode_pairs_input
    from rlhfkit.train.reward import train_reward

    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": [SYSTEM, U1, A1, U2], "chosen": [A2], "rejected": [{"role": "assistant", "content": " red."}]},
        {"chosen": [U1, A1], "rejected": [U1, {"role": "assistant", "content": " loud."}]},
    ] * 2)
    ids, mask, start = encode_pairs_input(tok, [Conversation([SYSTEM, U1, A1, U2])], [" blue."],
                                          SimpleNamespace(system_prompt=None, max_prompt_tokens=256, max_completion_tokens=16))
    text = tok.decode(ids[0][mask[0].bool()])
    assert all(m["content"] in text for m in (SYSTEM, U1, A1, U2)) and text.endswith(" blue." + tok.eos_token)
    out = train_reward(RewardConfig(model="tiny", data=str(path), out=str(tmp_path / "rm"), max_steps=1, batch_size=2,
                                    eval_fraction=0.0), progress=False)
    assert (out / "run_info.json").exists()


# ---- TRL pairs out -----------------------------------------------------------------------------------


def test_pair_rows_write_margin_on_every_row_or_none_and_read_back(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"prompt": "p", "responses": ["x", "y", "z"], "ranking": [1, 0, 2], "annotator": "ann"},
        {"prompt": "q", "chosen": "a", "rejected": "b", "margin": 1.5},
        {"prompt": [SYSTEM, U1], "chosen": [A1], "rejected": [A2]},
    ])
    rows = pair_rows(load_preferences(path))
    assert len(rows) == 3 + 1 + 1 and all(isinstance(r["margin"], float) for r in rows)
    assert [r["margin"] for r in rows] == [0.0, 0.0, 0.0, 1.5, 0.0]
    assert rows[0] == {"prompt": "p", "chosen": "y", "rejected": "x", "margin": 0.0, "annotator": "ann"}
    assert rows[4]["prompt"] == [SYSTEM, U1] and rows[4]["chosen"] == [A1] and rows[4]["rejected"] == [A2]
    no_margin = pair_rows(load_preferences(write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "responses": ["x", "y"], "ranking": [0, 1]}])))
    assert no_margin == [{"prompt": "p", "chosen": "x", "rejected": "y"}]


def test_data_to_pairs_command(tmp_path):
    src = write_jsonl(tmp_path / "rankings.jsonl", [
        {"prompt": "p", "responses": ["a", "b", "c", "d"], "ranking": [3, 1, 0, 2], "source": "sft"},
        {"prompt": "q", "chosen": "yes", "rejected": "no"},
    ])
    dst = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(app, ["data", "to-pairs", str(src), str(dst)])
    assert result.exit_code == 0, result.output
    assert "7 pairs from 2 prompts written" in result.output
    rows = [r for _, r in read_jsonl(dst)]
    assert len(rows) == 4 * 3 // 2 + 1 and all(set(r) >= {"prompt", "chosen", "rejected"} for r in rows)
    assert not any("margin" in r for r in rows) and rows[0]["source"] == "sft"
    assert [(r["chosen"], r["rejected"]) for r in rows[:3]] == [("d", "b"), ("d", "a"), ("d", "c")]
    assert rows[-1] == {"prompt": "q", "chosen": "yes", "rejected": "no"}
    # the output is a preference file rlhfkit reads back, pair for pair
    assert [(p.prompt, p.chosen, p.rejected) for p in load_preferences(dst)] == \
        [(p.prompt, p.chosen, p.rejected) for p in load_preferences(src)]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": "c", "label": False}])
    result = CliRunner().invoke(app, ["data", "to-pairs", str(bad), str(dst)])
    assert result.exit_code == 2 and f"{bad}:1: unpaired preference" in result.output


def test_generate_with_conversations_and_raw_text(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": [SYSTEM, U1]}, {"prompt": "The sky is"}])
    out = tmp_path / "o.jsonl"
    result = CliRunner().invoke(app, ["generate", "--model", "tiny", "--prompts", str(prompts), "--out", str(out),
                                      "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    rows = [r for _, r in read_jsonl(out)]
    assert rows[0]["prompt"] == [SYSTEM, U1] and rows[1]["prompt"] == "The sky is"  # TRL's shapes back out
    result = CliRunner().invoke(app, ["generate", "--model", "tiny", "--prompts", str(prompts), "--out", str(out),
                                      "--chat-template", "never"])
    assert result.exit_code == 2 and f"{prompts}:1: a conversation" in result.output


def test_ppo_samples_for_conversations_and_records_the_chat_template(tmp_path):
    from rlhfkit.config import PPOConfig
    from rlhfkit.train.ppo import train_ppo

    seen = []

    def reward(prompts, responses):
        seen.extend(prompts)
        return torch.tensor([float(len(r)) for r in responses])

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": [SYSTEM, U1, A1, U2]}, {"prompt": "The sky is"}])
    cfg = PPOConfig(model="tiny", prompts=str(prompts), out=str(tmp_path / "ppo"), steps=1, batch_size=2, minibatch_size=2,
                    ppo_epochs=1, max_new_tokens=4)
    out = train_ppo(cfg, reward_fn=reward, progress=False)
    assert set(seen) == {Conversation([SYSTEM, U1, A1, U2]), "The sky is"}  # the reward sees the whole conversation
    info = json.loads((out / "run_info.json").read_text())
    assert info["chat_template"] == "auto" and info["prompt_format"] == "chat template"
