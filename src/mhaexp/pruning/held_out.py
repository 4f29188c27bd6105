"""What a callback that measures a model during training needs: held-out batches, the module's own
objective, and a way to log where ``self.log`` is not allowed. Shared by the pruning callbacks and
``init_from``'s quality check (:mod:`mhaexp.training.init_from`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from mhaexp.nn.objectives import Batch, Objective, causal_lm_objective

BatchSource = Sequence[Batch] | Callable[[pl.Trainer], Sequence[Batch]] | None


def module_objective(pl_module: pl.LightningModule) -> Objective:
    """The module's own objective with validation's salts, so masked-LM masks match ``val/loss``."""
    if hasattr(pl_module, "inputs_and_targets"):
        return lambda batch, i: pl_module.inputs_and_targets(batch, salt=-1 - i)
    return causal_lm_objective


def held_out_batches(trainer: pl.Trainer, n: int, device: torch.device, source: BatchSource = None) -> list[Batch]:
    """``n`` held-out batches on ``device``: from ``source`` or the datamodule's validation loader."""
    if callable(source):
        source = source(trainer)
    if source is None:
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "val_dataloader"):
            raise ValueError("pruning needs held-out batches: give batches= or train with a datamodule")
        source = dm.val_dataloader()
    out = []
    for batch in source:
        out.append({k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()})
        if len(out) >= n:
            break
    if not out:
        raise ValueError("the held-out data gave no batches")
    return out


def log_to_loggers(trainer: pl.Trainer, metrics: dict[str, Any], step: int | None = None) -> None:
    """Straight to the loggers: pruning also happens where ``self.log`` is not allowed (train end)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step if step is None else step)
