#!/usr/bin/env bash
# Michel et al. 2019: many heads can go, and importance says which
# Writes studies/michel2019/{verdict.json,report.md}. Options: --steps N --seeds N --jobs N --out DIR --verdict-only,
# and mhaexp-train overrides for every job (trainer=gpu). STUDY_SMOKE=1: a few dozen steps, proves it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/mhaexp-study ] || make install
exec .venv/bin/mhaexp-study michel2019 "$@"
