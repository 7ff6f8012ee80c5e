"""The pipeline's config: shared settings at the top level, and one section per method holding that method's
own config, the dataclass its command takes (``sft:`` takes the options of ``rlhfkit sft --help``, ``ppo:``
those of ``rlhfkit ppo --help``, and so on):

    model: smollm2-135m
    ppo:
      steps: 20
      max_kl: 3.0

A section's paths, seed, precision and system prompt are wired by the pipeline (the SFT model feeds the reward
model and PPO, and so on); setting one of them is an error that says who sets it. The saved ``pipeline.yaml``
of a run shows every section as its method ran it, wired values included.

Values: the methods' defaults < the pipeline's defaults (``SECTION_DEFAULTS``) < the YAML file < a preset <
flags and ``--set SECTION.OPTION=VALUE``.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from rlhfkit.config import (
    BestOfNConfig, DPOConfig, ExpertIterationConfig, GRPOConfig, PPOConfig, RewardConfig, RLOOConfig, SFTConfig, opt,
)

SECTIONS: dict[str, type] = {
    "sft": SFTConfig,
    "reward": RewardConfig,
    "ppo": PPOConfig,
    "best_of_n": BestOfNConfig,
    "expert_iteration": ExpertIterationConfig,
    "dpo": DPOConfig,
    "rloo": RLOOConfig,
    "grpo": GRPOConfig,
}

# Where the pipeline's defaults differ from the commands', and why.
SECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": dict(lr=5e-5, batch_size=16),
    # 2 epochs (36 steps of 8 prompts): 1 epoch left the loss near log 2 (0.693 -> ~0.68) and PPO's gain over SFT
    # within 1 SE at seed 0; with 2, PPO beat SFT by 4.8-5.6 SE at seeds 0, 1, 2 (README; chosen on the eval signal)
    "reward": dict(lr=3e-5, epochs=2.0),
    "ppo": dict(
        steps=10,  # at most: max_kl stops it first in the demo
        ppo_epochs=1,
        kl_target=4.0,
        max_kl=3.0,  # gold reward peaked at KL 1-3 (nats/sequence) in our runs
        missing_eos_penalty=0.5,  # 1.0 made PPO's answers short, and short answers win less often
    ),
    "best_of_n": {},
    "expert_iteration": {},
    # not measured on SmolLM2 yet (the stage is off by default): ~18 steps of 8 prompts on the demo's rankings
    "dpo": dict(lr=5e-6),
    # not measured on SmolLM2 yet (the stages are off by default): PPO's sample budget (10 batches of 32
    # sequences, 8 prompts x K=4 here) and its missing-EOS rule
    "rloo": dict(steps=10, batch_size=8, samples_per_prompt=4, missing_eos_penalty=0.5),
    "grpo": dict(steps=10, batch_size=8, samples_per_prompt=4, missing_eos_penalty=0.5),
}

_RUN = ("out", "seed", "mixed_precision", "system_prompt", "chat_template")
_SAMPLER = ("model", "reward_model", "reward_fn", "prompts", "max_new_tokens", "temperature", "batch_size", "missing_eos_penalty")
# section -> option -> who sets it (the error message when a user tries)
WIRED: dict[str, dict[str, str]] = {
    "sft": {**dict.fromkeys(_RUN + ("resume",), "the pipeline"), "model": "the top-level model", "data": "the task's sft split"},
    "reward": {**dict.fromkeys(_RUN + ("resume",), "the pipeline"), "model": "the pipeline (this run's SFT model)",
               "data": "the preference stage", "reference": "the preference stage (the SFT samples among the rankings)"},
    "ppo": {**dict.fromkeys(_RUN + ("resume",), "the pipeline"), "seed": "the top-level seed, or ppo_seed for PPO alone", "model": "the pipeline (this run's SFT model)",
            "reward_model": "the pipeline (this run's reward model)", "reward_fn": "the pipeline (this run's reward model)",
            "prompts": "the task's unlabeled split", "max_new_tokens": "the top-level max_new_tokens",
            "temperature": "the top-level temperature"},
    "best_of_n": {**dict.fromkeys(_RUN, "the pipeline"), **dict.fromkeys(_SAMPLER, "the pipeline"),
                  "max_new_tokens": "the top-level max_new_tokens", "temperature": "the top-level eval_temperature",
                  "batch_size": "the top-level gen_batch_size", "missing_eos_penalty": "ppo.missing_eos_penalty (one rule for selection and optimisation)",
                  "prompts": "the top-level bon_prompts (the first eval prompts)"},
    "expert_iteration": {**dict.fromkeys(_RUN, "the pipeline"), **dict.fromkeys(_SAMPLER, "the pipeline"),
                         "max_new_tokens": "the top-level max_new_tokens", "temperature": "the top-level eval_temperature",
                         "batch_size": "the top-level gen_batch_size", "missing_eos_penalty": "ppo.missing_eos_penalty (one rule for selection and optimisation)",
                         "prompts": "the task's unlabeled split"},
    "dpo": {**dict.fromkeys(_RUN + ("resume",), "the pipeline"), "model": "the pipeline (this run's SFT model, also DPO's reference)",
            "data": "the preference stage"},
    **{m: {**dict.fromkeys(_RUN + ("resume",), "the pipeline"), "model": "the pipeline (this run's SFT model)",
           **dict.fromkeys(("reward_model", "reward_fn", "reward_task"), "the pipeline (this run's reward model)"),
           "prompts": "the task's unlabeled split", "max_new_tokens": "the top-level max_new_tokens",
           "temperature": "the top-level temperature"} for m in ("rloo", "grpo")},
}

# the flat names of earlier versions -> where they live now (old configs and run folders still load, with a warning)
LEGACY: dict[str, str] = {
    "sft_epochs": "sft.epochs", "sft_lr": "sft.lr", "sft_batch_size": "sft.batch_size",
    "rm_epochs": "reward.epochs", "rm_lr": "reward.lr", "rm_batch_size": "reward.batch_size",
    "rm_train_top_layers": "reward.train_top_layers",
    "ppo_steps": "ppo.steps", "ppo_batch_size": "ppo.batch_size", "ppo_minibatch_size": "ppo.minibatch_size",
    "ppo_epochs": "ppo.ppo_epochs", "ppo_lr": "ppo.lr", "ppo_lora_r": "ppo.lora_r", "ppo_kl_coef": "ppo.init_kl_coef",
    "ppo_adaptive_kl": "ppo.adaptive_kl", "ppo_kl_target": "ppo.kl_target", "ppo_max_kl": "ppo.max_kl",
    "ppo_target_kl": "ppo.target_kl", "ppo_vf_coef": "ppo.vf_coef", "ppo_missing_eos_penalty": "ppo.missing_eos_penalty",
    "ppo_whiten_rewards": "ppo.whiten_rewards", "ppo_log_gold": "log_gold",
    "bon_n": "best_of_n.n", "ei_rounds": "expert_iteration.rounds", "ei_prompts": "expert_iteration.prompts_per_round",
    "ei_n": "expert_iteration.n", "ei_epochs": "expert_iteration.epochs", "ei_lr": "expert_iteration.lr",
    "ei_warmup_steps": "expert_iteration.warmup_steps",
}


def section(name: str, help: str):
    """A section field: the method's config with the pipeline's defaults."""
    cls, defaults = SECTIONS[name], SECTION_DEFAULTS[name]
    return field(default_factory=lambda: cls(**defaults), metadata={"help": help, "section": True})


@dataclass
class PipelineConfig:
    out: str = opt("runs/demo", "Run directory; every stage writes its own folder in it.")
    model: str = opt("smollm2-135m", "Initial model (alias, .gguf or folder).")
    task: str = opt("movie_reviews", "Bundled task name (rlhfkit.tasks.available_tasks()), or the path of a task folder (see src/rlhfkit/tasks/movie_reviews/README.md).")
    seed: int = opt(0, "Seed of every stage.")
    ppo_seed: int | None = opt(None, "Seed of the PPO stage alone (not given: seed). `--stages ppo,eval --ppo-seed N` on a finished run keeps its data, reward model, the other methods and the eval prompts: the spread of PPO's result over its own seeds.")
    system_prompt: str | None = opt("You are a helpful assistant.", "System message for the chat template (short: prompts cost tokens).")
    bf16: bool | None = opt(None, "bf16 autocast for sampling, scoring and training. Not given (auto): bf16 only where the device computes it natively (CPUs with AVX-512 BF16 or AMX: ~2x faster; on other CPUs bf16 is many times slower than fp32), fp32 elsewhere.")
    max_new_tokens: int = opt(40, "Longest response, for every method.")
    temperature: float = opt(1.0, "Sampling temperature of the preference samples and of PPO's rollouts.")
    eval_temperature: float = opt(1.0, "Sampling temperature of every method's evaluation responses and of best-of-n's and expert iteration's candidates (1.0: each policy's own distribution, the one PPO optimises and KL is measured on).")
    gen_batch_size: int = opt(96, "Sequences per generation batch, per process (several processes each sample their part of the prompts; the samples do not depend on it).")
    stages: str = opt("sft,preferences,reward,ppo,best_of_n,expert_iteration,eval", "Stages to run, in order; a stage reads what the earlier ones wrote. dpo (after preferences) is off by default: name it to run it, e.g. sft,preferences,reward,dpo,ppo,best_of_n,expert_iteration,eval.")
    # data the stages take from the task
    sft_examples: int = opt(160, "Demonstrations used (the task ships 200).")
    pref_prompts: int = opt(160, "Preference prompts to sample K responses for.")
    pref_sources: str = opt("sft,initial", "Models the K responses are drawn from, split evenly (sft, initial).")
    pref_k: int = opt(4, "Responses per preference prompt, ranked by one simulated annotator.")
    flip_prob: float = opt(0.25, "Label noise of the training annotators (AlpacaFarm: 0.25).")
    log_gold: bool = opt(True, "Log the task judge's gold reward of every PPO batch (for the over-optimisation plot).")
    bon_prompts: int = opt(80, "Eval prompts best-of-n answers (the first ones; 0: all eval prompts): n samples each are its cost.")
    # evaluation
    eval_prompts: int = opt(300, "Eval prompts: the first N of the task's eval split (movie_reviews ships 300: all of them).")
    eval_samples: int = opt(1, "Answers per eval prompt for every sampled method, each judged against its own reference answer (standard errors are taken over prompts). 2 doubles the evaluation's sampling and scoring for SEs about 1/sqrt(2) as wide (the demo's eval stage took 290 s at 2 x 224 prompts against 194 s at 1 x 300, on the same models; PPO's lead over SFT measured 6.4 and 4.4 SE: README).")
    human: str | None = opt(None, "Human judgments (rlhfkit feedback export --kind eval) to add a human win-rate column.")
    # the methods, each with its own command's options (`rlhfkit <method> --help`)
    sft: SFTConfig = section("sft", "Supervised fine-tuning on the task's demonstrations (options of `rlhfkit sft`).")
    reward: RewardConfig = section("reward", "The reward model on the preference rankings (options of `rlhfkit reward`).")
    ppo: PPOConfig = section("ppo", "PPO against the reward model (options of `rlhfkit ppo`).")
    best_of_n: BestOfNConfig = section("best_of_n", "Best-of-n from the SFT model (options of `rlhfkit best-of-n`).")
    expert_iteration: ExpertIterationConfig = section("expert_iteration", "Expert iteration from the SFT model (options of `rlhfkit expert-iteration`).")
    dpo: DPOConfig = section("dpo", "DPO from the SFT model on the preference rankings (options of `rlhfkit dpo`); runs only when `stages` names dpo.")
    rloo: RLOOConfig = section("rloo", "RLOO from the SFT model against the reward model, as PPO (options of `rlhfkit rloo`); runs only when `stages` names rloo.")
    grpo: GRPOConfig = section("grpo", "GRPO from the SFT model against the reward model, as PPO (options of `rlhfkit grpo`); runs only when `stages` names grpo.")

    def __post_init__(self):
        # a section given as a mapping (``PipelineConfig(ppo={"steps": 5})``): checked, over the pipeline's defaults
        for sec, cls in SECTIONS.items():
            value = getattr(self, sec)
            if isinstance(value, Mapping):
                checked = _normalise({sec: value}, "PipelineConfig").get(sec, {})
                setattr(self, sec, cls(**{**SECTION_DEFAULTS[sec], **checked}))


def top_level_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(PipelineConfig) if not f.metadata.get("section")]


def _coerce(cls, key: str, value: Any, where: str) -> Any:
    """A value given as text (``--set ppo.lr=1e-5``) -> the field's type; YAML values are checked the same way."""
    hints = typing.get_type_hints(cls)
    t = hints[key]
    optional = type(None) in typing.get_args(t)
    base = next((a for a in typing.get_args(t) if a is not type(None)), t) if optional else t
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: {key} cannot be empty")
    if isinstance(value, str) and base is not str:
        text = value.strip()
        if optional and text.lower() in ("none", "null", "~"):
            return None
        try:
            if base is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return text.lower() in ("true", "1", "yes")
            return base(text)
        except ValueError:
            raise ValueError(f"{where}: {key} must be {base.__name__}, got {value!r}") from None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base in (int, float, bool, str) and not isinstance(value, base):
        raise ValueError(f"{where}: {key} must be {base.__name__}, got {value!r}")
    return value


def _normalise(raw: Mapping, where: str, allow_wired: bool = False) -> dict:
    """A layer of values (YAML, preset, flags) -> {top-level key: value, section: {key: value}}, checked."""
    top_names = {f.name for f in top_level_fields()}
    out: dict[str, Any] = {}
    renamed = [f"{k} -> {LEGACY[str(k).replace('-', '_')]}" for k in raw if str(k).replace("-", "_") in LEGACY]
    if renamed:
        warnings.warn(f"{where}: flat names of an earlier version, read as: {', '.join(renamed)}", FutureWarning, stacklevel=3)
    for k, v in raw.items():
        key = str(k).replace("-", "_")
        if key in LEGACY:
            new = LEGACY[key]
            if "." in new:
                sec, opt_name = new.split(".", 1)
                out.setdefault(sec, {})[opt_name] = v
            else:
                out[new] = v
            continue
        if key in SECTIONS:
            if v is None:
                continue
            if not isinstance(v, Mapping):
                raise ValueError(f"{where}: {k} must be a mapping of option: value (the options of `rlhfkit {key.replace('_', '-')} --help`)")
            out.setdefault(key, {}).update({str(a).replace("-", "_"): b for a, b in v.items()})
            continue
        if key not in top_names:
            raise ValueError(f"{where}: unknown option {k!r} for the pipeline (sections: {', '.join(SECTIONS)})")
        out[key] = v
    for sec in SECTIONS:
        if sec not in out:
            continue
        names = {f.name for f in dataclasses.fields(SECTIONS[sec])}
        checked = {}
        for key, v in out[sec].items():
            if key not in names:
                raise ValueError(f"{where}: unknown option {sec}.{key} (see `rlhfkit {sec.replace('_', '-')} --help`)")
            if key in WIRED[sec]:
                if allow_wired:
                    continue
                raise ValueError(f"{where}: {sec}.{key} is set by {WIRED[sec][key]}; it cannot be given here")
            checked[key] = _coerce(SECTIONS[sec], key, v, where)
        out[sec] = checked
    return out


def parse_sets(assignments: list[str] | tuple[str, ...]) -> dict:
    """``["ppo.lr=1e-5", "seed=3"]`` -> ``{"ppo": {"lr": "1e-5"}, "seed": "3"}`` (typed later, by field)."""
    out: dict[str, Any] = {}
    for a in assignments:
        if "=" not in a:
            raise ValueError(f"--set {a!r}: expected SECTION.OPTION=VALUE (or OPTION=VALUE)")
        key, value = a.split("=", 1)
        key = key.strip().replace("-", "_")
        if "." in key:
            sec, name = key.split(".", 1)
            out.setdefault(sec, {})[name] = value
        else:
            out[key] = value
    return out


def load_pipeline_config(path: str | Path | None = None, *layers: Mapping, allow_wired: bool = False) -> PipelineConfig:
    """defaults < YAML file at ``path`` < each of ``layers`` in turn. A None value is a value (a preset's
    ``system_prompt=None``: no system message); leave out what is not given.

    ``allow_wired``: drop wired section values instead of refusing them (reading a run's saved pipeline.yaml,
    which records them; the pipeline wires them again)."""
    values: dict[str, Any] = {}
    sources: list[tuple[str, Mapping]] = []
    if path:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of option: value")
        sources.append((str(path), raw))
    sources += [("command line", layer) for layer in layers]
    for where, raw in sources:
        layer = _normalise(raw, where, allow_wired)
        for k, v in layer.items():
            if k in SECTIONS:
                values.setdefault(k, {}).update(v)
            else:
                values[k] = v
    top = {f.name: f for f in top_level_fields()}
    kwargs = {k: _coerce(PipelineConfig, k, v, "config") for k, v in values.items() if k in top}
    for sec, cls in SECTIONS.items():
        kwargs[sec] = cls(**{**SECTION_DEFAULTS[sec], **values.get(sec, {})})
    return PipelineConfig(**kwargs)


def wire(cfg: PipelineConfig, run: Path, mixed_precision: str) -> PipelineConfig:
    """``cfg`` with every section's wired options set for the run directory ``run``: what each stage runs."""
    common = dict(seed=cfg.seed, mixed_precision=mixed_precision, system_prompt=cfg.system_prompt, chat_template="auto")
    sampler = dict(common, model=str(run / "sft"), reward_model=str(run / "reward"), reward_fn=None,
                   max_new_tokens=cfg.max_new_tokens, temperature=cfg.eval_temperature, batch_size=cfg.gen_batch_size,
                   missing_eos_penalty=cfg.ppo.missing_eos_penalty)
    return dataclasses.replace(
        cfg,
        sft=dataclasses.replace(cfg.sft, **common, model=cfg.model, data=str(run / "data" / "sft.jsonl"), out=str(run / "sft"), resume=None),
        reward=dataclasses.replace(cfg.reward, **common, model=str(run / "sft"), data=str(run / "prefs" / "rankings.jsonl"),
                                   reference=str(run / "data" / "reward_reference.jsonl"), out=str(run / "reward"), resume=None),
        ppo=dataclasses.replace(cfg.ppo, **{**common, "seed": cfg.seed if cfg.ppo_seed is None else cfg.ppo_seed}, model=str(run / "sft"), reward_model=str(run / "reward"), reward_fn=None,
                                prompts=str(run / "data" / "unlabeled.jsonl"), out=str(run / "ppo"), resume=None,
                                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature),
        best_of_n=dataclasses.replace(cfg.best_of_n, **sampler, prompts=str(run / "data" / "best_of_n_prompts.jsonl"), out=str(run / "best_of_n")),
        expert_iteration=dataclasses.replace(cfg.expert_iteration, **sampler, prompts=str(run / "data" / "unlabeled.jsonl"),
                                             out=str(run / "expert_iteration")),
        dpo=dataclasses.replace(cfg.dpo, **common, model=str(run / "sft"), data=str(run / "prefs" / "rankings.jsonl"),
                                out=str(run / "dpo"), resume=None),
        **{m: dataclasses.replace(getattr(cfg, m), **common, model=str(run / "sft"), reward_model=str(run / "reward"),
                                  reward_fn=None, reward_task=None, prompts=str(run / "data" / "unlabeled.jsonl"),
                                  out=str(run / m), resume=None, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
           for m in ("rloo", "grpo")},
    )


PRESETS = {
    # the demo: the embedded SmolLM2 on the bundled task (README: 13-26 min in bf16 on 2 Zen 5 / Zen 4 cores with native bf16; 49-57 min in fp32 on 2 AVX2 cores without, at earlier versions)
    "demo": {},
    # the same code path on the tiny random model in well under 2 minutes (make test runs it)
    "smoke": dict(model="tiny", bf16=False, max_new_tokens=8, gen_batch_size=32, sft_examples=16, pref_prompts=8,
                  eval_prompts=12, eval_samples=2, bon_prompts=8, system_prompt=None,  # 2: the pairing of answer j with reference answer j stays tested
                  sft=dict(lr=1e-3), reward=dict(epochs=1.0, lr=1e-3),
                  ppo=dict(steps=2, batch_size=8, minibatch_size=4, lr=1e-3),
                  best_of_n=dict(n=4), expert_iteration=dict(rounds=2, prompts_per_round=8, n=2, lr=1e-3),
                  dpo=dict(lr=1e-3, beta=0.5), rloo=dict(steps=2, batch_size=4, lr=1e-3), grpo=dict(steps=2, batch_size=4, lr=1e-3)),
}


def preset_overrides(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return {k: dict(v) if isinstance(v, dict) else v for k, v in PRESETS[name].items()}


def bundled_config_path() -> Path:
    return Path(__file__).parent / "demo.yaml"
