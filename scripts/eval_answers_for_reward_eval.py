"""Turn a demo run's evaluation answers into the samples file of `rlhfkit reward-eval --gold samples`: a larger
test of a reward model than its held-out pairs (every pair of one prompt's answers, labelled by the gold reward each
answer carries), on the answers the policies really give.

    python scripts/eval_answers_for_reward_eval.py runs/demo answers.jsonl
    rlhfkit reward-eval --reward-model runs/demo/reward --samples answers.jsonl --gold samples

Each prompt is framed as the task frames it for the models (its instruction before the opening), since the reward
model scored the preference data that way. Best-of-n's answers are left out by default: the reward model chose them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from rlhfkit.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished demo or pipeline run folder")
    ap.add_argument("out", type=Path, help="the samples JSONL to write")
    ap.add_argument("--methods", default="sft,ppo,expert_iteration", help="the samples/METHOD.jsonl files to take")
    args = ap.parse_args()
    config = yaml.safe_load((args.run / "pipeline.yaml").read_text())
    task = load_task(config["task"])
    n = 0
    with args.out.open("w") as f:
        for method in args.methods.split(","):
            path = args.run / "samples" / f"{method}.jsonl"
            if not path.exists():
                raise SystemExit(f"{path}: no such file (methods the run evaluated: "
                                 f"{', '.join(p.stem for p in sorted((args.run / 'samples').glob('*.jsonl')))})")
            for line in path.read_text().splitlines():
                row = json.loads(line)
                f.write(json.dumps({"prompt": task.format_prompt(row["prompt"]), "response": row["response"],
                                    "gold": row["gold"]}) + "\n")
                n += 1
    print(f"{n} answers -> {args.out}")


if __name__ == "__main__":
    main()
