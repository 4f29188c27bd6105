#!/usr/bin/env bash
# Clark et al. 2019: attention to [SEP], broad heads, syntactic heads, heads of a layer alike
# Writes studies/clark2019/{verdict.json,report.md}. Options: --steps N --seeds N --jobs N --out DIR --verdict-only,
# and mhaexp-train overrides for every job (trainer=gpu). STUDY_SMOKE=1: a few dozen steps, proves it runs.
# --model <BERT dir or hub name> [conllu=<treebank.conllu>]: the four measurements on a pretrained model.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/mhaexp-study ] || make install
exec .venv/bin/mhaexp-study clark2019 "$@"
