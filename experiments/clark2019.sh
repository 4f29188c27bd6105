#!/usr/bin/env bash
# Clark et al. 2019: what a bidirectional encoder's heads attend to (BOS/sink, broad, syntax, clusters).
source "$(dirname "$0")/_lib.sh"
log=$(mktemp)
$BIN/mhaexp-train model=encoder model.n_layers=4 trainer.max_steps=${STEPS:-3000} logger.tags=[clark2019] | tee "$log"
run="$(run_dir_of "$log")"
# The same analysis on a treebank of your own: add conllu=<file.conllu>.
$BIN/mhaexp-analyze ckpt="$run/checkpoints/last.ckpt" out="$run/analysis_offline"
echo "see $run/analysis/analysis.md and $run/analysis_offline/"
