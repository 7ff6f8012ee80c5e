"""Write examples/quickstart/ from a demo run: SFT demonstrations, the panel's rankings of SFT samples, and
RL prompts, all in the task's chat framing.

    .venv/bin/python scripts/make_quickstart.py runs/demo
"""

import json
import sys
from pathlib import Path

from rlhfkit.tasks import load_task


def main(run: Path, out: Path = Path("examples/quickstart")) -> None:
    task = load_task("movie_reviews")
    out.mkdir(parents=True, exist_ok=True)
    sft = [{"prompt": task.format_prompt(r["prompt"]), "completion": r["completion"]} for r in task.splits["sft"][:64]]
    prompts = [{"prompt": task.format_prompt(p)} for p in task.prompts("unlabeled")[:128]]
    rankings = (run / "prefs" / "rankings.jsonl").read_text()
    (out / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    (out / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    (out / "rankings.jsonl").write_text(rankings)
    print(f"wrote {out}: {len(sft)} demonstrations, {len(rankings.splitlines())} rankings, {len(prompts)} prompts")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
