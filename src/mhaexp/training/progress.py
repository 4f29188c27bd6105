"""The terminal progress bar of a training job: optimizer steps against ``trainer.max_steps``.

Lightning draws its Rich bar per epoch ("Epoch 0/-2 ━━━ 60/60"): with ``max_epochs: -1`` (our runs
stop at ``max_steps``) the epoch count is meaningless and the bar restarts at each pass over the data.
A step-bounded run shows "Steps 1240/1500" instead, continuing across epochs and after a resume.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

STEPS_DESCRIPTION = "Steps"


class StepProgressBar(RichProgressBar):
    """Lightning's Rich bar, counting optimizer steps up to ``max_steps`` when the run is bounded by steps
    (``max_epochs`` -1 or None); an epoch-bounded run keeps Lightning's epoch bar."""

    def _by_steps(self) -> bool:
        t = self.trainer
        return t.max_steps is not None and t.max_steps > 0 and t.max_epochs in (-1, None)

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._by_steps() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._by_steps():
            return super()._get_train_description(current_epoch)
        # Padded like Lightning's: the validation bar's longer label would make the line flicker.
        return f"{STEPS_DESCRIPTION:{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._by_steps() and self.train_progress_bar_id is not None:
            return  # one bar for the whole run: a new pass over the data is no restart
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._by_steps():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if not self.is_disabled and self.train_progress_bar_id is None:  # resumed mid-epoch
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)  # the step, not this epoch's batch
        self._update_metrics(trainer, pl_module)
        self.refresh()
