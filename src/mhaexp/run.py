"""One training job: data, model, loggers, callbacks, ``Trainer.fit``, and the closing report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from mhaexp.callbacks import RunRecord
from mhaexp.config import instantiate_plain, validate
from mhaexp.lightning_module import LMModule
from mhaexp.loggers import build_loggers, wandb_always_finished, wandb_run_dir


def train(cfg: DictConfig, run_dir: Path, group: str | None = None) -> dict[str, Any]:
    """Train one job of ``cfg`` into ``run_dir``; return its summary."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    _, model_cfg = validate(cfg)
    datamodule = instantiate_plain(cfg.data)
    tok = datamodule.tokenizer
    module = LMModule(model_cfg, dict(cfg.optim), pad_id=tok.pad_id, mask_id=tok.mask_id, seed=cfg.seed)
    record = RunRecord(run_dir)
    every = int(cfg.trainer.get("val_check_interval") or 250)
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step}", auto_insert_metric_name=False,
                        every_n_train_steps=every, save_last=True, save_top_k=1),
        record,
    ]
    loggers = build_loggers(cfg, run_dir, group)
    # A progress bar redrawn into a log file or a pipe is noise; keep it for terminals.
    progress = bool(cfg.trainer.get("enable_progress_bar", True)) and sys.stdout.isatty()
    trainer = instantiate_plain(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                default_root_dir=str(run_dir), enable_progress_bar=progress)
    with wandb_always_finished():
        trainer.fit(module, datamodule=datamodule)
    if trainer.is_global_zero:
        report(run_dir, record.summary)
    return record.summary


def report(run_dir: Path, summary: dict[str, Any]) -> None:
    """Where the run went and how to look at it: the last thing `make train` prints."""
    lines = [f"run directory : {run_dir}"]
    if summary.get("best_val_loss") is not None:
        lines.append(f"best val loss : {summary['best_val_loss']:.4f}")
    wb = wandb_run_dir(run_dir)
    if wb is not None:
        wandb_bin = Path(sys.executable).parent / "wandb"
        lines += [f"W&B run       : {wb}  (offline)" if "offline-run" in wb.name else f"W&B run       : {wb}",
                  f"  browse      : {wandb_bin} leet {wb}", f"  upload      : {wandb_bin} sync {wb}"]
    print("\n".join(lines))
