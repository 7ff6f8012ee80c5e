"""Reward-model ensembles: K reward models whose mean is the reward and whose disagreement says where it is
not to be trusted.

Each member is a whole reward model (``rlhfkit reward``) trained on its own bootstrap resample of the
training prompts, in its own data order, from the same starting model; all share one held-out split.
This is the ensemble of Coste et al. (2023, "Reward model ensembles help mitigate overoptimization"),
whose members also differ in pretraining seed, which one SFT model cannot give; bootstrapping the data is
what is left to make members disagree off the training distribution. K heads on one backbone would cost
one forward pass instead of K, but the members then share every feature and disagree far less (Coste et
al. find the pretraining seed the main source of diversity); on the small models rlhfkit trains, K whole
models are affordable.

The ensemble's score is ``ops.ensemble_reward``: the mean, optionally less lambda times the std over the
members (``--reward-std-penalty``, the conservative reward), for PPO, best-of-n and the other online
trainers through ``--reward-model DIR`` (``scoring.load_reward``). Its disagreement about a pair,
``ops.pair_disagreement``, orders candidate pairs for labelling (``rank_by_disagreement``: active
learning). ``pair_accuracy`` and ``policy_sample_accuracy`` report the held-out accuracy and the accuracy
on pairs of policy samples labelled by a gold reward, per member and of the ensemble.

An ensemble folder: ``ensemble.json`` (members, settings, held-out and policy-sample accuracies),
``eval.json`` (the ensemble's held-out accuracy in the single model's keys), ``member-k/`` (each a
complete reward model with its own eval.json, metrics and checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import torch

from rlhfkit import ops
from rlhfkit.config import RewardConfig
from rlhfkit.data import load_preferences, read_jsonl
from rlhfkit.scoring import ENSEMBLE_FILE, EnsembleScorer, RewardScorer, load_reward_fn, load_reward_model

# --------------------------------------------------------------------------- training


def train_reward_ensemble(cfg: RewardConfig, progress: bool = True) -> Path:
    """Train ``cfg.ensemble`` reward models into ``cfg.out``/member-k (see the module docstring), then
    measure each member and the ensemble on the held-out pairs (and on ``cfg.eval_samples`` when given).
    With ``cfg.resume`` (the ensemble folder) finished members are kept and an interrupted one resumes
    from its last checkpoint. Returns the ensemble folder, which ``--reward-model`` loads."""
    from rlhfkit.train.common import write_run_info
    from rlhfkit.train.reward import group_pairs, split_groups, train_reward

    if cfg.ensemble < 2:
        raise ValueError(f"ensemble: an ensemble needs at least 2 reward models, got {cfg.ensemble}")
    if bool(cfg.eval_samples) != bool(cfg.eval_gold):
        raise ValueError("eval_samples and eval_gold go together: policy samples and the gold reward that labels their pairs")
    out = Path(cfg.out)
    pairs = load_preferences(cfg.data, cfg.chat_template)  # bad input stops here, before K models train
    names = [f"member-{k}" for k in range(cfg.ensemble)]
    for k, name in enumerate(names):
        member_out = out / name
        if cfg.resume and (member_out / "eval.json").exists():
            continue  # finished before the interruption
        resume = str(member_out) if cfg.resume and any(member_out.glob("checkpoint-*")) else None
        train_reward(dataclasses.replace(cfg, out=str(member_out), resume=resume, eval_samples=None, eval_gold=None),
                     progress, member=k)
    if cfg.eval_data:
        heldout = load_preferences(cfg.eval_data, cfg.chat_template)
    else:
        heldout = [p for g in split_groups(group_pairs(pairs), cfg.eval_fraction, cfg.seed)[1] for p in g]
    scorer = EnsembleScorer([RewardScorer.load(out / n, batch_size=32, device="cpu", center=True) for n in names], 0.0, names)
    spec = {"members": names, "mode": "models", "k": cfg.ensemble, "bootstrap": cfg.bootstrap, "seed": cfg.seed,
            "data": cfg.data, "heldout": pair_accuracy(scorer, heldout) if heldout else {}}
    if cfg.eval_samples:
        spec["policy_samples"] = policy_sample_accuracy(scorer, cfg.eval_samples, cfg.eval_gold)
    write_run_info(out, cfg, model=cfg.model, data=cfg.data, ensemble=cfg.ensemble)
    h = spec["heldout"]
    final = {"eval": {"eval_accuracy": h["accuracy"], "eval_pairs": h["pairs"], "eval_prompts": len({p.prompt for p in heldout}),
                      "member_accuracy": h["members"]} if h else {}}
    if "policy_samples" in spec:
        final["policy_samples"] = spec["policy_samples"]
    (out / "eval.json").write_text(json.dumps(final, indent=2) + "\n")
    (out / ENSEMBLE_FILE).write_text(json.dumps(spec, indent=2) + "\n")  # last: its presence marks a finished ensemble
    return out


# --------------------------------------------------------------------------- accuracy


def _score_matrix(scorer, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """(N, K) members' scores (K = 1 for a single reward model), each distinct text scored once."""
    index: dict[tuple[str, str], int] = {}
    for key in zip(prompts, responses):
        index.setdefault(key, len(index))
    texts = list(index)
    ps, rs = [t[0] for t in texts], [t[1] for t in texts]
    m = scorer.member_scores(ps, rs) if isinstance(scorer, EnsembleScorer) else scorer(ps, rs)[:, None]
    return m[torch.tensor([index[k] for k in zip(prompts, responses)], dtype=torch.long)]


def pair_accuracy(scorer, pairs: Sequence) -> dict:
    """The share of ``pairs`` (objects with prompt, chosen, rejected) whose chosen response scores above
    the rejected one (a tie counts as wrong, as in training's held-out accuracy).

    Returns {"pairs", "accuracy"} for a single reward model; for an ensemble also "members" (each
    member's accuracy), "member_mean" (their mean: what one model of the ensemble gets on average), and
    "accuracy" is the ensemble's score's (the mean, less its ``std_penalty`` times the std)."""
    if not pairs:
        raise ValueError("pair_accuracy: no pairs to score")
    n = len(pairs)
    prompts = [p.prompt for p in pairs] * 2
    scores = _score_matrix(scorer, prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    chosen, rejected = scores[:n], scores[n:]
    if not isinstance(scorer, EnsembleScorer):
        return {"pairs": n, "accuracy": (chosen[:, 0] > rejected[:, 0]).float().mean().item()}
    members = (chosen > rejected).float().mean(0).tolist()
    lam = scorer.std_penalty
    acc = (ops.ensemble_reward(chosen, lam) > ops.ensemble_reward(rejected, lam)).float().mean().item()
    return {"pairs": n, "accuracy": acc, "std_penalty": lam, "members": members, "member_mean": sum(members) / len(members),
            "disagreement": ops.pair_disagreement(chosen, rejected).mean().item()}


def _sample_rows(path):
    """(line, prompt, responses, gold or None) of each line of a samples JSONL: {prompt, responses: [...]}
    (or "candidates", as `rlhfkit overopt` writes them) or {prompt, response}; "gold", when there, is a
    number per response (a list beside "responses", a number beside "response")."""
    for n, r in read_jsonl(path):
        prompt = r.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError(f'{path}:{n}: need a string "prompt"')
        key = "responses" if "responses" in r else "candidates" if "candidates" in r else None
        if key:
            responses = r[key]
            if not isinstance(responses, list) or not all(isinstance(x, str) for x in responses):
                raise ValueError(f'{path}:{n}: "{key}" must be a list of strings')
            gold = r.get("gold")
        elif isinstance(r.get("response"), str):
            responses, gold = [r["response"]], ([r["gold"]] if "gold" in r else None)
        else:
            raise ValueError(f'{path}:{n}: need "responses" (a list of strings) or "response" (a string)')
        if gold is not None and (not isinstance(gold, list) or len(gold) != len(responses)
                                 or not all(isinstance(g, (int, float)) and not isinstance(g, bool) for g in gold)):
            raise ValueError(f'{path}:{n}: "gold" must be a number per response')
        yield n, prompt, responses, gold


def read_samples(path) -> list[tuple[str, list[str]]]:
    """Policy samples: JSONL of {prompt, responses: [...]} (or "candidates") lines, or {prompt, response}
    lines (grouped by prompt, in order of first appearance) -> [(prompt, responses)]."""
    groups: dict[str, list[str]] = defaultdict(list)
    for _, prompt, responses, _ in _sample_rows(path):
        groups[prompt] += responses
    return list(groups.items())


def samples_gold(path) -> Callable:
    """The gold reward the samples carry (each line's "gold": the pipeline's samples/*.jsonl and
    `rlhfkit overopt`'s candidates.jsonl have the task judge's noise-free score there) as a
    ``(prompts, responses) -> scores`` lookup; for tasks whose gold needs a model (the movie-review
    panel) it saves scoring the samples again."""
    table: dict[tuple[str, str], float] = {}
    for n, prompt, responses, gold in _sample_rows(path):
        if gold is None:
            raise ValueError(f'{path}:{n}: --gold samples needs a "gold" value for every response')
        for x, g in zip(responses, gold):
            table.setdefault((prompt, x), float(g))

    def gold_fn(prompts, responses):
        try:
            return [table[(p, x)] for p, x in zip(prompts, responses)]
        except KeyError:
            raise ValueError(f"--gold samples: a response has no gold in {path}") from None

    return gold_fn


@dataclasses.dataclass(frozen=True)
class GoldPair:
    prompt: str
    chosen: str
    rejected: str


def gold_pairs(samples: Sequence[tuple[str, Sequence[str]]], gold: Callable) -> list[GoldPair]:
    """Every pair of a prompt's distinct samples, labelled by ``gold`` ((prompts, responses) -> scores,
    noise-free): chosen = the one gold scores higher; pairs gold scores equal are left out (no label)."""
    from rlhfkit.scoring import as_scores

    flat = [(p, r) for p, rs in samples for r in dict.fromkeys(rs)]
    g = as_scores(gold([p for p, _ in flat], [r for _, r in flat]), len(flat)).tolist()
    by_prompt: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (p, r), s in zip(flat, g):
        by_prompt[p].append((r, s))
    out = []
    for p, items in by_prompt.items():
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                (a, sa), (b, sb) = items[i], items[j]
                if sa != sb:
                    out.append(GoldPair(p, a, b) if sa > sb else GoldPair(p, b, a))
    return out


def load_gold(spec: str | Callable) -> Callable:
    """The gold reward: a callable, 'TASK:METRIC' (a task's reward function) or 'module:function'."""
    if callable(spec):
        return spec
    from rlhfkit.scoring import load_task_reward
    from rlhfkit.tasks import available_tasks

    if spec.rpartition(":")[0] in available_tasks():
        return load_task_reward(spec)
    return load_reward_fn(spec)


def policy_sample_accuracy(scorer, samples, gold) -> dict:
    """Accuracy on the distribution the policy optimises against: pairs of policy samples (a JSONL path or
    [(prompt, responses)]) labelled by the noise-free ``gold`` (spec or callable); ``pair_accuracy``'s
    dict, with "samples" and "prompts" added."""
    if gold == "samples":
        if not isinstance(samples, (str, Path)):
            raise ValueError("--gold samples: the samples must be a JSONL file with a gold value per response")
        gold = samples_gold(samples)
    if isinstance(samples, (str, Path)):
        samples = read_samples(samples)
    pairs = gold_pairs(samples, load_gold(gold))
    if not pairs:
        raise ValueError("policy samples: no pair of samples of one prompt differs in gold reward: nothing to score")
    return {**pair_accuracy(scorer, pairs), "samples": sum(len(r) for _, r in samples), "prompts": len(samples)}


# --------------------------------------------------------------------------- active learning


def rank_by_disagreement(scorer: EnsembleScorer, prompts: Sequence[str],
                         candidates: Sequence[Sequence[str]]) -> tuple[list[int], list[float]]:
    """Order labelling tasks by how much the ensemble disagrees about them, most uncertain first.

    prompts[i] with candidates[i] (>= 2 responses: a pair, or the responses of a ranking) is task i. Its
    disagreement is the mean over its response pairs of ``ops.pair_disagreement`` (the std over members
    of the score difference): the pairs whose label the reward model most needs. Returns (order,
    disagreement): task indices most uncertain first (ties keep their order), and each task's value."""
    if not isinstance(scorer, EnsembleScorer) or len(scorer.members) < 2:
        raise ValueError("ordering by disagreement needs an ensemble of reward models (`rlhfkit reward --ensemble K`, K >= 2)")
    if len(prompts) != len(candidates):
        raise ValueError(f"rank_by_disagreement: {len(prompts)} prompts but {len(candidates)} candidate lists")
    for i, c in enumerate(candidates):
        if len(c) < 2:
            raise ValueError(f"rank_by_disagreement: task {i} has {len(c)} responses; a pair or ranking needs at least 2")
    flat_p = [p for p, c in zip(prompts, candidates) for _ in c]
    scores = _score_matrix(scorer, flat_p, [r for c in candidates for r in c])
    values, start = [], 0
    for c in candidates:
        s = scores[start : start + len(c)]
        i, j = torch.triu_indices(len(c), len(c), 1)
        values.append(ops.pair_disagreement(s[i], s[j]).mean().item())
        start += len(c)
    order = sorted(range(len(values)), key=lambda t: -values[t])  # sorted is stable: ties keep their order
    return order, values


# --------------------------------------------------------------------------- rlhfkit reward-eval


def reward_eval(reward_model: str, data: str | None = None, samples: str | None = None, gold: str | None = None,
                std_penalty: float = 0.0, chat_template: str = "auto") -> dict:
    """Accuracies of a reward model or ensemble folder: on preference pairs (``data``) and on pairs of
    policy samples labelled by ``gold`` (``samples``); per member and of the ensemble."""
    if not data and not samples:
        raise ValueError("give --data (preference pairs) and/or --samples with --gold (policy samples)")
    if bool(samples) != bool(gold):
        raise ValueError("--samples and --gold go together: policy samples and the gold reward that labels their pairs")
    scorer = load_reward_model(reward_model, center=True, device="cpu", std_penalty=std_penalty)
    out = {"reward_model": reward_model}
    if data:
        out["pairs"] = {"data": data, **pair_accuracy(scorer, load_preferences(data, chat_template))}
    if samples:
        out["policy_samples"] = {"data": samples, "gold": gold, **policy_sample_accuracy(scorer, samples, gold)}
    return out


def describe(name: str, r: dict) -> str:
    """One line of ``pair_accuracy``'s figures."""
    line = f"{name}: accuracy {r['accuracy']:.3f} on {r['pairs']} pairs"
    if "members" in r:
        line += (f" (members {', '.join(f'{a:.3f}' for a in r['members'])}; their mean {r['member_mean']:.3f}; "
                 f"mean disagreement {r['disagreement']:.3f})")
    return line
