#!/usr/bin/env bash
# Wu et al. 2024: retrieval heads exist, are sparse, and masking them breaks needle retrieval
# Writes studies/wu2024/{verdict.json,report.md}. Options: --steps N --seeds N --jobs N --out DIR --verdict-only,
# and mhaexp-train overrides for every job (trainer=gpu). STUDY_SMOKE=1: a few dozen steps, proves it runs.
# --model <Qwen2/Llama save_pretrained dir or hub name>: the same claims on that pretrained model instead.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/mhaexp-study ] || make install
exec .venv/bin/mhaexp-study wu2024 "$@"
