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


def split_held_out(batches: Sequence[Batch]) -> tuple[list[Batch], list[Batch]]:
    """Two disjoint halves of held-out ``batches``: (rank on these, measure on those).

    Split by batch; a single batch is split by its rows. A ranking fitted to the batches a pruning curve is
    measured on flatters the curve (it picks heads that happen not to matter on exactly those sequences).
    """
    batches = list(batches)
    if len(batches) >= 2:
        half = len(batches) // 2
        return batches[:half], batches[half:]
    if not batches:
        raise ValueError("the held-out data gave no batches")
    (batch,) = batches
    rows = next(v.shape[0] for v in batch.values() if isinstance(v, Tensor))
    if rows < 2:
        raise ValueError("one held-out sequence cannot be split into a ranking half and a measuring half")

    def rows_of(part: slice) -> Batch:
        return {k: v[part] if isinstance(v, Tensor) and v.shape[:1] == (rows,) else v for k, v in batch.items()}

    return [rows_of(slice(0, rows // 2))], [rows_of(slice(rows // 2, rows))]
