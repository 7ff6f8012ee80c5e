"""Rewards as the policy trainers see them: ``(prompts, responses) -> (B,) scores``.

Every reward follows this one protocol, whatever stands behind it: a trained reward model
(``RewardScorer``), a python function named on the command line (``load_reward_fn``), or the simulated
panel's gold reward (the pipeline's ``Context.gold``). ``prompts`` are the prompts as sampled (plain text
or a conversation), ``responses`` the decoded responses; a scorer returns one float per pair, higher is
better. ``as_scores`` checks and normalises whatever a reward returns (list, array, tensor).
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from rlhfkit.models import RewardModel, load_tokenizer
from rlhfkit.forward import autocast_context, encode_prompts, encode_responses

RewardFn = Callable[[list[str], list[str]], torch.Tensor]


def load_reward_fn(spec: str) -> RewardFn:
    """'package.module:function' -> the callable (prompts, responses) -> scores."""
    if ":" not in spec:
        raise ValueError(f"--reward-fn {spec!r}: expected 'module:function'")
    mod, name = spec.split(":", 1)
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise ValueError(f"--reward-fn {spec!r}: cannot import {mod!r} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--reward-fn {spec!r}: {name} is not a callable in {mod}")
    return fn


def as_scores(x, n: int) -> torch.Tensor:
    """A reward's output (list, array or tensor) -> a flat float32 CPU tensor of ``n`` scores."""
    t = torch.as_tensor(x, dtype=torch.float32).flatten().cpu()
    if t.numel() != n:
        raise ValueError(f"the reward returned {t.numel()} scores for {n} responses")
    return t


def encode_pairs_input(tokenizer, prompts: list[str], responses: list[str], cfg, device="cpu"):
    """(prompt, response) texts -> (ids, mask, response_start) of chat prompt + response + EOS; prompts
    left-padded, responses right-padded from column ``response_start``, so the attention mask marks
    exactly the real tokens. ``cfg`` gives system_prompt, max_prompt_tokens, max_completion_tokens and
    chat_template (``auto`` when absent).

    Every response gets an EOS, truncated ones included: the reward model scores a response as a
    finished answer; whoever scores policy samples to choose or optimise subtracts a missing-EOS penalty
    for those that never emitted one (PPO's ``missing_eos_penalty``, the pipeline's best-of-n)."""
    template = getattr(cfg, "chat_template", "auto") or "auto"
    p_ids, p_mask = encode_prompts(tokenizer, prompts, cfg.system_prompt, device, chat_template=template)
    p_ids, p_mask = p_ids[:, -cfg.max_prompt_tokens :], p_mask[:, -cfg.max_prompt_tokens :]
    r_ids, r_mask = encode_responses(tokenizer, responses, True, cfg.max_completion_tokens, device)
    return torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1), p_ids.shape[1]


class RewardScorer:
    """A reward model as the policy trainers see it: ``(prompts, responses) -> (B,) scores``.

    The score is what transformers' ``AutoModelForSequenceClassification`` computes on the saved folder
    for the chat-formatted prompt + response + EOS (the reference responses' scores have std 1). With
    ``center=True`` the reference mean is subtracted, so reference responses score mean 0: what PPO
    optimises (a constant shift leaves the optimal policy unchanged, but the zero-initialised value head
    would first have to learn it). Texts are tokenised with the settings saved with the model
    (``RewardModel.scoring``) unless ``cfg`` is given (the trainer, before they are saved)."""

    def __init__(self, rm: RewardModel, tokenizer, cfg=None, batch_size: int = 32, bf16: bool = False, center: bool = False):
        from types import SimpleNamespace

        self.rm, self.tokenizer, self.batch_size, self.bf16, self.center = rm, tokenizer, batch_size, bf16, center
        self.cfg = cfg or SimpleNamespace(**rm.scoring)
        rm.eval()

    @classmethod
    def load(cls, path, batch_size: int = 32, bf16: bool = False, device=None, center: bool = False) -> "RewardScorer":
        """The reward model saved at ``path``, frozen, on ``device`` (the default device when None)."""
        from rlhfkit.models import cast_linears_for_autocast, default_device

        rm = RewardModel.from_pretrained(path)
        rm.requires_grad_(False)
        rm.to(device if device is not None else default_device())
        if bf16:  # scoring only, always under autocast: cast the linear weights once
            cast_linears_for_autocast(rm)
        return cls(rm, load_tokenizer(path), None, batch_size, bf16, center)

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        device = next(self.rm.parameters()).device
        out = []
        for i in range(0, len(prompts), self.batch_size):
            ids, mask, start = encode_pairs_input(self.tokenizer, prompts[i : i + self.batch_size], responses[i : i + self.batch_size], self.cfg, device)
            with autocast_context(device, self.bf16):
                out.append(self.rm(ids, mask, response_start=start).float())
        scores = torch.cat(out) if out else torch.zeros(0)
        return scores - self.rm.reference_mean if self.center else scores


ENSEMBLE_FILE = "ensemble.json"


def is_ensemble(path) -> bool:
    """Whether ``path`` is a reward-model ensemble folder (``rlhfkit reward --ensemble K``)."""
    from pathlib import Path

    return (Path(path) / ENSEMBLE_FILE).is_file()


class EnsembleScorer:
    """K reward models as one reward: ``(prompts, responses) -> (B,)`` the members' mean less
    ``std_penalty`` times their std (``ops.ensemble_reward``; Coste et al. 2023's conservative reward).

    Every member is normalised alike (its reference responses score std 1; centred, mean 0), so their
    scores, and their spread, are on one scale. ``member_scores`` gives the (B, K) matrix behind the
    score (disagreement, per-member accuracy); ``rm`` holds the members as one module, so the trainers
    that move a reward model to the sampling device move all of them."""

    def __init__(self, members: list[RewardScorer], std_penalty: float = 0.0, names: list[str] | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if std_penalty < 0:
            raise ValueError(f"reward_std_penalty must be >= 0, got {std_penalty}")
        self.members, self.std_penalty = members, float(std_penalty)
        self.names = names or [f"member-{k}" for k in range(len(members))]
        self.rm = torch.nn.ModuleList([m.rm for m in members])

    @classmethod
    def load(cls, path, batch_size: int = 32, bf16: bool = False, device=None, center: bool = False,
             std_penalty: float = 0.0) -> "EnsembleScorer":
        """The ensemble saved at ``path``: ensemble.json lists the member folders."""
        import json
        from pathlib import Path

        spec_file = Path(path) / ENSEMBLE_FILE
        try:
            names = json.loads(spec_file.read_text())["members"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{spec_file}: expected a JSON object with a \"members\" list of folders ({e})") from None
        if not isinstance(names, list) or not names:
            raise ValueError(f'{spec_file}: "members" must be a non-empty list of folders')
        members = [RewardScorer.load(Path(path) / n, batch_size, bf16, device, center) for n in names]
        return cls(members, std_penalty, names)

    @property
    def batch_size(self) -> int:  # the members score alike
        return self.members[0].batch_size

    @torch.no_grad()
    def member_scores(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """(B, K): each member's score of each response."""
        return torch.stack([m(prompts, responses) for m in self.members], 1)

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        from rlhfkit import ops

        return ops.ensemble_reward(self.member_scores(prompts, responses), self.std_penalty)


def load_reward_model(path, batch_size: int = 32, bf16: bool = False, device=None, center: bool = False,
                      std_penalty: float = 0.0) -> "RewardScorer | EnsembleScorer":
    """A reward-model folder as a scorer: an ensemble folder as an ``EnsembleScorer`` (``std_penalty``: its
    lambda), a single reward model as a ``RewardScorer`` (``std_penalty`` must then be 0)."""
    if is_ensemble(path):
        return EnsembleScorer.load(path, batch_size, bf16, device, center, std_penalty)
    if std_penalty:
        raise ValueError(f"reward_std_penalty {std_penalty} needs an ensemble of reward models, and {path} is a single "
                         f"one (no {ENSEMBLE_FILE}): train one with `rlhfkit reward --ensemble K`")
    return RewardScorer.load(path, batch_size, bf16, device, center)


def score_on_processes(processes, reward_fn: RewardFn, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """``reward_fn``'s (B,) scores of the pairs, on every one of ``processes`` (``rlhfkit.processes.Processes``;
    every process calls this with the same pairs). A reward model (``RewardScorer``, ``EnsembleScorer``: a
    forward pass per pair) is split: each process scores a part, cut at its batch size so that every batch
    is the one a single process runs (the same scores to the last bit). Any other reward (a python
    function, which may draw random numbers or keep state) runs whole on the main process, as with one."""
    n = len(prompts)
    if isinstance(reward_fn, (RewardScorer, EnsembleScorer)):
        pairs = list(zip(prompts, responses))
        values = processes.map_parts(lambda part: as_scores(reward_fn([p for p, _ in part], [r for _, r in part]), len(part)).tolist(),
                                     pairs, align=reward_fn.batch_size)
    else:
        values = processes.from_main(lambda: as_scores(reward_fn(prompts, responses), n).tolist())
    return torch.tensor(values, dtype=torch.float32)


def load_task_reward(spec: str) -> RewardFn:
    """'TASK:METRIC' -> ``rlhfkit.tasks.load_task(TASK).reward_functions[METRIC]``."""
    from rlhfkit.tasks import load_task

    task, sep, metric = spec.rpartition(":")
    if not sep or not task or not metric:
        raise ValueError(f"--reward-task {spec!r}: expected 'TASK:METRIC'")
    fns = load_task(task).reward_functions
    if metric not in fns:
        raise ValueError(f"--reward-task {spec!r}: task {task!r} has no reward function {metric!r}; it has: {sorted(fns)}")
    return fns[metric]


def load_reward(cfg, device: torch.device | str | None = "cpu") -> RewardFn:
    """The reward a method's config names: ``cfg.reward_fn`` ('module:function'), ``cfg.reward_task``
    ('TASK:METRIC', where the config has one) or ``cfg.reward_model`` (a folder from ``rlhfkit reward``,
    scored with its saved system prompt and token limits, centred so that its reference responses score
    mean 0, in bf16 when ``cfg.mixed_precision`` is bf16; an ensemble folder scores with its members' mean
    less ``cfg.reward_std_penalty`` times their std)."""
    if getattr(cfg, "reward_task", None):
        return load_task_reward(cfg.reward_task)
    if cfg.reward_fn:
        return load_reward_fn(cfg.reward_fn)
    if cfg.reward_model:
        return load_reward_model(cfg.reward_model, batch_size=cfg.reward_batch_size, center=True,
                                 bf16=cfg.mixed_precision == "bf16", device=device,
                                 std_penalty=getattr(cfg, "reward_std_penalty", 0.0) or 0.0)
    raise ValueError("a reward is needed: --reward-model DIR or --reward-fn module:function")
