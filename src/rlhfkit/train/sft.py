"""Supervised fine-tuning: maximise log p(completion | prompt), the loss on response tokens only."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rlhfkit import ops
from rlhfkit.config import SFTConfig
from rlhfkit.data import SFTExample, load_sft
from rlhfkit.models import is_peft, load_causal_lm, load_tokenizer
from rlhfkit.rollout import encode_prompts, encode_responses, forward_response
from rlhfkit.train.common import (
    Batches, MetricsLog, Timer, latest_checkpoint, restore_trainer_state, lora_settings, make_accelerator,
    make_optimizer, progress_bar, rng_state, save_trainer_state, seed_everything, write_run_info,
)


def encode_sft_batch(tokenizer, examples: list[SFTExample], cfg, device="cpu"):
    """Left-padded chat prompts and right-padded completions (+EOS). Returns 4 tensors (B, P) / (B, T)."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, [e.prompt for e in examples], cfg.system_prompt, device)
    prompt_ids, prompt_mask = prompt_ids[:, -cfg.max_prompt_tokens :], prompt_mask[:, -cfg.max_prompt_tokens :]
    resp_ids, resp_mask = encode_responses(tokenizer, [e.completion for e in examples], True, cfg.max_completion_tokens, device)
    return prompt_ids, prompt_mask, resp_ids, resp_mask


def sft_loss(model, batch) -> torch.Tensor:
    """Mean negative log-likelihood of the completion tokens (EOS included) of the whole batch."""
    prompt_ids, prompt_mask, resp_ids, resp_mask = batch
    logp = forward_response(model, prompt_ids, prompt_mask, resp_ids, resp_mask)["logprobs"]
    return -ops.masked_mean(logp, resp_mask)


def save_model(accelerator, model, tokenizer, out: Path, merge: bool) -> None:
    """Plain safetensors that ``from_pretrained`` loads; a LoRA model is merged into a copy first when
    ``merge`` (final models), or saved as a peft adapter folder (checkpoints)."""
    import copy

    model = accelerator.unwrap_model(model)
    if is_peft(model) and merge:
        model = copy.deepcopy(model).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def train_sft(cfg: SFTConfig, progress: bool = True) -> Path:
    out = Path(cfg.out)
    accelerator = make_accelerator(cfg, cfg.grad_accum)
    seed_everything(cfg.seed)
    examples = load_sft(cfg.data)  # a malformed line stops here, before any model is loaded
    resume_ckpt = latest_checkpoint(cfg.resume) if cfg.resume else None
    tokenizer = load_tokenizer(cfg.model)
    model = load_causal_lm(resume_ckpt / "model" if resume_ckpt else cfg.model, lora=lora_settings(cfg))
    model.train()
    steps_per_epoch = math.ceil(len(examples) / (cfg.batch_size * cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    optimizer, scheduler = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, cfg.warmup_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    batches = Batches(len(examples), cfg.batch_size, cfg.seed)
    step = restore_trainer_state(resume_ckpt, optimizer, scheduler, batches) if resume_ckpt else 0
    if accelerator.is_main_process:
        write_run_info(out, cfg, model=cfg.model, data=cfg.data, examples=len(examples))
    log = MetricsLog(out, accelerator.is_main_process, resume_step=step if resume_ckpt else None)
    bar = progress_bar(total, "SFT", disable=not (progress and accelerator.is_main_process))
    with bar:
        task = bar.add_task("SFT", total=total, completed=step, info="")
        while step < total:
            timer = Timer()
            losses, tokens = [], 0
            for _ in range(cfg.grad_accum):
                idx = batches.next()
                with timer("data"):
                    batch = encode_sft_batch(tokenizer, [examples[i] for i in idx], cfg, accelerator.device)
                with accelerator.accumulate(model), timer("update"):
                    loss = sft_loss(model, batch)
                    accelerator.backward(loss)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                losses.append(loss.item())
                tokens += int(batch[3].sum())
            step += 1
            metrics = {"loss": sum(losses) / len(losses), "lr": scheduler.get_last_lr()[0], "epoch": batches.epoch + batches.pos / len(examples), "tokens": tokens}
            if step % cfg.log_every == 0 or step == total:
                log.log(step, metrics, {**timer.t, "tokens_per_s": tokens / max(sum(timer.t.values()), 1e-9)})
            bar.update(task, advance=1, info=f"loss {metrics['loss']:.3f}")
            if cfg.save_every and (step % cfg.save_every == 0 or step == total):
                _checkpoint(accelerator, model, tokenizer, optimizer, scheduler, batches, step, out)
    log.close()
    if accelerator.is_main_process:
        save_model(accelerator, model, tokenizer, out, merge=True)
    accelerator.wait_for_everyone()
    return out


def _checkpoint(accelerator, model, tokenizer, optimizer, scheduler, batches, step, out: Path) -> None:
    if not accelerator.is_main_process:
        return
    ckpt = out / f"checkpoint-{step}"
    save_model(accelerator, model, tokenizer, ckpt / "model", merge=False)
    save_trainer_state(ckpt, {
        "step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "data": batches.state(), "rng": rng_state(),
    })
