"""Reward model: Bradley-Terry on preference pairs.

p(y_w > y_l | x) = sigmoid(r(x, y_w) - r(x, y_l)). A K-way ranking gives all K(K-1)/2 pairs; the pairs of
one prompt stay in one batch and each response is scored once per step (InstructGPT: scoring K responses
for K(K-1)/2 comparisons is the cheap way, and it avoids overfitting from seeing one response in many
separate batches).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

from rlhfkit import ops
from rlhfkit.atomic import atomic_files, atomic_json
from rlhfkit.config import RewardConfig
from rlhfkit.data import Preference, load_preferences, read_jsonl
from rlhfkit.models import RewardModel, load_tokenizer
from rlhfkit.scoring import RewardScorer, encode_pairs_input
from rlhfkit.train.common import Timer, make_optimizer
from rlhfkit.train.run import TrainingRun, total_steps


def group_pairs(pairs: list[Preference]) -> list[list[Preference]]:
    """The pairs of each prompt, in order of first appearance: the unit of the held-out split, of
    batching and of the loss's weighting. Grouped by prompt text, not by JSONL line: a prompt with
    several pair lines (or a ranking and pairs) would otherwise land on both sides of the split."""
    groups: dict[str, list[Preference]] = defaultdict(list)
    for p in pairs:
        groups[p.prompt].append(p)
    return list(groups.values())


def split_groups(groups: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out): a seeded random ``eval_fraction`` of the prompt groups is held out."""
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = int(round(eval_fraction * len(groups))) if len(groups) > 1 else 0
    return [groups[i] for i in order[n_eval:]], [groups[i] for i in order[:n_eval]]


def batch_loss(rm: RewardModel, tokenizer, groups: list[list[Preference]], cfg, use_margin: bool, device):
    """Score every distinct (prompt, response) of the groups once; Bradley-Terry over their pairs, each
    prompt weighing the same (InstructGPT). Returns (loss, pairwise accuracy, mean chosen-rejected gap)."""
    key_index: dict[tuple[str, str], int] = {}
    texts: list[tuple[str, str]] = []
    ci, ri, margins, owner = [], [], [], []
    for gi, g in enumerate(groups):
        for p in g:
            owner.append(gi)
            for resp, dest in ((p.chosen, ci), (p.rejected, ri)):
                k = (p.prompt, resp)
                if k not in key_index:
                    key_index[k] = len(texts)
                    texts.append(k)
                dest.append(key_index[k])
            margins.append(p.margin if (use_margin and p.margin is not None) else 0.0)
    ids, mask, start = encode_pairs_input(tokenizer, [t[0] for t in texts], [t[1] for t in texts], cfg, device)
    scores = rm(ids, mask, response_start=start)  # each prompt runs once for all its responses
    chosen, rejected = scores[torch.tensor(ci)], scores[torch.tensor(ri)]
    margin = torch.tensor(margins, dtype=scores.dtype, device=scores.device) if use_margin else None
    weight = ops.prompt_weights(torch.tensor(owner)).to(scores.device)
    loss = ops.bradley_terry_loss(chosen, rejected, margin, weight=weight)
    gap = (chosen - rejected).detach()
    return loss, (gap > 0).float().mean().item(), gap.mean().item()


@torch.no_grad()
def evaluate(rm, tokenizer, groups, cfg, device, batch_groups: int = 16) -> dict:
    """Held-out pairwise accuracy (per pair; ties count as wrong) and loss (per prompt, as trained)."""
    rm.eval()
    n, correct, loss_sum = 0, 0.0, 0.0
    for i in range(0, len(groups), batch_groups):
        chunk = groups[i : i + batch_groups]
        k = sum(len(g) for g in chunk)
        loss, acc, _ = batch_loss(rm, tokenizer, chunk, cfg, False, device)
        n, correct, loss_sum = n + k, correct + acc * k, loss_sum + loss.item() * len(chunk)
    rm.train()
    return {"eval_accuracy": correct / max(n, 1), "eval_loss": loss_sum / max(len(groups), 1), "eval_pairs": n,
            "eval_prompts": len(groups)}


def reference_texts(cfg: RewardConfig, pairs: list[Preference]) -> list[tuple[str, str]]:
    if cfg.reference:
        rows = read_jsonl(cfg.reference)
        out = []
        for n, r in rows:
            if not isinstance(r.get("prompt"), str) or not isinstance(r.get("response"), str):
                raise ValueError(f'{cfg.reference}:{n}: need string "prompt" and "response"')
            out.append((r["prompt"], r["response"]))
        return out
    seen = dict.fromkeys((p.prompt, r) for p in pairs for r in (p.chosen, p.rejected))
    return list(seen)


def freeze_lower_layers(rm: RewardModel, train_top_layers: int) -> None:
    """Train only the top N blocks, the final norm and the head: backward stops N blocks deep."""
    if not train_top_layers:
        return
    backbone, head = rm._parts()
    rm.requires_grad_(False)
    layers = backbone.layers
    for layer in list(layers)[-train_top_layers:]:
        layer.requires_grad_(True)
    if hasattr(backbone, "norm"):
        backbone.norm.requires_grad_(True)
    head.requires_grad_(True)


def bootstrap_groups(groups: list, seed: int) -> list:
    """A bootstrap resample of the prompt groups: as many, drawn with replacement (a prompt drawn twice is
    two batch elements and weighs twice; about 37% are left out), the unit of the split and the loss alike."""
    g = torch.Generator().manual_seed(seed)
    return [groups[i] for i in torch.randint(len(groups), (len(groups),), generator=g).tolist()]


def member_seed(seed: int, member: int) -> int:
    """Seed of ensemble member ``member``'s bootstrap and data order (the held-out split keeps ``seed``)."""
    return seed + 104729 * (member + 1)


def train_reward(cfg: RewardConfig, progress: bool = True, member: int | None = None) -> Path:
    """Train a reward model (``RewardModel``: ``cfg.model`` with a scalar head) by Bradley-Terry on the
    preferences in ``cfg.data`` (pairs or K-way rankings; see ``load_preferences``), then normalise it so
    that the reference responses (``cfg.reference``, else every response of the data) score std 1.
    Writes the model, eval.json (held-out accuracy and loss, the normalisation), config.yaml,
    metrics.jsonl and ``checkpoint-N`` folders into ``cfg.out``.

    Args:
        cfg: model, data, out, the held-out split (eval_data or eval_fraction) and the optimisation (lr,
            head_lr_scale, batch_size in prompts, epochs or max_steps, train_top_layers, use_margin, ...);
            ``cfg.resume`` continues a run from its last checkpoint, reproducing the uninterrupted run.
        progress: show a progress bar.

    With ``cfg.ensemble`` K > 1, trains K such models into ``cfg.out`` (``train_reward_ensemble``);
    ``member`` is then each one's index: it seeds the member's bootstrap resample (``cfg.bootstrap``) and
    data order, while the held-out split stays the same for all.

    Returns the run directory, which ``RewardScorer.load`` (and ``--reward-model``) loads.

    Example::

        out = train_reward(RewardConfig(model="runs/sft", data="prefs.jsonl", out="runs/rm", epochs=2))
        scores = RewardScorer.load(out, center=True)(["Review a film."], ["A warm, funny film."])
    """
    if cfg.ensemble < 1:
        raise ValueError(f"ensemble: the number of reward models must be at least 1, got {cfg.ensemble}")
    if cfg.ensemble > 1 and member is None:
        from rlhfkit.train.reward_ensemble import train_reward_ensemble

        return train_reward_ensemble(cfg, progress)
    if bool(cfg.eval_samples) != bool(cfg.eval_gold):
        raise ValueError("eval_samples and eval_gold go together: policy samples and the gold reward that labels their pairs")
    run = TrainingRun(cfg, "reward model" if member is None else f"reward model {member + 1}/{cfg.ensemble}", cfg.grad_accum, progress)
    accelerator = run.accelerator
    pairs = load_preferences(cfg.data, cfg.chat_template)  # malformed lines stop here, before any model is loaded
    groups = group_pairs(pairs)
    if cfg.eval_data:
        train_groups, eval_groups = groups, group_pairs(load_preferences(cfg.eval_data, cfg.chat_template))
    else:
        train_groups, eval_groups = split_groups(groups, cfg.eval_fraction, cfg.seed)
    order_seed = cfg.seed if member is None else member_seed(cfg.seed, member)
    if member is not None and cfg.bootstrap:
        train_groups = bootstrap_groups(train_groups, order_seed)
    tokenizer = load_tokenizer(cfg.model)
    rm = RewardModel.from_pretrained(run.resume_from / "model" if run.resume_from else cfg.model)
    rm.set_scoring(cfg.system_prompt, cfg.max_prompt_tokens, cfg.max_completion_tokens, getattr(cfg, "chat_template", "auto"))
    freeze_lower_layers(rm, cfg.train_top_layers)
    rm.train()
    total = total_steps(cfg, len(train_groups), run.processes)
    optimizer, scheduler = make_optimizer(rm.parameters(), cfg.lr, cfg.weight_decay, cfg.warmup_steps, head=rm._parts()[1],
                                         head_lr=cfg.lr * cfg.head_lr_scale)
    rm, optimizer, scheduler = accelerator.prepare(rm, optimizer, scheduler)
    inner = accelerator.unwrap_model(rm)
    batches = run.batches(len(train_groups), cfg.batch_size, order_seed)
    step = run.track(optimizer, scheduler, batches, save=lambda ckpt: inner.save_pretrained(ckpt / "model", tokenizer))
    with run.loop(total, model=cfg.model, data=cfg.data, pairs=len(pairs), groups=len(groups),
                  train_groups=len(train_groups), eval_groups=len(eval_groups),
                  **({} if member is None else {"member": member, "bootstrap": cfg.bootstrap, "order_seed": order_seed})):
        while step < total:
            timer = Timer()
            losses, accs, bad = [], [], []
            for _ in range(cfg.grad_accum):
                idx, real = run.share(batches.next())
                chunk = [train_groups[i] for i in idx]
                with accelerator.accumulate(rm), timer("update"):
                    loss, acc, gap = batch_loss(rm, tokenizer, chunk, cfg, cfg.use_margin, accelerator.device)
                    # each prompt of the global batch weighs the same, however they fall on processes
                    n = len(chunk) if real else 0
                    bad = bad or run.nonfinite(loss=loss)
                    if not bad:  # a non-finite loss in any micro-batch: no update for the whole step
                        accelerator.backward(loss * run.share_weight(n))
                        optimizer.step()
                        scheduler.step()
                    optimizer.zero_grad()
                # accuracy and gap are per pair: weighted by pairs
                losses.append(run.weighted_mean({"loss": loss.item()}, n)["loss"])
                m = run.weighted_mean({"accuracy": acc, "gap": gap}, sum(len(g) for g in chunk) if real else 0)
                accs.append(m["accuracy"])
                gap = m["gap"]
            step += 1
            run.record_update(f"step {step}", bad)
            metrics = {"loss": sum(losses) / len(losses), "accuracy": sum(accs) / len(accs), "gap": gap, "lr": scheduler.get_last_lr()[0]}
            # held-out eval on a schedule of the step number alone (not "and at the last step"), so that a run
            # stopped at step k and resumed logs the same metrics.jsonl as one that never stopped; the final
            # model's held-out eval goes to eval.json
            if eval_groups and cfg.log_every and step % max(cfg.log_every * 10, 10) == 0:
                with timer("eval"):
                    metrics.update(evaluate(inner, tokenizer, eval_groups, cfg, accelerator.device))
            run.log(step, metrics, timer.t)
            info = f"loss {metrics['loss']:.3f} acc {metrics['accuracy']:.2f}"
            if "eval_accuracy" in metrics:
                info += f" held-out acc {metrics['eval_accuracy']:.3f}"
            run.advance(info)
            run.maybe_checkpoint(step)
    # normalise: reference responses score std 1 (so a KL coefficient means the same across RMs), folded
    # into the head; their mean is recorded as reference_mean (the head has no bias to hold it)
    scorer = RewardScorer(inner, tokenizer, cfg, batch_size=32)
    ref = reference_texts(cfg, pairs)
    raw = scorer([p for p, _ in ref], [r for _, r in ref])
    inner.set_normalization(raw.mean().item(), raw.std().item() if len(raw) > 1 else 1.0)
    final = {"eval": evaluate(inner, tokenizer, eval_groups, cfg, accelerator.device) if eval_groups else {},
             "normalization": {"raw_mean": raw.mean().item(), "raw_std": raw.std().item() if len(raw) > 1 else 1.0,
                               "reference_mean": inner.reference_mean, "n": len(ref), "reference": cfg.reference or "data"}}
    if cfg.eval_samples and member is None:  # an ensemble labels its policy samples once, for every member
        from rlhfkit.train.reward_ensemble import policy_sample_accuracy

        final["policy_samples"] = policy_sample_accuracy(RewardScorer(inner, tokenizer, cfg, batch_size=32, center=True),
                                                         cfg.eval_samples, cfg.eval_gold)

    def save_final(out: Path) -> None:
        with atomic_files(out) as tmp:  # each file whole, eval.json last
            inner.save_pretrained(tmp, tokenizer)
        atomic_json(out / "eval.json", final)

    return run.finish(save_final)
