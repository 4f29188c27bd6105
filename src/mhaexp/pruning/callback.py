"""The pruning callback: masks heads during training on a schedule, records and saves the result.

``conf/pruning/<kind>.yaml`` -> :func:`validate_pruning` (one-line ConfigError before training) ->
:func:`build_pruning_callback` -> :class:`PruningCallback`.

Masking sets a head's ``head_gate`` to 0: the weights stay, the head adds nothing, and its
gradients are 0. ``head_gate`` is a buffer, so every checkpoint carries the mask; the callback's own
state (pruned list, curve, iteration, cached scores) rides along in the checkpoint's callback
section and is restored on resume. At the end of training the callback writes

* ``pruning_curve.csv`` and ``pruning_curve.png`` (quality vs fraction pruned) in the run directory,
  plus a W&B line plot and image when a W&B logger is attached;
* ``pruning.json`` (every pruning step: heads, roles, quality; the physical-removal report);
* ``pruned.ckpt``: the physically smaller model (``physical: true``), loadable with
  ``LMModule.load_from_checkpoint`` or :func:`mhaexp.pruning.load_model`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from mhaexp.checkpoint import atomic_save
from mhaexp.errors import ConfigError
from mhaexp.heads.importance import evaluate
from mhaexp.nn.io import checkpoint_for
from mhaexp.nn.model import ModelConfig
from mhaexp.nn.objectives import Batch, Objective, causal_lm_objective
from mhaexp.pruning import l0 as l0mod
from mhaexp.pruning.criteria import RolesProvider, head_scores, roles_by_head
from mhaexp.pruning.curves import curve_xy, plot_pruning_curves, write_curve_csv
from mhaexp.pruning.schedules import (
    Head,
    PruningConfig,
    gradual_target,
    iterative_counts,
    select_heads,
    validate_pruning,
)
from mhaexp.pruning.surgery import apply_mask, format_heads, masked_heads, prune_heads
from mhaexp.rundir import PRUNED_CHECKPOINT, PRUNING_CURVE_FILE, PRUNING_FILE

BatchSource = Sequence[Batch] | Callable[[pl.Trainer], Sequence[Batch]] | None


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
    _check_roles(cfg, roles_provider)
    return PruningCallback(cfg, model_cfg, max_steps, run_dir, batches, roles_provider)


def _check_roles(cfg: PruningConfig, roles_provider: RolesProvider | None) -> None:
    if cfg.criterion == "role" and roles_provider is None and cfg.kind != "l0":
        raise ConfigError(
            "pruning.criterion",
            "role",
            "needs a roles provider (build_pruning_callback(..., roles_provider=...)); "
            "choose importance, ablation, random or entropy",
        )


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


def _log(trainer: pl.Trainer, metrics: dict[str, Any], step: int | None = None) -> None:
    """Straight to the loggers: pruning also happens where ``self.log`` is not allowed (train end)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step if step is None else step)


def _wandb_experiments(trainer: pl.Trainer) -> list[Any]:
    from pytorch_lightning.loggers import WandbLogger

    return [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)] if trainer.is_global_zero else []


class PruningCallback(pl.Callback):
    """Masks heads on the schedule of a :class:`PruningConfig`; see the module docstring for outputs."""

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
        self.target = None if cfg.kind == "l0" else cfg.target_count(self.total)
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
        self._penalty_in_loss = False

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
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.cfg.kind != "l0":
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

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = pl_module.model
        sizes = [layer.n_heads for layer in model.attention_layers]
        if sizes != self.sizes:
            raise ConfigError("model", sizes, f"the pruning schedule was built for heads per layer {self.sizes}")
        _check_roles(self.cfg, self.roles_provider)
        # Heads masked in an init_from checkpoint are pruned already; masks restored on resume agree.
        known = set(self.pruned)
        self.pruned += [h for h in masked_heads(model) if h not in known]
        apply_mask(model, self.pruned)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.curve:
            self._point(trainer, pl_module, "start")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        c, step = self.cfg, trainer.global_step
        if self.finished or c.kind == "l0":
            return
        if c.kind == "one_shot" and c.at_step is not None and step >= c.at_step:
            self._prune_to(trainer, pl_module, self.target, "one_shot")
            self.finished = True
        elif c.kind == "gradual":
            want = gradual_target(step, self.total, c.start_step, c.end_step, self.target, c.initial_fraction, c.every)
            if want > len(self.pruned):
                self._prune_to(trainer, pl_module, want, "gradual")
            self.finished = want >= self.target and step >= c.end_step
        elif c.kind == "iterative" and c.at_step is not None and step >= c.at_step + self.iteration * c.finetune_steps:
            self._iterate(trainer, pl_module, all_at_once=c.finetune_steps == 0)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.cfg.kind != "l0":
            return
        model = pl_module.model
        pl_module.log("pruning/l0_open_heads", float(sum(l0mod.open_heads(model))), on_step=True, on_epoch=False)
        with torch.no_grad():
            expected = l0mod.expected_l0(model)
        pl_module.log("pruning/l0_expected_open", float(expected), on_step=True, on_epoch=False)
        if not self._penalty_in_loss:
            pl_module.log("train/l0_penalty", self.cfg.l0_lambda * float(expected), on_step=True, on_epoch=False)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.cfg.kind != "l0" or self._penalty_in_loss:
            return
        # Fallback while LMModule has no extra_losses: backpropagate the penalty on its own, scaled
        # as Lightning scales the loss (gradient accumulation, fp16 loss scaling).
        penalty = self.cfg.l0_lambda * l0mod.expected_l0(pl_module.model) / trainer.accumulate_grad_batches
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            penalty = scaler.scale(penalty)
        penalty.backward()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        c = self.cfg
        if c.kind == "l0":
            self._finish_l0(trainer, pl_module)
        elif not self.finished:
            if c.kind == "iterative":
                self._iterate(trainer, pl_module, all_at_once=True)
            elif self.target > len(self.pruned):
                self._prune_to(trainer, pl_module, self.target, c.kind + "_end")
            self.finished = True
        self._finalize(trainer, pl_module)

    # ---- pruning steps -----------------------------------------------------------------------
    def _batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Batch]:
        if self._held_out is None:
            self._held_out = held_out_batches(trainer, self.cfg.n_batches, pl_module.device, self.batch_source)
        return self._held_out

    def _roles(self, pl_module: pl.LightningModule, batches: list[Batch]) -> dict[Head, list[str]]:
        if self.roles_provider is None:
            return {}
        return roles_by_head(self.roles_provider(pl_module.model, batches))

    def _point(self, trainer: pl.Trainer, pl_module: pl.LightningModule, label: str) -> dict[str, Any]:
        loss, acc = evaluate(pl_module.model, self._batches(trainer, pl_module), module_objective(pl_module))
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
        return "l0" if self.cfg.kind == "l0" else f"{self.cfg.kind}/{self.cfg.criterion}"

    def _prune_to(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: int, reason: str) -> list[Head]:
        c = self.cfg
        model = pl_module.model
        batches = self._batches(trainer, pl_module)
        if not self.curve:
            self._point(trainer, pl_module, "start")
        roles = self._roles(pl_module, batches)
        if self.scores is None or c.kind != "iterative" or c.exact:
            scores = head_scores(
                c.criterion,
                model,
                batches,
                module_objective(pl_module),
                seed=c.seed,
                roles=roles if c.criterion == "role" else None,
                role_tiebreak=c.role_tiebreak,
                max_rows=c.max_rows,
            )
            self.scores = [s.tolist() for s in scores]
        scores = [torch.tensor(s) for s in self.scores]
        new = select_heads(scores, self.pruned, target, c.scope, c.min_heads_per_layer, c.normalize_by_layer)
        new = [tuple(h) for h in trainer.strategy.broadcast(new, src=0)]  # every rank masks the same heads
        apply_mask(model, new)
        self.pruned = sorted(set(self.pruned) | set(new))
        point = self._point(trainer, pl_module, reason)
        self._record(trainer, new, roles, point, reason, {h: scores[h[0]][h[1]].item() for h in new})
        return new

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
        _log(trainer, metrics)

    def _iterate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, all_at_once: bool) -> None:
        """Michel et al. 2019: prune ``step_fraction`` more, check the floor; once or until done."""
        c = self.cfg
        counts = iterative_counts(self.total, c.step_fraction, self.target)
        while not self.finished and self.iteration < len(counts):
            before = {h: float(pl_module.model.attention_layers[h[0]].head_gate[h[1]]) for h in self._all_heads()}
            new = self._prune_to(trainer, pl_module, counts[self.iteration], f"iterative_{self.iteration + 1}")
            self.iteration += 1
            if self._below_floor():
                with torch.no_grad():
                    for layer, head in new:
                        pl_module.model.attention_layers[layer].head_gate[head] = before[(layer, head)]
                self.pruned = sorted(set(self.pruned) - set(new))
                self.curve[-1]["event"] += "_undone_below_floor"
                self.events[-1]["reason"] += "_undone_below_floor"
                _log(trainer, {"pruning/stopped_at_floor": 1.0, "pruning/heads_pruned": float(len(self.pruned))})
                self.finished = True
            if not all_at_once:
                break
        if self.iteration >= len(counts):
            self.finished = True

    def _all_heads(self) -> list[Head]:
        return [(i, h) for i, n in enumerate(self.sizes) for h in range(n)]

    def _below_floor(self) -> bool:
        c = self.cfg
        if c.quality_floor is None:
            return False
        base = self.curve[0]["val_acc"]
        floor = c.quality_floor * base if c.floor_relative else c.quality_floor
        return self.curve[-1]["val_acc"] < floor

    def _finish_l0(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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

    # ---- outputs -----------------------------------------------------------------------------
    def _finalize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = pl_module.model
        report = None
        if self.cfg.physical:
            # Every rank builds it (cheap); only rank 0 writes.
            small, rep = prune_heads(model, self.pruned, self.cfg.uneven)
            report = rep.to_dict()
            self.report = report
            _log(
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
            run_dir / "pruning_curve.png",
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
