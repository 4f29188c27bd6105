#!/usr/bin/env bash
# Olsson et al. 2022: induction heads form in a phase change, with in-context learning
# Writes studies/olsson2022/{verdict.json,report.md}. Options: --steps N --seeds N --jobs N --out DIR --verdict-only,
# and mhaexp-train overrides for every job (trainer=gpu). STUDY_SMOKE=1: a few dozen steps, proves it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/mhaexp-study ] || make install
exec .venv/bin/mhaexp-study olsson2022 "$@"
