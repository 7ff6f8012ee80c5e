"""Supervised fine-tuning: maximise log p(completion | prompt), the loss on response tokens only."""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfkit import ops
from rlhfkit.config import SFTConfig
from rlhfkit.data import Conversation, Message, SFTExample, load_sft
from rlhfkit.models import load_tokenizer
from rlhfkit.forward import format_prompts, forward_response, prompt_format
from rlhfkit.train.common import Timer, make_optimizer, save_model
from rlhfkit.train.run import TrainingRun, total_steps


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _render(tokenizer, messages, cfg) -> str:
    """The chat-templated text of ``messages`` up to the next assistant turn (generation prompt added)."""
    return format_prompts(tokenizer, [Conversation(messages)], cfg.system_prompt, "auto")[0]


def _conversation_turns(tokenizer, ex: SFTExample, cfg) -> tuple[list[int], list[int], list[int]]:
    """loss_on 'all': the prompt is the conversation before its first assistant turn; the response is
    every assistant turn (loss) with the template's text between them (context, no loss). The template
    must render a conversation as an extension of its prefixes (ChatML does)."""
    msgs = list(ex.prompt) + [Message("assistant", ex.completion)]
    turns = [i for i, m in enumerate(msgs) if m.role == "assistant"]
    prompt_text = done = _render(tokenizer, msgs[: turns[0]], cfg)
    resp, loss = [], []
    for k in turns:
        if k != turns[0]:
            upto = _render(tokenizer, msgs[:k], cfg)
            if not upto.startswith(done):
                raise ValueError("loss_on 'all' needs a chat template whose text for a conversation extends its "
                                 "text for each earlier part; use loss_on 'last'")
            gap = _ids(tokenizer, upto[len(done):])
            resp, loss = resp + gap, loss + [0] * len(gap)
            done = upto
        turn = _ids(tokenizer, msgs[k].content)[: cfg.max_completion_tokens - 1] + [tokenizer.eos_token_id]
        resp, loss = resp + turn, loss + [1] * len(turn)
        done = done + msgs[k].content + tokenizer.eos_token
    return _ids(tokenizer, prompt_text), resp, loss


def sft_tokens(tokenizer, ex: SFTExample, cfg) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, response ids, loss flags of the response ids) of one example, before truncation of the
    prompt. The model sees ``format_prompts``' text of the prompt, then the completion and EOS (no EOS
    for ``{"finished": false}``, a sample cut off at its token limit); an
    example without a prompt ({"text"}) is language modelling on the raw text + EOS (its first token is
    the context of the second, as in TRL)."""
    chat_template, loss_on = getattr(cfg, "chat_template", "auto"), getattr(cfg, "loss_on", "last")  # train_sft checks loss_on
    eos = tokenizer.eos_token_id
    if ex.prompt is None:
        ids = _ids(tokenizer, ex.completion)[: cfg.max_prompt_tokens + cfg.max_completion_tokens - 1] + [eos]
        return ids[:1], ids[1:], [1] * (len(ids) - 1)
    if loss_on == "all" and isinstance(ex.prompt, Conversation) and any(m.role == "assistant" for m in ex.prompt):
        return _conversation_turns(tokenizer, ex, cfg)
    prompt = _ids(tokenizer, format_prompts(tokenizer, [ex.prompt], cfg.system_prompt, chat_template)[0])
    if ex.meta.get("finished", True) is False:
        # a sample cut off at its token limit ({"finished": false}, as expert iteration writes them): its
        # tokens are the demonstration, but it never stopped, so no EOS is learned after them
        resp = _ids(tokenizer, ex.completion)[: cfg.max_completion_tokens]
    else:
        resp = _ids(tokenizer, ex.completion)[: cfg.max_completion_tokens - 1] + [eos]
    return prompt, resp, [1] * len(resp)


def encode_sft_batch(tokenizer, examples: list[SFTExample], cfg, device="cpu"):
    """Left-padded prompts (cut to their last ``max_prompt_tokens``) and right-padded responses.
    Returns prompt_ids, prompt_mask (B, P), response ids, response_mask (B, T) (attention) and
    loss_mask (B, T) (1 on the tokens the loss is on: completion tokens and EOS)."""
    rows = [sft_tokens(tokenizer, ex, cfg) for ex in examples]
    prompts = [p[-cfg.max_prompt_tokens :] for p, _, _ in rows]
    P, T = max(len(p) for p in prompts), max(1, max(len(r) for _, r, _ in rows))
    pad = tokenizer.pad_token_id
    out = [torch.full((len(rows), P), pad), torch.zeros(len(rows), P), torch.full((len(rows), T), pad),
           torch.zeros(len(rows), T), torch.zeros(len(rows), T)]
    for b, (p, (_, r, l)) in enumerate(zip(prompts, rows)):
        out[0][b, P - len(p):], out[1][b, P - len(p):] = torch.tensor(p), 1
        out[2][b, : len(r)], out[3][b, : len(r)], out[4][b, : len(r)] = torch.tensor(r), 1, torch.tensor(l)
    return tuple(x.long().to(device) for x in out)


def sft_loss(model, batch) -> torch.Tensor:
    """Mean negative log-likelihood of the loss tokens (completion tokens, EOS included) of the whole batch.

    Args:
        model: a causal LM (or a peft/accelerate wrapper of one).
        batch: ``encode_sft_batch``'s tuple: prompt_ids, prompt_mask (B, P), response ids, response_mask
            (B, T) and, optionally, loss_mask (B, T) (the response mask when absent).

    Example::

        batch = encode_sft_batch(tokenizer, examples[:8], SFTConfig(model="tiny", data="demos.jsonl"))
        sft_loss(model, batch).backward()
    """
    prompt_ids, prompt_mask, resp_ids, resp_mask = batch[:4]
    loss_mask = batch[4] if len(batch) > 4 else resp_mask
    logp = forward_response(model, prompt_ids, prompt_mask, resp_ids, resp_mask)["logprobs"]
    return -ops.masked_mean(logp, loss_mask)


def train_sft(cfg: SFTConfig, progress: bool = True) -> Path:
    """Supervised fine-tuning of ``cfg.model`` on ``cfg.data`` (JSONL of prompt/completion, chat messages or
    plain text; see ``load_sft``) by ``sft_loss``; writes the model (LoRA merged), config.yaml,
    metrics.jsonl and ``checkpoint-N`` folders (every ``cfg.save_every`` steps) into ``cfg.out``.

    Args:
        cfg: model, data, out, and the optimisation (lr, batch_size, grad_accum, epochs or max_steps,
            LoRA, loss_on, ...); ``cfg.resume`` continues a run from its last checkpoint, reproducing the
            uninterrupted run's numbers.
        progress: show a progress bar.

    Returns the run directory, which ``from_pretrained`` (and ``--model``) loads.

    Example::

        out = train_sft(SFTConfig(model="tiny", data="demos.jsonl", out="runs/sft", max_steps=100))
    """
    if cfg.loss_on not in ("last", "all"):
        raise ValueError(f"loss_on must be 'last' or 'all', got {cfg.loss_on!r}")
    run = TrainingRun(cfg, "SFT", cfg.grad_accum, progress)
    accelerator = run.accelerator
    examples = load_sft(cfg.data, cfg.chat_template)  # a malformed line stops here, before any model is loaded
    tokenizer = load_tokenizer(cfg.model)
    model = run.load_lm()
    model.train()
    total = total_steps(cfg, len(examples), run.processes)
    optimizer, scheduler = make_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, cfg.warmup_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    batches = run.batches(len(examples), cfg.batch_size)
    step = run.track(optimizer, scheduler, batches,
                     save=lambda ckpt: save_model(accelerator, model, tokenizer, ckpt / "model", merge=False))
    with run.loop(total, model=cfg.model, data=cfg.data, examples=len(examples),
                  prompt_format=prompt_format(tokenizer, cfg.chat_template)):
        while step < total:
            timer = Timer()
            losses, tokens, bad = [], 0, []
            for _ in range(cfg.grad_accum):
                idx, real = run.share(batches.next())
                with timer("data"):
                    batch = encode_sft_batch(tokenizer, [examples[i] for i in idx], cfg, accelerator.device)
                # the loss is a mean over the global batch's loss tokens, however they fall on processes
                n_loss = float(batch[4].sum()) if real else 0.0
                with accelerator.accumulate(model), timer("update"):
                    loss = sft_loss(model, batch)
                    bad = bad or run.nonfinite(loss=loss)
                    if not bad:  # a non-finite loss in any micro-batch: no update for the whole step
                        accelerator.backward(loss * run.share_weight(n_loss))
                        optimizer.step()
                        scheduler.step()
                    optimizer.zero_grad()
                losses.append(run.weighted_mean({"loss": loss.item()}, n_loss)["loss"])
                tokens += int(run.sum(int(batch[3].sum()) if real else 0))
            step += 1
            run.record_update(f"step {step}", bad)
            metrics = {"loss": sum(losses) / len(losses), "lr": scheduler.get_last_lr()[0], "epoch": batches.epoch + batches.pos / len(examples), "tokens": tokens}
            run.log(step, metrics, {**timer.t, "tokens_per_s": tokens / max(sum(timer.t.values()), 1e-9)})
            run.advance(f"loss {metrics['loss']:.3f}")
            run.maybe_checkpoint(step)
    return run.finish(lambda out: save_model(accelerator, model, tokenizer, out, merge=True))
