"""Callbacks that keep a run's own record: sizes at the start, best metrics at the end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from mhaexp.data.tokenizers import save_tokenizer
from mhaexp.rundir import ANALYSIS_DIR, CHECKPOINT_DIR, SUMMARY_FILE, TOKENIZER_DIR
from mhaexp.training.checkpointing import RunCheckpoint
from mhaexp.training.loggers import METRICS_ROWS_KEY, RunCSVLogger, RunCSVWriter

RECORD_KEY = "run_record"  # in a checkpoint: the best val loss and the latest metrics up to it


def checkpoint_steps(trainer: pl.Trainer, run_dir: Path) -> dict[str, int]:
    """``{path relative to the run directory: global step}`` of the checkpoints this process wrote that are
    still there (:class:`~mhaexp.training.checkpointing.RunCheckpoint` keeps the steps)."""
    out: dict[str, int] = {}
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, RunCheckpoint):
            for name, step in cb.saved_steps.items():
                if (run_dir / CHECKPOINT_DIR / name).is_file():
                    out[f"{CHECKPOINT_DIR}/{name}"] = step
    return dict(sorted(out.items()))


class RunRecord(pl.Callback):
    """Logs parameter counts and KV-cache size once, tracks the best val loss, writes ``summary.json``
    (with the step each checkpoint holds);
    saves the data's tokenizer into ``tokenizer/`` so the checkpoints decode without the data.

    The summary is what ``mhaexp-compare`` reads first, and what W&B shows as the run summary.

    Each checkpoint carries what a resumed run needs to end with the same record: the best val loss and
    latest metrics so far, and the number of rows ``metrics.csv`` held (see :func:`csv_logger`).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.best_val_loss = math.inf
        self.summary: dict[str, Any] = {}
        self._restored: dict[str, float] = {}  # the latest metrics a resumed run's checkpoint held

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model, cfg = pl_module.model, pl_module.model_cfg
        counts = model.param_counts()
        self.summary.update({f"params/{k}": v for k, v in counts.items()})
        self.summary["kv_cache_bytes_per_token"] = cfg.kv_cache_bytes_per_token(2)
        self.summary["n_heads_total"] = sum(cfg.heads_in_layer(i)[0] for i in range(cfg.n_layers))
        # How the job ran: parallel sweep jobs share the cores out (mhaexp.training.parallel).
        self.summary["torch_threads"] = torch.get_num_threads()
        # A seed repeats its numbers bit for bit only on the same torch build and CPU kernels: another
        # machine's floating-point path trains another way from the same seed, as another seed would.
        self.summary["torch_version"] = torch.__version__
        self.summary["cpu_kernels"] = torch.backends.cpu.get_cpu_capability()
        for logger in trainer.loggers:
            logger.log_hyperparams(self.summary)
        self._to_wandb(trainer, self.summary)
        datamodule = getattr(trainer, "datamodule", None)
        if trainer.is_global_zero and datamodule is not None:  # after prepare_data: a BPE is trained by now
            save_tokenizer(datamodule.tokenizer, self.run_dir / TOKENIZER_DIR)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        val = trainer.callback_metrics.get("val/loss")
        if val is not None and float(val) < self.best_val_loss:
            self.best_val_loss = float(val)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger) and isinstance(logger.experiment, RunCSVWriter):
                logger.save()  # the rows logged so far reach the file before they are counted
                checkpoint[METRICS_ROWS_KEY] = logger.experiment.rows
        checkpoint[RECORD_KEY] = {"best_val_loss": self.best_val_loss, "last": self._latest(trainer)}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        saved = checkpoint.get(RECORD_KEY)
        if saved:
            self.best_val_loss = float(saved["best_val_loss"])
            self._restored = dict(saved["last"])

    def _latest(self, trainer: pl.Trainer) -> dict[str, float]:
        """The latest value of every scalar logged so far (a resumed run that trains no further logs none)."""
        return {**self._restored, **{k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.summary.update(self._latest(trainer))
        self.summary["best_val_loss"] = self.best_val_loss if math.isfinite(self.best_val_loss) else None
        self.summary["global_step"] = trainer.global_step
        # The step each checkpoint holds ("checkpoints/last.ckpt": 700), for those this process wrote.
        self.summary["checkpoint_steps"] = checkpoint_steps(trainer, self.run_dir)
        analysis = self.run_dir / ANALYSIS_DIR / SUMMARY_FILE
        if analysis.is_file():  # heads per role at the end, from the analysis callback
            self.summary.update(json.loads(analysis.read_text()))
        self._to_wandb(trainer, {"best_val_loss": self.summary["best_val_loss"]})
        if trainer.is_global_zero:
            self.write()

    def write(self) -> None:
        path = self.run_dir / SUMMARY_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.summary, indent=2, sort_keys=True))
        tmp.replace(path)

    @staticmethod
    def _to_wandb(trainer: pl.Trainer, values: dict[str, Any]) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(values)
