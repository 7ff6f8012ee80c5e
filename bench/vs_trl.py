"""Seconds per RL step, side by side in one process: TRL's RLOOTrainer, rlhfkit's RLOO (``rlhfkit
reinforce --baseline leave_one_out`` with a KL penalty) and rlhfkit's PPO, on identical work.

    pip install -e '.[bench]'          # TRL, an optional extra
    .venv/bin/python bench/vs_trl.py [--model smollm2-135m] [--pairs 3]
    .venv/bin/python bench/vs_trl.py --model tiny --pairs 1 --no-ppo   # smoke check, about a minute

Identical work on every side:
- the same model (a plain fp32 copy of the model folder; TRL loads the same folder, policy and reference);
- the same prompts: the first ``--prompts`` movie-review openings framed as the task frames them, given as
  chat messages (one user turn; both sides apply the tokenizer's chat template, and the script checks that
  the token ids are the same);
- K = ``--samples`` responses per prompt, so 8 x 4 = 32 sequences per step; every step uses the same 8
  prompts on every side (the prompt file holds only them);
- at most ``--new-tokens`` new tokens, temperature 1, top-p 1, no top-k; a response stops at EOS on every
  side (no min_new_tokens: the mean response length of each side is printed beside its time);
- the same reward: VADER's compound score of the response text;
- the same objective: score - beta * sum_t (log pi - log pi_ref) (k1, TRL RLOO's KL), the leave-one-out
  baseline, loss mean_i -A_i log p(y_i | x_i) (TRL: the same with a ratio that is 1 on-policy), one
  optimiser step (AdamW, lr, grad-norm clip 1.0) per batch, in two minibatches of 16 sequences
  (TRL: per-device batch 16 x 2 accumulation steps; rlhfkit: minibatch_size 16);
- the same precision: ``auto`` (bf16 only where the CPU/GPU computes it natively, fp32 otherwise).
TRL runs with gradient checkpointing off (its default is on, which recomputes the forward pass to save
memory that a 135M model does not need) and without logging or checkpoints. PPO (rlhfkit only) samples one
response to each of 32 prompts -- the same 8 prompts, 4 copies each -- with 1 PPO epoch of minibatches of 16.

Order: one warm-up step of each (not counted), then ``--pairs`` rounds of TRL, RLOO, PPO, one step each,
in the same process and thread settings. TRL drives the loop; rlhfkit's steps run from a callback between
two TRL steps, outside TRL's timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch


def cpu_info() -> tuple[str, bool]:
    """(CPU model name, whether it has AVX-512 BF16) from lscpu (/proc/cpuinfo when lscpu is missing)."""
    name, flags = platform.processor() or "unknown CPU", ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                name = value.strip()
            elif key.strip() == "Flags":
                flags = value
    except (OSError, subprocess.CalledProcessError):
        text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        for line in text.splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    return name, "avx512_bf16" in flags.split()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", "--steps", type=int, default=3, dest="pairs",
                    help="measured rounds (TRL, RLOO, PPO) after the warm-up step of each")
    ap.add_argument("--prompts", type=int, default=8, help="distinct prompts per step")
    ap.add_argument("--samples", type=int, default=4, help="K: responses per prompt")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--beta", type=float, default=0.05, help="KL coefficient (TRL RLOO's default)")
    ap.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate (TRL RLOO's default)")
    ap.add_argument("--minibatch", type=int, default=16, help="sequences per forward/backward")
    ap.add_argument("--precision", default="auto", help="auto (native bf16 only), no (fp32) or bf16")
    ap.add_argument("--no-ppo", action="store_true", help="leave out rlhfkit PPO")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    from rlhfkit.cli_options import quiet_libraries

    quiet_libraries()
    import warnings

    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated.*")
    try:
        from transformers import PrinterCallback, TrainerCallback
        from trl import RLOOConfig, RLOOTrainer
        import trl
    except ImportError as e:
        raise SystemExit(f"bench/vs_trl.py needs TRL: pip install -e '.[bench]' ({e})")
    from datasets import Dataset
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from rlhfkit import precision as precision_mod
    from rlhfkit.config import PPOConfig, ReinforceConfig
    from rlhfkit.forward import encode_prompts
    from rlhfkit.models import load_tokenizer, resolve
    from rlhfkit.tasks import load_task
    from rlhfkit.train.ppo import PPOTrainer
    from rlhfkit.train.reinforce import ReinforceTrainer

    model_dir = str(resolve(args.model))  # export/cache outside the timing; TRL needs a plain folder
    mixed = precision_mod.resolve(args.precision)
    task = load_task("movie_reviews")
    prompts = [task.format_prompt(p) for p in task.prompts("unlabeled")[: args.prompts]]
    messages = [[{"role": "user", "content": p}] for p in prompts]
    K, n_seq = args.samples, args.prompts * args.samples

    # the same tokens on both sides: rlhfkit's encoding (a string prompt becomes one user turn of the
    # chat template) against TRL's (apply_chat_template on the messages)
    tok = load_tokenizer(model_dir)
    ids, mask = encode_prompts(tok, prompts)
    ours = [[t for t, m in zip(r, mr) if m] for r, mr in zip(ids.tolist(), mask.tolist())]
    theirs = tok.apply_chat_template(conversation=messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    if ours != [list(t) for t in theirs]:
        raise SystemExit("the prompts tokenize differently for rlhfkit and TRL: the comparison would not be fair")
    prompt_tokens = sum(len(t) for t in ours) / len(ours)

    vader = SentimentIntensityAnalyzer()

    def text_of(completion) -> str:
        if isinstance(completion, list):  # TRL gives conversational completions as messages
            return "".join(m["content"] for m in completion if m.get("role") == "assistant")
        return completion

    def vader_rlhfkit(ps, rs):
        return torch.tensor([vader.polarity_scores(r)["compound"] for r in rs])

    def vader_trl(prompts, completions, **kw):
        return [vader.polarity_scores(text_of(c).strip())["compound"] for c in completions]

    vader_trl.__name__ = "vader"

    work = Path(tempfile.mkdtemp(prefix="vs_trl."))
    pf = work / "prompts.jsonl"
    pf.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    pf_ppo = work / "prompts_ppo.jsonl"  # PPO: one sample per prompt, so each prompt 4 times
    ppo_prompts = [p for p in prompts for _ in range(K)]
    pf_ppo.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ppo_prompts))
    steps = args.pairs + 1

    rloo = ReinforceTrainer(
        ReinforceConfig(model=model_dir, prompts=str(pf), out=str(work / "rloo"), steps=steps, batch_size=args.prompts,
                        samples_per_prompt=K, baseline="leave_one_out", kl_coef=args.beta, kl_penalty="k1", lr=args.lr,
                        max_grad_norm=1.0, minibatch_size=args.minibatch, max_new_tokens=args.new_tokens, temperature=1.0,
                        top_p=1.0, grad_variance_samples=0, mixed_precision=mixed, seed=args.seed),
        vader_rlhfkit, prompts, progress=False)
    ppo = None
    if not args.no_ppo:
        ppo = PPOTrainer(
            PPOConfig(model=model_dir, prompts=str(pf_ppo), out=str(work / "ppo"), steps=steps, batch_size=n_seq,
                      minibatch_size=args.minibatch, ppo_epochs=1, max_new_tokens=args.new_tokens, temperature=1.0,
                      top_p=1.0, init_kl_coef=args.beta, lr=args.lr, mixed_precision=mixed, seed=args.seed),
            vader_rlhfkit, ppo_prompts, progress=False)

    rows: list[dict] = []

    class Alternate(TrainerCallback):
        """After each TRL step: note its time, then run one rlhfkit RLOO step and one PPO step."""

        def __init__(self):
            self.t0 = None

        def on_step_begin(self, a, state, control, **kw):
            if self.t0 is None:
                self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            row = {"trl": time.perf_counter() - self.t0,
                   "trl_length": trainer._metrics["train"]["completions/mean_length"][-1]}
            t = time.perf_counter()
            res = rloo.step()
            row["rloo"] = time.perf_counter() - t
            row["rloo_length"] = res["metrics"]["response_length"]
            row["rloo_split"] = {k: v for k, v in res["timings"].items() if k.startswith("time_")}
            if ppo is not None:
                t = time.perf_counter()
                res = ppo.step()
                row["ppo"] = time.perf_counter() - t
                row["ppo_length"] = res["metrics"]["response_length"]
                row["ppo_split"] = {k: v for k, v in res["timings"].items() if k.startswith("time_")}
            rows.append(row)
            print(f"  step {len(rows) - 1}{' (warm-up)' if len(rows) == 1 else ''}: TRL {row['trl']:.1f} s, "
                  f"rlhfkit RLOO {row['rloo']:.1f} s" + (f", PPO {row['ppo']:.1f} s" if ppo else ""), flush=True)
            self.t0 = time.perf_counter()

    trl_args = RLOOConfig(
        output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=args.minibatch,
        gradient_accumulation_steps=n_seq // args.minibatch, num_generations=K, max_completion_length=args.new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, beta=args.beta, learning_rate=args.lr, max_grad_norm=1.0,
        bf16=mixed == "bf16", fp16=False, use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False,
        logging_steps=10**6, save_strategy="no", report_to="none", disable_tqdm=True, seed=args.seed,
        disable_dropout=True, model_init_kwargs={"dtype": torch.float32}, dataloader_num_workers=0)
    trainer = RLOOTrainer(model=model_dir, reward_funcs=vader_trl, args=trl_args,
                          train_dataset=Dataset.from_list([{"prompt": m} for m in messages]), processing_class=tok,
                          callbacks=[Alternate()])
    trainer.remove_callback(PrinterCallback)  # its end-of-training dict of TRL metrics; the table below is the output
    cpu, avx512_bf16 = cpu_info()
    print(f"CPU: {cpu}; avx512_bf16: {'yes' if avx512_bf16 else 'no'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
          f"TRL {trl.__version__}")
    print(f"model {args.model}; precision {'fp32' if mixed == 'no' else mixed} on every side; {args.prompts} prompts x "
          f"K={K} x <= {args.new_tokens} new tokens (stop at EOS); mean prompt {prompt_tokens:.0f} tokens; beta {args.beta}",
          flush=True)
    trainer.train()

    measured = rows[1:]
    print()
    head = f"{'pair':>4} {'TRL RLOO s':>11} {'rlhfkit RLOO s':>15} {'TRL/RLOO':>9}"
    if ppo:
        head += f" {'rlhfkit PPO s':>14} {'TRL/PPO':>8}"
    head += "   mean response tokens (TRL / RLOO" + (" / PPO)" if ppo else ")")
    print(head)
    for i, r in enumerate(measured, 1):
        line = f"{i:>4} {r['trl']:>11.1f} {r['rloo']:>15.1f} {r['trl'] / r['rloo']:>9.2f}"
        if ppo:
            line += f" {r['ppo']:>14.1f} {r['trl'] / r['ppo']:>8.2f}"
        line += f"   {r['trl_length']:.1f} / {r['rloo_length']:.1f}" + (f" / {r['ppo_length']:.1f}" if ppo else "")
        print(line)
    mean = lambda k: statistics.mean(r[k] for r in measured)  # noqa: E731
    line = f"{'mean':>4} {mean('trl'):>11.1f} {mean('rloo'):>15.1f} {mean('trl') / mean('rloo'):>9.2f}"
    if ppo:
        line += f" {mean('ppo'):>14.1f} {mean('trl') / mean('ppo'):>8.2f}"
    print(line)
    split = {k: statistics.mean(r["rloo_split"][k] for r in measured) for k in measured[0]["rloo_split"]}
    print("rlhfkit RLOO split (mean s): " + ", ".join(f"{k[5:]} {v:.1f}" for k, v in split.items()))
    if ppo:
        split = {k: statistics.mean(r["ppo_split"][k] for r in measured) for k in measured[0]["ppo_split"]}
        print("rlhfkit PPO split (mean s): " + ", ".join(f"{k[5:]} {v:.1f}" for k, v in split.items()))
    result = {"cpu": cpu, "avx512_bf16": avx512_bf16, "precision": mixed, "threads": torch.get_num_threads(),
              "model": args.model, "prompts": args.prompts, "samples": K, "new_tokens": args.new_tokens,
              "warmup": rows[0], "pairs": measured}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
