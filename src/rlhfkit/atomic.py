"""Files a run writes appear whole or not at all. Each is written under a temporary name in its own folder
and renamed over its target (``os.replace``, atomic on POSIX and Windows), so a run killed at any point
(kill -9, out of memory, a pre-empted machine) leaves the old file or the new one, never half of one. A
rename survives the process dying; it is not an fsync: after a power cut the file system may still lose
recent writes.

Temporary names start with a dot and end in ``.tmp<pid>`` (``.winrates.json.tmp4242``): no glob of a
run's files (``*.jsonl``, ``checkpoint-*``) picks one up, and two processes never share one.

``crash_point(name)`` marks the places where the kill -9 tests stop a run (``RLHFKIT_CRASH_AT``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

CRASH_ENV = "RLHFKIT_CRASH_AT"


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL when ``name`` matches the pattern in ``$RLHFKIT_CRASH_AT``
    (fnmatch, e.g. ``step:*/ppo:2`` or ``before-rename:*/prefs/agreement.json``): a deterministic
    kill -9 for the resume tests. Without the variable this does nothing."""
    pattern = os.environ.get(CRASH_ENV)
    if pattern and fnmatch.fnmatchcase(name, pattern):
        os.kill(os.getpid(), signal.SIGKILL)


def temp_name(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: a hidden name in the same folder (a
    rename across file systems would not be atomic)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to (for writers that take a path: torch.save,
    safetensors, savefig with an explicit format); on success it is renamed to ``path``, on an error
    removed. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        crash_point(f"before-rename:{path}")
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` through a temporary file and a rename. Returns ``path``."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding=encoding)
    return Path(path)


def atomic_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """``json.dumps(obj, indent=indent)`` and a newline, written atomically to ``path``."""
    return atomic_write(path, json.dumps(obj, indent=indent) + "\n")


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename the folder ``src`` to ``dst``; an existing ``dst`` is moved aside first and then removed."""
    old = dst.with_name(f".{dst.name}.old{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder to fill; on success it becomes ``path`` by one rename (a
    checkpoint folder exists whole or not at all), on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        crash_point(f"before-rename:{path}")
        _replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder; on success each file (or folder) in it is renamed into ``folder``
    one by one, replacing what is there: for writers that fill a folder holding other files too
    (``save_pretrained`` into a run directory). Each file lands whole; a kill between two renames leaves
    some new files beside some old ones, which is what a completion marker written afterwards is for."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".files.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for entry in sorted(tmp.iterdir()):
            crash_point(f"before-rename:{folder / entry.name}")
            if entry.is_dir():
                _replace_dir(entry, folder / entry.name)
            else:
                os.replace(entry, folder / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_LEFTOVER = re.compile(r"^\..+\.(tmp|old)\d+$")


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove what killed writers left under ``folder``: temporary files and folders (``.NAME.tmpPID``,
    a half-written checkpoint among them) never renamed into place. Call it only while nothing writes
    there. Returns what was removed."""
    found = [p for p in Path(folder).rglob(".*") if _LEFTOVER.match(p.name)]
    for p in found:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def read_jsonl_lines(path: str | os.PathLike) -> list[dict]:
    """The rows of an append-only log (metrics.jsonl): a last line cut off by a kill is dropped, a bad
    line anywhere else is an error naming the file and line."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines) and not line.endswith("\n"):
                break  # the half-written last line of a killed run
            raise ValueError(f"{path}:{n}: not a JSON object") from None
    return rows
