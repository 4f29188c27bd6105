#!/usr/bin/env bash
# Ainslie et al. 2023: MHA -> GQA by mean-pooling K/V heads, then uptraining with a fraction of the steps.
source "$(dirname "$0")/_lib.sh"
STEPS=${STEPS:-1500}
log=$(mktemp)
$BIN/mhaexp-train trainer.max_steps=$STEPS hydra.run.dir=runs/ainslie2023/mha | tee "$log"
ckpt=runs/ainslie2023/mha/checkpoints/last.ckpt
UP=$((STEPS / 20))   # the paper uptrains with about 5% of the original steps
$BIN/mhaexp-train -m init_from=$ckpt model.n_kv_heads=1,2,4 gqa_init=mean,first trainer.max_steps=$UP \
  hydra.sweep.dir=multirun/ainslie2023_uptrain
$BIN/mhaexp-train -m model.n_kv_heads=1,2,4 trainer.max_steps=$STEPS hydra.sweep.dir=multirun/ainslie2023_scratch
$BIN/mhaexp-compare multirun/ainslie2023_uptrain multirun/ainslie2023_scratch
