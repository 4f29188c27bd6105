"""The pruning callbacks, built from ``conf/pruning/<kind>.yaml``.

``conf/pruning/<kind>.yaml`` -> :func:`validate_pruning` (one-line ConfigError before training) ->
:func:`build_pruning_callback` -> :class:`PruningCallback` driving the kind's schedule
(:data:`mhaexp.pruning.schedules.SCHEDULES`), or :class:`~mhaexp.pruning.l0_callback.L0Callback`.
Every pruning step is :func:`mhaexp.pruning.step.prune_step`; what is recorded and written is
:class:`~mhaexp.pruning.recorder.HeadPruningCallback`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from mhaexp.errors import ConfigError
from mhaexp.nn.model import ModelConfig
from mhaexp.pruning.config import PruningConfig, validate_pruning
from mhaexp.pruning.criteria import RolesProvider
from mhaexp.pruning.held_out import BatchSource, log_to_loggers, module_objective
from mhaexp.pruning.l0_callback import L0Callback
from mhaexp.pruning.recorder import HeadPruningCallback
from mhaexp.pruning.schedules import SCHEDULES, Head, Schedule
from mhaexp.pruning.step import Ranking, prune_step


def build_pruning_callback(
    cfg_pruning: PruningConfig | Mapping[str, Any] | None,
    model_cfg: ModelConfig,
    max_steps: int,
    run_dir: str | Path | None,
    batches: BatchSource = None,
    roles_provider: RolesProvider | None = None,
) -> pl.Callback | None:
    """The callback for ``cfg.pruning`` (``None`` for ``kind: none``).

    Args:
        batches: held-out batches for rankings and quality, or ``f(trainer) -> batches``; default:
            the first ``n_batches`` of ``trainer.datamodule.val_dataloader()``.
        roles_provider: ``f(model, batches) -> roles`` (see :func:`mhaexp.heads.importance.roles_by_head`),
            needed by ``criterion: role`` and used to label pruned heads in the logs.

    A PruningConfig is taken as checked (``RunConfig`` ran :func:`validate_pruning` on it); a mapping is
    checked here.
    """
    cfg = cfg_pruning if isinstance(cfg_pruning, PruningConfig) else validate_pruning(cfg_pruning, model_cfg, max_steps)
    if cfg.kind == "none":
        return None
    if cfg.kind == "l0":
        return L0Callback(cfg, model_cfg, max_steps, run_dir, batches, roles_provider)
    _check_roles(cfg, roles_provider)
    return PruningCallback(cfg, model_cfg, max_steps, run_dir, batches, roles_provider)


def _check_roles(cfg: PruningConfig, roles_provider: RolesProvider | None) -> None:
    if cfg.criterion == "role" and roles_provider is None:
        raise ConfigError(
            "pruning.criterion",
            "role",
            "needs a roles provider (build_pruning_callback(..., roles_provider=...)); "
            "choose importance, ablation, random or entropy",
        )


class PruningCallback(HeadPruningCallback):
    """Masks heads on the schedule of ``cfg.kind``: the schedule says when and how many, this callback
    is its :class:`~mhaexp.pruning.schedules.Pruner` (ranks, masks, evaluates and records)."""

    def __init__(
        self,
        cfg: PruningConfig,
        model_cfg: ModelConfig,
        max_steps: int,
        run_dir: str | Path | None = None,
        batches: BatchSource = None,
        roles_provider: RolesProvider | None = None,
    ) -> None:
        super().__init__(cfg, model_cfg, max_steps, run_dir, batches, roles_provider)
        self.schedule: Schedule = SCHEDULES[cfg.kind](cfg, self.total)
        self.target = self.schedule.target
        self._gates_before: dict[Head, float] = {}
        self._trainer: pl.Trainer | None = None
        self._module: pl.LightningModule | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        _check_roles(self.cfg, self.roles_provider)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.finished:
            self._trainer, self._module = trainer, pl_module
            self.schedule.on_step(self, trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.finished:
            self._trainer, self._module = trainer, pl_module
            self.schedule.at_end(self)
            self.finished = True
        self._finalize(trainer, pl_module)

    # ---- the Pruner the schedule drives ------------------------------------------------------
    def prune_to(self, target: int, reason: str, rescore: bool = True) -> list[Head]:
        trainer, pl_module = self._trainer, self._module
        assert trainer is not None and pl_module is not None, "prune_to runs inside a training hook"
        c = self.cfg
        model = pl_module.model
        batches = self._batches(trainer, pl_module)
        if not self.curve:
            self._point(trainer, pl_module, "start")
        roles = self._roles(pl_module, batches)
        ranking = Ranking(
            c.criterion,
            c.scope,
            c.min_heads_per_layer,
            c.normalize_by_layer,
            c.seed,
            roles if c.criterion == "role" else None,
            {"role_tiebreak": c.role_tiebreak, "max_rows": c.max_rows},
        )
        objective = module_objective(pl_module)
        if self.scores is None or rescore:
            self.scores = [s.tolist() for s in ranking.scores(model, batches, objective)]
        scores = [torch.tensor(s) for s in self.scores]  # kept as lists: they ride in the checkpoint
        self._gates_before = {h: float(model.attention_layers[h[0]].head_gate[h[1]]) for h in self._all_heads()}
        step = prune_step(
            model,
            batches,
            objective,
            self.pruned,
            target,
            ranking,
            scores,
            agree=lambda new: trainer.strategy.broadcast(new, src=0),  # every rank masks the same heads
        )
        new = step.new
        self.pruned = sorted(set(self.pruned) | set(new))
        point = self._point(trainer, pl_module, reason, quality=(step.val_loss, step.val_acc))
        self._record(trainer, new, roles, point, reason, {h: scores[h[0]][h[1]].item() for h in new})
        return new

    def stop_at_floor(self, heads: Sequence[Head]) -> None:
        assert self._trainer is not None and self._module is not None
        with torch.no_grad():
            for layer, head in heads:
                self._module.model.attention_layers[layer].head_gate[head] = self._gates_before[(layer, head)]
        self.pruned = sorted(set(self.pruned) - set(heads))
        self.curve[-1]["event"] += "_undone_below_floor"
        self.events[-1]["reason"] += "_undone_below_floor"
        log_to_loggers(
            self._trainer, {"pruning/stopped_at_floor": 1.0, "pruning/heads_pruned": float(len(self.pruned))}
        )
        self.finished = True

    def below_floor(self) -> bool:
        c = self.cfg
        if c.quality_floor is None:
            return False
        base = self.curve[0]["val_acc"]
        floor = c.quality_floor * base if c.floor_relative else c.quality_floor
        return self.curve[-1]["val_acc"] < floor

    def _all_heads(self) -> list[Head]:
        return [(i, h) for i, n in enumerate(self.sizes) for h in range(n)]
