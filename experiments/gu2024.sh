#!/usr/bin/env bash
# Gu et al. 2024: attention sinks are absent at initialization and emerge during training
# Writes studies/gu2024/{verdict.json,report.md}. Options: --steps N --seeds N --jobs N --out DIR --verdict-only,
# and mhaexp-train overrides for every job (trainer=gpu). STUDY_SMOKE=1: a few dozen steps, proves it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/mhaexp-study ] || make install
exec .venv/bin/mhaexp-study gu2024 "$@"
