#!/usr/bin/env bash
# Olsson et al. 2022: a 2-layer attention-only model forms induction heads; a 1-layer one cannot.
source "$(dirname "$0")/_lib.sh"
$BIN/mhaexp-train -m experiment=induction model.n_layers=1,2 trainer.max_steps=${STEPS:-1500} \
  hydra.sweep.dir=multirun/olsson2022
$BIN/mhaexp-compare multirun/olsson2022
