#!/usr/bin/env bash
# Head count at fixed width: does the gain per doubling of heads shrink?
# Writes studies/head_count/{verdict.json,report.md}. Options: --steps N --seeds N --jobs N --out DIR --verdict-only,
# and mhaexp-train overrides for every job (trainer=gpu). STUDY_SMOKE=1: a few dozen steps, proves it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/mhaexp-study ] || make install
exec .venv/bin/mhaexp-study head_count "$@"
