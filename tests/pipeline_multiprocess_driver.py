"""Run under ``accelerate launch --config_file examples/accelerate/cpu_2proc.yaml`` by
tests/test_pipeline_multiprocess.py: ``rlhfkit demo --preset smoke --out RUN`` (arguments: RUN LOG). Every process records each
file under RUN it opens for writing, renames, creates or removes (an audit hook; safetensors' own writer,
in Rust, is not seen, the config.json written beside it is) and writes them, at the end, as JSON to
``LOG.<rank>.json`` (a list of [event, path, ...]); and each ``Processes.map_parts`` call (the split scoring
passes) as [what fn is, items, start, stop of this process's part] to ``LOG.<rank>.parts.json``."""

from __future__ import annotations

import json
import os
import sys


def main(run: str, log: str) -> None:
    from rlhfkit.cli import app
    from rlhfkit.processes import Processes

    rank = os.environ.get("RANK", "0")
    root = os.path.abspath(run)
    events: list[list[str]] = []

    def audit(event, args):
        if event == "open" and isinstance(args[0], (str, os.PathLike)):
            mode, flags = args[1] or "r", args[2] or 0
            if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                events.append([event, os.path.abspath(args[0])])
        elif event in ("os.rename", "os.replace"):
            events.append([event, os.path.abspath(args[0]), os.path.abspath(args[1])])
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "shutil.move") and isinstance(args[0], (str, os.PathLike)):
            events.append([event, os.path.abspath(args[0])])

    parts: list[list] = []
    map_parts = Processes.map_parts

    def recorded(self, fn, items, align=1):
        parts.append([getattr(fn, "__qualname__", repr(fn)), len(items), *self.part(len(items), align)])
        return map_parts(self, fn, items, align)

    Processes.map_parts = recorded
    sys.addaudithook(audit)
    app.main(["demo", "--preset", "smoke", "--out", run], standalone_mode=False)
    mine = [e for e in events if any(p == root or p.startswith(root + os.sep) for p in e[1:])]
    with open(f"{log}.{rank}.json", "w") as f:  # outside the run: after the audit, not in it
        json.dump(mine, f)
    with open(f"{log}.{rank}.parts.json", "w") as f:
        json.dump(parts, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
