"""The loop's figure: gold and proxy reward, KL to SFT and reward-model accuracy on policy samples, per
round, with the one-round baseline (same annotation budget) as dashed lines when it was run."""

from __future__ import annotations

from pathlib import Path


def plot_loop(rows: list[dict], baseline: dict | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    rounds = [r["round"] for r in rows]
    panels = [(axes[0], [("gold", "gold reward", "C0"), ("proxy", "proxy reward (that round's RM)", "C1")], "reward"),
              (axes[1], [("kl", "KL to SFT", "C2")], "nats per sequence"),
              (axes[2], [("rm_accuracy", "RM on its policy's samples", "C3"),
                         ("rm_accuracy_on_previous_policy", "RM on the previous policy's samples", "C4")], "pairwise accuracy")]
    for ax, series, ylabel in panels:
        for key, name, color in series:
            pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color=color, label=name)
            if baseline is not None and baseline.get(key) is not None:
                ax.axhline(baseline[key], color=color, ls="--", lw=1, label=f"{name}: one round, same budget")
        ax.set_xlabel("round (0: SFT)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(rounds)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)  # below: inside it hid points
    fig.suptitle("Iterated RLHF: per round")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
