#!/usr/bin/env bash
# Michel et al. 2019: prune heads iteratively by gradient importance, and by random order as the baseline.
source "$(dirname "$0")/_lib.sh"
log=$(mktemp)
$BIN/mhaexp-train trainer.max_steps=${STEPS:-1500} logger.tags=[michel2019] | tee "$log"
ckpt="$(run_dir_of "$log")/checkpoints/last.ckpt"
$BIN/mhaexp-train -m init_from="$ckpt" pruning=iterative pruning.fraction=0.9 pruning.at_step=0 \
  pruning.criterion=importance,random,ablation trainer.max_steps=1 analysis=off \
  hydra.sweep.dir=multirun/michel2019 logger.tags=[michel2019,pruning]
$BIN/mhaexp-compare multirun/michel2019
