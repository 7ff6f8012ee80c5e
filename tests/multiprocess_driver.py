"""Run under ``accelerate launch --config_file examples/accelerate/cpu_2proc.yaml`` by tests/test_multiprocess.py: rlhfkit's CLI
commands (sft, reward, ppo, grpo; each a part run and its resume) in one launch, so that torch and
transformers load once. Every process but the main one records each file it opens for writing, renames
or creates (an audit hook, without writing anything itself) and prints them as one JSON line at the end;
safetensors' own writer (Rust) is not seen by the hook, the config.json written beside it is."""

from __future__ import annotations

import json
import os
import sys
import time


def main(work: str) -> None:
    from rlhfkit.cli import app

    main_process = os.environ.get("RANK", "0") == "0"  # no accelerate state yet: the trainers make it
    writes: list[str] = []
    if not main_process:
        def audit(event, args):
            if event == "open" and args[0] is not None and not isinstance(args[0], int):
                mode, flags = args[1] or "r", args[2] or 0
                if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                    writes.append(str(args[0]))
            elif event in ("os.rename", "os.replace", "os.mkdir", "os.remove", "shutil.move"):
                writes.append(f"{event} {args[0]}")

        sys.addaudithook(audit)

    def cli(*args: str) -> None:
        t = time.perf_counter()
        app.main(list(args), standalone_mode=False)
        if main_process:
            print(f"TIME {args[0]} {time.perf_counter() - t:.1f}s", flush=True)

    common = ["--model", "tiny", "--mixed-precision", "no", "--lr", "1e-3", "--save-every", "2"]
    sft = ["sft", *common, "--data", f"{work}/sft.jsonl", "--batch-size", "2"]
    cli(*sft, "--out", f"{work}/sft2", "--max-steps", "4")
    cli(*sft, "--out", f"{work}/sft2_part", "--max-steps", "2")
    cli(*sft, "--out", f"{work}/sft2_part", "--max-steps", "4", "--resume", f"{work}/sft2_part")
    cli("reward", *common, "--data", f"{work}/prefs.jsonl", "--batch-size", "2", "--eval-fraction", "0.25",
        "--out", f"{work}/rm2", "--max-steps", "4")
    ppo = ["ppo", *common, "--model", f"{work}/sft2", "--reward-model", f"{work}/rm2", "--prompts", f"{work}/prompts.jsonl",
           "--batch-size", "2", "--minibatch-size", "1", "--max-new-tokens", "6", "--target-kl", "0.001"]
    cli(*ppo, "--out", f"{work}/ppo2", "--steps", "2", "--save-every", "1")
    cli(*ppo, "--out", f"{work}/ppo2_part", "--steps", "1", "--save-every", "1")
    cli(*ppo, "--out", f"{work}/ppo2_part", "--steps", "2", "--save-every", "1", "--resume", f"{work}/ppo2_part")
    if not main_process:
        # one write, on a line of its own: the launcher's unbuffered stdout lets the main process's prints land
        # between print()'s pieces ("TIME ppo 0.9sNON_MAIN_WRITES [...]" broke the test once)
        sys.stdout.write("\nNON_MAIN_WRITES " + json.dumps(writes) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
