"""Direct preference optimisation (Rafailov et al. 2023): the policy is its own reward model.

The KL-constrained RLHF objective has a closed-form optimum, pi*(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta), so
r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) + (a term of x alone), and the Bradley-Terry likelihood of the
preferences can be maximised over pi directly: no reward model, no sampling, no critic.

  1. the frozen reference's log-probs of every response in the data, once (they never change)
  2. for each batch of prompts: the policy's log-prob of each distinct response (a prompt runs once for
     all its responses; a ranking of K gives K(K-1)/2 pairs but only K sequences)
  3. loss = -logsigmoid(beta * [log pi/pi_ref (y_w) - log pi/pi_ref (y_l)]) over the prompts' pairs
     (with cDPO label smoothing), each prompt weighing the same as for the reward model; one step
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfkit import ops
from rlhfkit.atomic import atomic_json
from rlhfkit.config import DPOConfig
from rlhfkit.data import Preference, SFTExample, load_preferences
from rlhfkit.forward import autocast_context, forward_response, prompt_format
from rlhfkit.models import is_peft, load_causal_lm, load_tokenizer
from rlhfkit.train.common import Timer, make_optimizer, save_model
from rlhfkit.train.reward import group_pairs, split_groups
from rlhfkit.train.run import TrainingRun, total_steps
from rlhfkit.train.sft import encode_sft_batch

Key = tuple  # (prompt, response): one sequence whose log-prob is computed


def check_config(cfg: DPOConfig) -> None:
    """Refuse options that cannot work, naming the option, before anything is loaded."""
    if cfg.beta <= 0:
        raise ValueError(f"--beta must be > 0 (the implicit reward is beta * log(pi/pi_ref)), got {cfg.beta}")
    if not 0.0 <= cfg.label_smoothing < 0.5:
        raise ValueError(f"--label-smoothing must be in [0, 0.5) (the probability that a label is flipped), got {cfg.label_smoothing}")
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise ValueError(f"--batch-size ({cfg.batch_size}) and --grad-accum ({cfg.grad_accum}) must be at least 1")
    if not cfg.eval_data and not 0.0 <= cfg.eval_fraction < 1.0:
        raise ValueError(f"--eval-fraction must be in [0, 1), got {cfg.eval_fraction}")


def load_pairs(path: str, chat_template: str = "auto") -> tuple[list[Preference], int]:
    """The pairs of a preference file (rankings expanded by ``load_preferences``, as for the reward model),
    without those whose two answers are the same text: their log-ratio difference is 0 whatever the
    policy, so they add log 2 to the loss and nothing to the gradient. Returns (pairs, dropped)."""
    pairs = load_preferences(path, chat_template)
    kept = [p for p in pairs if p.chosen != p.rejected]
    if not kept:
        raise ValueError(f"{path}: no preference pair with two different answers")
    return kept, len(pairs) - len(kept)


def pair_index(groups: list[list[Preference]]) -> tuple[list[Key], list[int], list[int], list[int]]:
    """The distinct (prompt, response) sequences of the groups' pairs, and for each pair the index of its
    chosen and rejected sequence and of its group: a response in several pairs runs once."""
    index: dict[Key, int] = {}
    chosen, rejected, owner = [], [], []
    for gi, g in enumerate(groups):
        for p in g:
            owner.append(gi)
            for resp, dest in ((p.chosen, chosen), (p.rejected, rejected)):
                dest.append(index.setdefault((p.prompt, resp), len(index)))
    return list(index), chosen, rejected, owner


def sequence_logps(model, tokenizer, keys: list[Key], cfg, device) -> torch.Tensor:
    """(N,) log pi(response | prompt) of each key under ``model``, in float32 (with gradient when enabled);
    the rows of a prompt share one prompt pass (``share_prompts``). The text is SFT's: the chat-templated
    prompt, then the response and EOS, cut to ``cfg``'s token limits."""
    batch = encode_sft_batch(tokenizer, [SFTExample(p, r) for p, r in keys], cfg, device)
    logp = forward_response(model, *batch[:4], share_prompts=True)["logprobs"].float()
    return ops.sequence_logprobs(logp, batch[4])


@torch.no_grad()
def reference_logps(model, tokenizer, keys: list[Key], cfg, device, bf16: bool, chunk: int = 32) -> dict[Key, float]:
    """log pi_ref of every key, computed once; ``model`` is the frozen reference (with LoRA: the policy, to
    be called with its adapters disabled). Keys are sorted by prompt so that a chunk's rows share prompts."""
    keys = sorted(keys, key=lambda k: str(k[0]))
    out: dict[Key, float] = {}
    for i in range(0, len(keys), chunk):
        part = keys[i : i + chunk]
        with autocast_context(device, bf16):
            if is_peft(model):
                with model.disable_adapter():
                    lp = sequence_logps(model, tokenizer, part, cfg, device)
            else:
                lp = sequence_logps(model, tokenizer, part, cfg, device)
        out.update(zip(part, lp.tolist()))
    return out


def batch_loss(model, tokenizer, groups: list[list[Preference]], ref: dict[Key, float], cfg, device):
    """DPO over the groups' pairs (each prompt weighing the same). Returns (loss, stats): accuracy (share of
    pairs whose implicit reward margin is > 0; ties count as wrong), the mean implicit rewards of the chosen
    and rejected answers and their margin, and the policy's mean log-prob margin log pi(y_w) - log pi(y_l)."""
    keys, ci, ri, owner = pair_index(groups)
    logp = sequence_logps(model, tokenizer, keys, cfg, device)
    ref_lp = torch.tensor([ref[k] for k in keys], dtype=logp.dtype, device=logp.device)
    ci, ri = torch.tensor(ci, device=logp.device), torch.tensor(ri, device=logp.device)
    weight = ops.prompt_weights(torch.tensor(owner)).to(logp.device)
    loss, chosen, rejected = ops.dpo_loss(logp[ci], logp[ri], ref_lp[ci], ref_lp[ri], cfg.beta, cfg.label_smoothing, weight=weight)
    margin = chosen - rejected
    stats = {"accuracy": (margin > 0).float().mean().item(), "reward_margin": margin.mean().item(),
             "reward_chosen": chosen.mean().item(), "reward_rejected": rejected.mean().item(),
             "logp_margin": (logp[ci] - logp[ri]).detach().mean().item(), "pairs": len(ci)}
    return loss, stats


@torch.no_grad()
def evaluate(model, tokenizer, groups, ref: dict[Key, float], cfg, device, batch_groups: int = 16) -> dict:
    """Held-out DPO loss (per prompt, as trained), accuracy, implicit reward margin and log-prob margin
    (per pair)."""
    was_training = model.training
    model.eval()
    sums, n, loss_sum = {}, 0, 0.0
    for i in range(0, len(groups), batch_groups):
        chunk = groups[i : i + batch_groups]
        loss, s = batch_loss(model, tokenizer, chunk, ref, cfg, device)
        loss_sum += loss.item() * len(chunk)
        n += s["pairs"]
        for k in ("accuracy", "reward_margin", "logp_margin"):
            sums[k] = sums.get(k, 0.0) + s[k] * s["pairs"]
    model.train(was_training)
    return {"eval_loss": loss_sum / max(len(groups), 1), **{f"eval_{k}": v / max(n, 1) for k, v in sums.items()},
            "eval_pairs": n, "eval_prompts": len(groups)}


def reference_margin(groups, ref: dict[Key, float]) -> float:
    """The reference's mean log-prob margin log pi_ref(y_w) - log pi_ref(y_l) over the groups' pairs: the
    policy's before its first step."""
    pairs = [p for g in groups for p in g]
    return sum(ref[(p.prompt, p.chosen)] - ref[(p.prompt, p.rejected)] for p in pairs) / max(len(pairs), 1)


def train_dpo(cfg: DPOConfig, progress: bool = True) -> Path:
    """DPO of ``cfg.model`` on the preferences in ``cfg.data`` (pairs and/or K-way rankings, see
    ``load_preferences``) against the frozen ``cfg.model`` (with LoRA: the same network, adapters off).
    Writes the policy (LoRA merged), eval.json (held-out loss, accuracy and margins of the final policy and
    the reference's log-prob margin on the same pairs), config.yaml, run_info.json, metrics.jsonl (loss,
    accuracy, reward margin, log-prob margin, ...) and ``checkpoint-N`` folders into ``cfg.out``.

    Args:
        cfg: model, data, out, the held-out split (eval_data or eval_fraction), beta, label_smoothing and the
            optimisation (lr, batch_size in prompts, epochs or max_steps, LoRA, ...); ``cfg.resume``
            continues a run from its last checkpoint, reproducing the uninterrupted run.
        progress: show a progress bar.

    Returns the run directory, which ``from_pretrained`` (and ``--model``) loads.

    Example::

        out = train_dpo(DPOConfig(model="runs/sft", data="prefs.jsonl", out="runs/dpo", beta=0.1, epochs=1))
        print(json.loads((out / "eval.json").read_text())["eval"]["eval_accuracy"])
    """
    check_config(cfg)
    run = TrainingRun(cfg, "DPO", cfg.grad_accum, progress)
    accelerator = run.accelerator
    pairs, dropped = load_pairs(cfg.data, cfg.chat_template)  # malformed lines stop here, before any model is loaded
    groups = group_pairs(pairs)
    if cfg.eval_data:
        train_groups, eval_groups = groups, group_pairs(load_pairs(cfg.eval_data, cfg.chat_template)[0])
    else:
        train_groups, eval_groups = split_groups(groups, cfg.eval_fraction, cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    model = run.load_lm().to(accelerator.device)
    bf16 = cfg.mixed_precision == "bf16"
    # 1. the reference's log-probs, once; with LoRA the reference is the policy with its adapters off
    keys = pair_index(train_groups + eval_groups)[0]
    if cfg.lora_r > 0 and is_peft(model):
        ref = reference_logps(model, tokenizer, keys, cfg, accelerator.device, bf16)
    else:
        ref_model = load_causal_lm(cfg.model, trainable=False).to(accelerator.device)
        ref = reference_logps(ref_model, tokenizer, keys, cfg, accelerator.device, bf16)
        del ref_model
    model.train()
    total = total_steps(cfg, len(train_groups), run.processes)
    optimizer, scheduler = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, cfg.warmup_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    batches = run.batches(len(train_groups), cfg.batch_size)
    step = run.track(optimizer, scheduler, batches,
                     save=lambda ckpt: save_model(accelerator, model, tokenizer, ckpt / "model", merge=False))
    with run.loop(total, model=cfg.model, data=cfg.data, pairs=len(pairs), identical_pairs_dropped=dropped,
                  groups=len(groups), train_groups=len(train_groups), eval_groups=len(eval_groups),
                  prompt_format=prompt_format(tokenizer, cfg.chat_template)):
        while step < total:
            timer = Timer()
            parts: list[tuple[float, dict]] = []
            bad: list[str] = []
            for _ in range(cfg.grad_accum):
                idx, real = run.share(batches.next())
                chunk = [train_groups[i] for i in idx]
                # 2.-3. the policy's log-probs of the batch's responses, the DPO loss, one step
                with accelerator.accumulate(model), timer("update"):
                    loss, stats = batch_loss(model, tokenizer, chunk, ref, cfg, accelerator.device)
                    # each prompt of the global batch weighs the same, however they fall on processes
                    n = len(chunk) if real else 0
                    bad = bad or run.nonfinite(loss=loss)
                    if not bad:  # a non-finite loss or gradient in any micro-batch: no update for the whole step
                        accelerator.backward(loss * run.share_weight(n))
                        if cfg.max_grad_norm and accelerator.sync_gradients:
                            stats["grad_norm"] = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
                            bad = run.nonfinite(grad_norm=stats["grad_norm"])
                    if not bad:
                        optimizer.step()
                        scheduler.step()
                    optimizer.zero_grad()
                # the loss per prompt, the rest per pair, over the global batch (grad_norm is global already)
                pair_stats = {k: v for k, v in stats.items() if k not in ("pairs", "grad_norm")}
                stats.update(run.weighted_mean(pair_stats, stats["pairs"] if real else 0))
                parts.append((run.weighted_mean({"loss": loss.item()}, n)["loss"], stats))
            step += 1
            run.record_update(f"step {step}", bad)
            metrics = {"loss": sum(l for l, _ in parts) / len(parts)}
            for k in ("accuracy", "reward_margin", "reward_chosen", "reward_rejected", "logp_margin", "grad_norm"):
                values = [s[k] for _, s in parts if k in s]  # grad_norm: on the step that syncs only
                if values:
                    metrics[k] = sum(values) / len(values)
            metrics.update(lr=scheduler.get_last_lr()[0], epoch=batches.epoch + batches.pos / len(train_groups))
            # held-out eval on a schedule of the step number alone, so that a resumed run logs what an
            # uninterrupted one does; the final policy's goes to eval.json
            if eval_groups and cfg.eval_every and step % cfg.eval_every == 0:
                with timer("eval"):
                    metrics.update(evaluate(model, tokenizer, eval_groups, ref, cfg, accelerator.device))
            run.log(step, metrics, timer.t)
            info = f"loss {metrics['loss']:.3f} acc {metrics['accuracy']:.2f} margin {metrics['reward_margin']:+.3f}"
            if "eval_accuracy" in metrics:
                info += f" held-out acc {metrics['eval_accuracy']:.3f}"
            run.advance(info)
            run.maybe_checkpoint(step)
    final = {"eval": evaluate(model, tokenizer, eval_groups, ref, cfg, accelerator.device) if eval_groups else {},
             "reference": {"eval_logp_margin": reference_margin(eval_groups, ref)} if eval_groups else {},
             "beta": cfg.beta, "label_smoothing": cfg.label_smoothing}

    def save_final(out: Path) -> None:
        save_model(accelerator, model, tokenizer, out, merge=True)
        atomic_json(out / "eval.json", final)

    return run.finish(save_final)
