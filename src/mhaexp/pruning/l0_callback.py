"""Learnt head pruning during training: hard-concrete gates with an expected-L0 penalty.

Voita et al. 2019 ("Analyzing Multi-Head Self-Attention: Specialized Heads Do the Heavy Lifting, the Rest
Can Be Pruned", Sec. 6): a gate on each head's output (:mod:`mhaexp.pruning.l0`), ``l0_lambda * sum_h
P(z_h != 0)`` added to the training loss; at the end, heads whose deterministic gate is 0 are pruned and
open gates are folded into ``head_gate``. No schedule and no ranking: the penalty decides which heads go.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from mhaexp.errors import ConfigError
from mhaexp.pruning import l0 as l0mod
from mhaexp.pruning.recorder import HeadPruningCallback


class L0Callback(HeadPruningCallback):
    """Attaches the gates before the optimizer is built, adds the penalty, prunes the closed heads at the end."""

    _penalty_in_loss = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Before configure_optimizers (so the optimizer trains log_alpha) and before a resumed
        # checkpoint's state_dict is loaded (so the gates' values come back).
        c = self.cfg
        l0mod.attach_l0_gates(pl_module.model, c.temperature, tuple(c.stretch), c.log_alpha_init)
        if c.gate_lr is not None:
            # configure_optimizers reads it: the gates get their own parameter group at this learning rate.
            for name, _ in pl_module.model.named_parameters():
                if name.endswith("log_alpha"):
                    pl_module.param_lr[name] = float(c.gate_lr)
        extra = getattr(pl_module, "extra_losses", None)
        if isinstance(extra, dict):
            extra["l0_penalty"] = lambda: c.l0_lambda * l0mod.expected_l0(pl_module.model)
            self._penalty_in_loss = True
        elif trainer.world_size > 1:
            # The fallback's second backward would fight DDP's gradient hooks.
            raise ConfigError(
                "pruning.kind",
                "l0",
                "on several devices needs LMModule.extra_losses (the L0 penalty must be part of the training loss)",
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        model = pl_module.model
        pl_module.log("pruning/l0_open_heads", float(sum(l0mod.open_heads(model))), on_step=True, on_epoch=False)
        with torch.no_grad():
            expected = l0mod.expected_l0(model)
        pl_module.log("pruning/l0_expected_open", float(expected), on_step=True, on_epoch=False)
        if not self._penalty_in_loss:
            pl_module.log("train/l0_penalty", self.cfg.l0_lambda * float(expected), on_step=True, on_epoch=False)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._penalty_in_loss:
            return
        # Fallback while LMModule has no extra_losses: backpropagate the penalty on its own, scaled
        # as Lightning scales the loss (gradient accumulation, fp16 loss scaling).
        penalty = self.cfg.l0_lambda * l0mod.expected_l0(pl_module.model) / trainer.accumulate_grad_batches
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            penalty = scaler.scale(penalty)
        penalty.backward()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Voita et al. 2019: heads whose deterministic gate is 0 are pruned; open gates are folded in."""
        model = pl_module.model
        extra = getattr(pl_module, "extra_losses", None)
        if isinstance(extra, dict):
            extra.pop("l0_penalty", None)
        closed = l0mod.fold_l0_gates(model)
        new = [h for h in closed if h not in set(self.pruned)]
        self.pruned = sorted(set(self.pruned) | set(closed))
        batches = self._batches(trainer, pl_module)
        point = self._point(trainer, pl_module, "l0_end")
        self._record(trainer, new, self._roles(pl_module, batches), point, "l0_end")
        self.finished = True
        self._finalize(trainer, pl_module)

    def _label(self) -> str:
        return "l0"
