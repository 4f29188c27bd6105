"""What every pruning callback shares: its state in checkpoints, the quality curve, the record of each
pruning step, and the outputs written at the end of training.

Masking sets a head's ``head_gate`` to 0: the weights stay, the head adds nothing, and its
gradients are 0. ``head_gate`` is a buffer, so every checkpoint carries the mask; the callback's own
state (pruned list, curve, iteration, cached scores) rides along in the checkpoint's callback
section and is restored on resume. At the end of training a pruning callback writes

* ``pruning_curve.csv`` and ``pruning_curve.png`` (quality vs fraction pruned) in the run directory,
  plus a W&B line plot and image when a W&B logger is attached;
* ``pruning.json`` (every pruning step: heads, roles, quality; the physical-removal report);
* ``pruned.ckpt``: the physically smaller model (``physical: true``), loadable with
  ``LMModule.load_from_checkpoint`` or :func:`mhaexp.pruning.load_model`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from mhaexp.checkpoint import atomic_save
from mhaexp.errors import ConfigError
from mhaexp.heads.evaluation import evaluate
from mhaexp.nn.model import ModelConfig
from mhaexp.nn.objectives import Batch
from mhaexp.pruning.config import PruningConfig
from mhaexp.pruning.criteria import RolesProvider, roles_by_head
from mhaexp.pruning.curves import curve_xy, plot_pruning_curves, write_curve_csv
from mhaexp.pruning.held_out import BatchSource, held_out_batches, log_to_loggers, module_objective
from mhaexp.pruning.schedules import Head
from mhaexp.pruning.surgery import apply_mask, checkpoint_for, format_heads, masked_heads, prune_heads
from mhaexp.rundir import PRUNED_CHECKPOINT, PRUNING_CURVE_FILE, PRUNING_CURVE_PNG, PRUNING_FILE


class HeadPruningCallback(pl.Callback):
    """The base of :class:`~mhaexp.pruning.callback.PruningCallback` (schedules) and
    :class:`~mhaexp.pruning.l0_callback.L0Callback`; see the module docstring for the outputs."""

    def __init__(
        self,
        cfg: PruningConfig,
        model_cfg: ModelConfig,
        max_steps: int,
        run_dir: str | Path | None = None,
        batches: BatchSource = None,
        roles_provider: RolesProvider | None = None,
    ) -> None:
        self.cfg = cfg
        self.max_steps = max_steps
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.sizes = [model_cfg.heads_in_layer(i)[0] for i in range(model_cfg.n_layers)]
        self.total = sum(self.sizes)
        self.batch_source = batches
        self.roles_provider = roles_provider
        self.pruned: list[Head] = []
        self.curve: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.iteration = 0
        self.finished = False
        self.scores: list[list[float]] | None = None
        self.report: dict[str, Any] | None = None
        self._held_out: list[Batch] | None = None

    # ---- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "pruned": [list(h) for h in self.pruned],
            "curve": self.curve,
            "events": self.events,
            "iteration": self.iteration,
            "finished": self.finished,
            "scores": self.scores,
            "kind": self.cfg.kind,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned = [(int(a), int(b)) for a, b in state_dict.get("pruned", [])]
        self.curve = list(state_dict.get("curve", []))
        self.events = list(state_dict.get("events", []))
        self.iteration = int(state_dict.get("iteration", 0))
        self.finished = bool(state_dict.get("finished", False))
        self.scores = state_dict.get("scores")

    # ---- lifecycle ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = pl_module.model
        sizes = [layer.n_heads for layer in model.attention_layers]
        if sizes != self.sizes:
            raise ConfigError("model", sizes, f"the pruning schedule was built for heads per layer {self.sizes}")
        # Heads masked in an init_from checkpoint are pruned already; masks restored on resume agree.
        known = set(self.pruned)
        self.pruned += [h for h in masked_heads(model) if h not in known]
        apply_mask(model, self.pruned)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.curve:
            self._point(trainer, pl_module, "start")

    # ---- the record --------------------------------------------------------------------------
    def _batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Batch]:
        if self._held_out is None:
            self._held_out = held_out_batches(trainer, self.cfg.n_batches, pl_module.device, self.batch_source)
        return self._held_out

    def _roles(self, pl_module: pl.LightningModule, batches: list[Batch]) -> dict[Head, list[str]]:
        if self.roles_provider is None:
            return {}
        return roles_by_head(self.roles_provider(pl_module.model, batches))

    def _point(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        label: str,
        quality: tuple[float, float] | None = None,
    ) -> dict[str, Any]:
        """A curve point for the model as it is; ``quality``: its (loss, acc) when just measured."""
        if quality is None:
            quality = evaluate(pl_module.model, self._batches(trainer, pl_module), module_objective(pl_module))
        loss, acc = quality
        n = len(self.pruned)
        point = {
            "step": trainer.global_step,
            "fraction_pruned": n / self.total,
            "heads_pruned": n,
            "heads_remaining": self.total - n,
            "val_loss": loss,
            "val_acc": acc,
            "criterion": self._label(),
            "event": label,
        }
        self.curve.append(point)
        return point

    def _label(self) -> str:
        return f"{self.cfg.kind}/{self.cfg.criterion}"

    def _record(
        self,
        trainer: pl.Trainer,
        new: Sequence[Head],
        roles: dict[Head, list[str]],
        point: dict[str, Any],
        reason: str,
        scores: dict[Head, float] | None = None,
    ) -> None:
        per_layer = [n - sum(1 for layer, _ in self.pruned if layer == i) for i, n in enumerate(self.sizes)]
        event = {
            "step": trainer.global_step,
            "reason": reason,
            "heads": format_heads(new),
            "roles": {format_heads([h]): roles.get(h, []) for h in new},
            "scores": {format_heads([h]): s for h, s in (scores or {}).items()},
            "heads_remaining_per_layer": per_layer,
            "val_loss": point["val_loss"],
            "val_acc": point["val_acc"],
            "fraction_pruned": point["fraction_pruned"],
        }
        self.events.append(event)
        metrics: dict[str, Any] = {
            "pruning/heads_pruned": float(len(self.pruned)),
            "pruning/heads_remaining": float(self.total - len(self.pruned)),
            "pruning/fraction_pruned": point["fraction_pruned"],
            "pruning/val_loss": point["val_loss"],
            "pruning/val_acc": point["val_acc"],
            "pruning/pruned_heads": event["heads"],
        }
        metrics.update({f"pruning/heads_remaining/L{i}": float(n) for i, n in enumerate(per_layer)})
        if roles:
            metrics["pruning/pruned_roles"] = ";".join(f"{k}={'+'.join(v) or '-'}" for k, v in event["roles"].items())
        log_to_loggers(trainer, metrics)

    # ---- outputs -----------------------------------------------------------------------------
    def _finalize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = pl_module.model
        report = None
        if self.cfg.physical:
            # Every rank builds it (cheap); only rank 0 writes.
            small, rep = prune_heads(model, self.pruned, self.cfg.uneven)
            report = rep.to_dict()
            self.report = report
            log_to_loggers(
                trainer,
                {
                    "pruning/params_before": float(rep.params_before),
                    "pruning/params_after": float(rep.params_after),
                    "pruning/heads_kept_masked": float(len(rep.padded)),
                },
            )
        if not trainer.is_global_zero or self.run_dir is None:
            return
        run_dir = self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.cfg.physical:
            hp = dict(pl_module.hparams) if hasattr(pl_module, "hparams") else {}
            meta = {"pruning": {"config": asdict(self.cfg), "pruned": format_heads(self.pruned), "report": report}}
            base = {"global_step": trainer.global_step, "epoch": trainer.current_epoch}
            atomic_save(checkpoint_for(small, base, hparams=hp, extra=meta), run_dir / PRUNED_CHECKPOINT)
        write_curve_csv(self.curve, run_dir / PRUNING_CURVE_FILE)
        png = plot_pruning_curves(
            {self._label(): curve_xy(self.curve)},
            run_dir / PRUNING_CURVE_PNG,
            title=f"Pruning curve ({self._label()})",
        )
        summary = {
            "config": asdict(self.cfg),
            "pruned": format_heads(self.pruned),
            "events": self.events,
            "curve": self.curve,
            "physical": report,
        }
        (run_dir / PRUNING_FILE).write_text(json.dumps(summary, indent=2))
        for run in _wandb_experiments(trainer):
            log_curve_to_wandb(run, self.curve, png, self.events)


def _wandb_experiments(trainer: pl.Trainer) -> list[Any]:
    from pytorch_lightning.loggers import WandbLogger

    return [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)] if trainer.is_global_zero else []


def log_curve_to_wandb(
    run: Any, curve: Sequence[Mapping[str, Any]], png: Path | None = None, events: Sequence[Mapping[str, Any]] = ()
) -> None:
    """A W&B line plot of accuracy and loss vs fraction pruned, the PNG, and a table of pruned heads."""
    import wandb

    cols = ["fraction_pruned", "val_acc", "val_loss", "heads_pruned", "step"]
    table = wandb.Table(columns=cols, data=[[float(p[c]) for c in cols] for p in curve])
    payload: dict[str, Any] = {
        "pruning/curve_acc": wandb.plot.line(table, "fraction_pruned", "val_acc", title="val acc vs fraction pruned"),
        "pruning/curve_loss": wandb.plot.line(
            table, "fraction_pruned", "val_loss", title="val loss vs fraction pruned"
        ),
    }
    if png is not None:
        payload["pruning/curve_image"] = wandb.Image(str(png))
    rows = [
        [e["step"], h, "+".join(e["roles"].get(h, [])), e["val_acc"], e["reason"]]
        for e in events
        for h in (e["heads"].split(",") if e["heads"] else [])
    ]
    payload["pruning/pruned_heads"] = wandb.Table(
        columns=["step", "head", "roles", "val_acc_after", "reason"], data=rows
    )
    run.log(payload)
