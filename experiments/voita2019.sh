#!/usr/bin/env bash
# Voita et al. 2019: roles of encoder heads, then L0 pruning of heads from the trained model.
source "$(dirname "$0")/_lib.sh"
log=$(mktemp)
$BIN/mhaexp-train model=encoder model.n_layers=4 trainer.max_steps=${STEPS:-3000} logger.tags=[voita2019] | tee "$log"
ckpt="$(run_dir_of "$log")/checkpoints/last.ckpt"
# Hard-concrete gates (temperature 1/3, stretch (-0.1, 1.1)) with the L0 penalty; lambda trades heads for loss.
$BIN/mhaexp-train -m model=encoder model.n_layers=4 init_from="$ckpt" pruning=l0 \
  pruning.l0_lambda=0.003,0.01,0.03 trainer.max_steps=${PRUNE_STEPS:-1000} logger.tags=[voita2019,l0]
