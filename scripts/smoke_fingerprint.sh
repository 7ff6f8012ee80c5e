#!/usr/bin/env bash
# Runs the smoke preset into a fresh folder and prints the sha256 of its winrates.json.
# Refactors that only move code must not change it (compare with the value from before the move).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)/smoke
.venv/bin/rlhfkit demo --preset smoke --out "$out" > "$out.log" 2>&1 || { tail -30 "$out.log"; exit 1; }
sha256sum "$out/winrates.json" | cut -d' ' -f1
# Baselines: b44eb32d... before issue 9's moves; 5906200c... from aa5f50b on (a deliberate fix, not a move: the
# smoke preset's system_prompt=None now applies).
echo "(baseline since commit aa5f50b: 5906200c33da5c02a20f40c4c1ceb4d95f9d45ce63eb6a3341d2dbf71424996f; b44eb32d... before it, changed on purpose: the smoke preset's system_prompt=None now applies)" >&2
