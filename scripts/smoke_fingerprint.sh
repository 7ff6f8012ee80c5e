#!/usr/bin/env bash
# Runs the smoke preset into a fresh folder and prints the sha256 of its winrates.json.
# Refactors that only move code must not change it (compare with the value from before the move).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)/smoke
.venv/bin/rlhfkit demo --preset smoke --out "$out" > "$out.log" 2>&1 || { tail -30 "$out.log"; exit 1; }
sha256sum "$out/winrates.json" | cut -d' ' -f1
