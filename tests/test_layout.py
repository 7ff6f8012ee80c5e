"""The layering of rlhfkit's modules: lower layers never import higher ones. Each check runs in a fresh
interpreter, since this process has long since imported everything."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_after(module: str) -> set[str]:
    """The rlhfkit modules loaded by ``import <module>`` in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('rlhfkit')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", ["rlhfkit.models", "rlhfkit.forward"])
def test_models_and_forward_import_neither_sampling_nor_training(module):
    # forward (encoding, forward passes) sits under models and rollout; rollout samples, train/ trains
    loaded = imported_after(module)
    assert module in loaded
    assert not {m for m in loaded if m == "rlhfkit.rollout" or m.startswith("rlhfkit.train")}, sorted(loaded)


def test_pipeline_cli_does_not_import_cli():
    # cli.py mounts pipeline_cli; both build on cli_options, so the two never import each other in a cycle
    loaded = imported_after("rlhfkit.pipeline_cli")
    assert "rlhfkit.cli_options" in loaded
    assert "rlhfkit.cli" not in loaded, sorted(loaded)


def test_the_command_line_starts_without_torch():
    # `rlhfkit --help` and every command's option parsing stay light; torch loads when a command runs
    code = "import sys, rlhfkit.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
