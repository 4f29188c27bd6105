#!/usr/bin/env bash
# Fixed-width head-count sweep over 3 seeds: where do more heads stop paying?
source "$(dirname "$0")/_lib.sh"
$BIN/mhaexp-train -m experiment=head_count_sweep hydra.sweep.dir=multirun/head_count_sweep
$BIN/mhaexp-compare multirun/head_count_sweep
