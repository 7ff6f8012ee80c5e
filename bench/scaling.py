"""How an RL step's cost grows with the work: seconds per rlhfkit RLOO step (REINFORCE, leave-one-out
baseline, K samples per prompt, k1 KL penalty, VADER reward) on a grid of sequences per step x new tokens.

    .venv/bin/python bench/scaling.py [--sequences 8 16 32 64] [--new-tokens 16 32 64] [--samples 4] \
        [--plot docs/speed_scaling.png] [--json scaling.json]

Sequences per step = prompts x K (K = --samples, 4: 8 sequences are 2 prompts x 4). Each cell builds a fresh
trainer on the same model and movie-review prompts, runs one warm-up step and --steps measured steps, and
prints s/step, its split (generate / reward / reference / update), the mean response length (rows stop at
EOS, so the length actually sampled is printed beside its cap) and ms per sequence-token. The plot shows
s/step against sequences, one line per new-token cap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sequences", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--new-tokens", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--samples", type=int, default=4, help="K: responses per prompt")
    ap.add_argument("--steps", type=int, default=1, help="measured steps per cell, after one warm-up step")
    ap.add_argument("--minibatch", type=int, default=16, help="sequences per forward/backward")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--plot", help="write the plot here (PNG)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)

    from rlhfkit.cli_options import quiet_libraries

    quiet_libraries()
    import torch
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from rlhfkit import precision as precision_mod
    from rlhfkit.config import ReinforceConfig
    from rlhfkit.models import resolve
    from rlhfkit.tasks import load_task
    from rlhfkit.train.reinforce import ReinforceTrainer
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
    from generate import cpu_words

    model = str(resolve(args.model))
    mixed = precision_mod.resolve(args.precision)
    vader = SentimentIntensityAnalyzer()

    def reward(ps, rs):
        return torch.tensor([vader.polarity_scores(r)["compound"] for r in rs])

    task = load_task("movie_reviews")
    pool = [task.format_prompt(p) for p in task.prompts("unlabeled")]
    K = args.samples
    print(f"{cpu_words()}; precision {'fp32' if mixed == 'no' else mixed}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; rlhfkit RLOO, K={K}, minibatch {args.minibatch}")
    print(f"{'sequences':>9} {'new tok':>7} {'s/step':>7} {'mean len':>8} {'ms/seq-token':>12}  split (generate/reward/ref/update s)")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for T in args.new_tokens:
            for S in args.sequences:
                if S % K:
                    raise SystemExit(f"--sequences {S} is not a multiple of K={K}")
                P = S // K
                pf = Path(work) / "prompts.jsonl"
                pf.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in pool[: P * (args.steps + 1)]))
                prompts = pool[: P * (args.steps + 1)]
                trainer = ReinforceTrainer(
                    ReinforceConfig(model=model, prompts=str(pf), out=f"{work}/r{S}_{T}", steps=args.steps + 1, batch_size=P,
                                    samples_per_prompt=K, baseline="leave_one_out", kl_coef=0.05, lr=1e-6,
                                    minibatch_size=min(args.minibatch, S), max_new_tokens=T, grad_variance_samples=0,
                                    mixed_precision=mixed, seed=0),
                    reward, prompts, progress=False)
                trainer.step()  # warm-up
                times, lens, splits = [], [], []
                for _ in range(args.steps):
                    t = time.perf_counter()
                    res = trainer.step()
                    times.append(time.perf_counter() - t)
                    lens.append(res["metrics"]["response_length"])
                    splits.append(res["timings"])
                s = statistics.mean(times)
                length = statistics.mean(lens)
                split = {k: statistics.mean(x[k] for x in splits) for k in ("time_generate", "time_reward", "time_ref", "time_update")}
                row = {"sequences": S, "new_tokens": T, "s_per_step": s, "mean_length": length, **split}
                rows.append(row)
                print(f"{S:>9} {T:>7} {s:>7.1f} {length:>8.1f} {1000 * s / (S * max(length, 1)):>12.1f}  "
                      + "/".join(f"{v:.1f}" for v in split.values()), flush=True)
                del trainer
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_words(), "precision": mixed, "rows": rows}, indent=1) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for T in args.new_tokens:
            pts = [r for r in rows if r["new_tokens"] == T]
            ax.plot([r["sequences"] for r in pts], [r["s_per_step"] for r in pts], marker="o", label=f"<= {T} new tokens")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"sequences per step (prompts x K={K})")
        ax.set_ylabel("seconds per RLOO step")
        ax.set_title(f"rlhfkit RLOO step cost, {args.model}\n{cpu_words()}, {'fp32' if mixed == 'no' else mixed}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        plt.close(fig)
        print(f"plot written to {args.plot}")
    return rows


if __name__ == "__main__":
    main()
