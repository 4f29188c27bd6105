"""``init_from=<ckpt>``: start a run from another run's weights, and measure what the conversion cost.

The K/V head conversion itself (MHA -> GQA/MQA, Ainslie et al. 2023) is :mod:`mhaexp.pruning.surgery`;
this module is the training side: the callback that scores the source and the converted model on the
same held-out batches before the first step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from mhaexp.heads.importance import evaluate
from mhaexp.pruning.held_out import BatchSource, held_out_batches, log_to_loggers, module_objective
from mhaexp.rundir import INIT_CONVERSION_FILE
from mhaexp.training.module import load_module


class InitQualityCallback(pl.Callback):
    """Logs quality before and after ``init_from`` conversion (e.g. MHA -> GQA mean-pooling).

    At the start of a fresh fit: ``init/source_val_loss|acc`` (the checkpoint's own model) and
    ``init/converted_val_loss|acc`` (the model just built from it), on the same held-out batches;
    also written to ``init_conversion.json`` in the run directory.
    """

    def __init__(
        self,
        init_from: str | Path,
        report: dict[str, Any] | None = None,
        run_dir: str | Path | None = None,
        n_batches: int = 4,
        batches: BatchSource = None,
    ) -> None:
        self.init_from = str(init_from)
        self.report = dict(report or {})
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.n_batches = n_batches
        self.batch_source = batches
        self.result: dict[str, Any] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > 0:  # a resumed run measured this when it started
            return
        batches = held_out_batches(trainer, self.n_batches, pl_module.device, self.batch_source)
        source = load_module(self.init_from, "init_from").to(pl_module.device)
        s_loss, s_acc = evaluate(source.model, batches, module_objective(source))
        del source
        c_loss, c_acc = evaluate(pl_module.model, batches, module_objective(pl_module))
        self.result = {
            "init/source_val_loss": s_loss,
            "init/source_val_acc": s_acc,
            "init/converted_val_loss": c_loss,
            "init/converted_val_acc": c_acc,
        }
        log_to_loggers(trainer, self.result, step=0)
        if trainer.is_global_zero and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / INIT_CONVERSION_FILE).write_text(json.dumps({**self.report, **self.result}, indent=2))
