#!/usr/bin/env bash
# Ainslie et al. 2023: mean-pooled MHA -> GQA conversion and uptraining
# Writes studies/ainslie2023/{verdict.json,report.md}. Options: --steps N --seeds N --jobs N --out DIR --verdict-only,
# and mhaexp-train overrides for every job (trainer=gpu). STUDY_SMOKE=1: a few dozen steps, proves it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/mhaexp-study ] || make install
exec .venv/bin/mhaexp-study ainslie2023 "$@"
