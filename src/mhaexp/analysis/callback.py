"""The analysis callback: per-head metrics and roles on the fixed probe set while a model trains.

Cadence: at the start of training, every ``every_n_steps`` optimizer steps, and at the end of fit.
Every analysis computes the cheap tier (pattern metrics, copying score, gradient importance, roles);
every ``expensive_every``-th one (0: none), and the last, also the expensive tier (ablation, JS + MDS, GQA
diversity) and the pictures (see :mod:`mhaexp.analysis.collect`).

Only this callback asks the model for attention patterns (``need_weights=True``), and only on probe
batches: training and validation steps stay on the fused SDPA path.

Distributed: everything runs on global rank 0 only, on the unwrapped ``pl_module.model`` (so no DDP
hook and no collective is involved), and only rank 0 writes or logs. The other ranks return at once;
they wait for rank 0 at the next gradient all-reduce, so nothing deadlocks. Under FSDP the weights
are sharded and rank 0 alone cannot run the model: the callback warns once and does nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from mhaexp.analysis import export, head_view, index_page, plots, wandb_log
from mhaexp.analysis.collect import HeadMetrics, ProbeData, compute_head_metrics, objective_for, probe_from_datamodule
from mhaexp.analysis.config import AnalysisConfig
from mhaexp.analysis.roles import HeadRole, classify_heads
from mhaexp.config import build
from mhaexp.rundir import ANALYSIS_DIR, ANALYSIS_REPORT_FILE


def analysis_settings(analysis_cfg: AnalysisConfig | Mapping[str, Any]) -> AnalysisConfig:
    """The checked ``conf/analysis`` object: as given, or built from a mapping (programmatic use)."""
    if isinstance(analysis_cfg, AnalysisConfig):
        return analysis_cfg
    return build(AnalysisConfig, analysis_cfg, "analysis")


def run_analysis(
    model: Any,
    probe: ProbeData,
    cfg: AnalysisConfig,
    out_dir: Path,
    step: int,
    *,
    expensive: bool,
    pictures: bool,
    skip_metrics: set[str] | None = None,
    history: bool = True,
) -> tuple[HeadMetrics, list[HeadRole], list[dict[str, Any]], dict[str, Path]]:
    """One analysis step into ``out_dir`` (CSV tables, summary, markdown, PNGs, ``head_view.html``,
    ``index.html``); shared with the CLI.

    ``skip_metrics``: metric names already in ``head_metrics.csv`` for this step (not written again).
    Returns the metrics, the roles, the tidy rows written and the pictures.
    """
    settings = cfg.to_dict()
    hm = compute_head_metrics(model, probe, settings, expensive=expensive)
    roles = classify_heads(hm.metrics, settings["thresholds"], hm.relation_names, hm.se)
    roles = export.real_roles(roles, hm.n_heads)
    rows = export.tidy_rows(step, hm)
    if skip_metrics:
        rows = [r for r in rows if r["metric"] not in skip_metrics]
    export.append_metrics(out_dir, rows)
    export.write_roles(out_dir, step, roles, history=history)
    export.write_summary(out_dir, step, roles)
    formats = plots.check_formats(cfg.figure_formats)
    images = plots.all_figures(hm, roles, out_dir, cfg.max_pictures, step, formats) if pictures else {}
    # The head view and the run's page are cheap (the patterns are already here): at every step.
    images["head_view"] = head_view.head_view_for(
        model, hm.example_patterns, hm.example_tokens, roles, out_dir / head_view.FILE_NAME, f"head view, step {step}"
    )
    if pictures or not (out_dir / ANALYSIS_REPORT_FILE).exists():
        export.write_markdown(out_dir, step, roles, hm, images)
    index_page.write_index(out_dir, step, roles, hm, images)
    return hm, roles, rows, images


class AnalysisCallback(pl.Callback):
    """Runs :func:`run_analysis` on the probe set during ``fit`` and logs it (see the module docstring).

    After fit, ``role_counts`` holds ``{family: heads}`` of the final analysis and ``summary`` the
    ``roles/<family>`` entries for the run's summary; ``seconds`` the wall time the analysis took.
    """

    def __init__(self, analysis_cfg: AnalysisConfig | Mapping[str, Any], datamodule: Any, run_dir: str | Path) -> None:
        self.cfg = analysis_settings(analysis_cfg)
        self.every = self.cfg.every_n_steps
        self.expensive_every = self.cfg.expensive_every  # 0: only at the end
        self.datamodule = datamodule
        self.out_dir = Path(run_dir) / ANALYSIS_DIR
        self.probe: ProbeData | None = None
        self.role_counts: dict[str, int] = {}
        self.summary: dict[str, Any] = {}
        self.seconds = 0.0
        self.analyses = 0
        self.timings: list[tuple[int, bool, float]] = []  # (step, expensive, seconds) per analysis
        self._last: tuple[int, bool] | None = None  # (step, expensive) of the latest analysis
        self._written: set[str] = set()  # metric names written at the latest step
        self._disabled = False

    # ------------------------------------------------------------------ hooks --
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _is_fsdp(trainer):
            self._disabled = True
            rank_zero_warn("analysis: skipped under FSDP (the model's weights are sharded across ranks)")
        if trainer.global_step > 0:
            # Resumed: the step was analysed before the interruption; later rows are from a rolled-back past.
            if trainer.is_global_zero and not self._disabled:
                export.drop_after(self.out_dir, trainer.global_step)
        elif self.cfg.at_start:
            self._analyse(trainer, pl_module, expensive=False)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step <= 0 or step % self.every != 0 or (self._last and self._last[0] == step):
            return
        last = trainer.max_steps is not None and 0 < trainer.max_steps <= step
        periodic = self.expensive_every > 0 and (step // self.every) % self.expensive_every == 0
        self._analyse(trainer, pl_module, expensive=last or periodic)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Stopped other than at a full analysis (max_epochs, early stopping): finish with one.
        if self._last is None or self._last != (trainer.global_step, True):
            self._analyse(trainer, pl_module, expensive=True)
        if trainer.is_global_zero and not self._disabled:
            logger = wandb_log.find_wandb(trainer)
            if logger is not None:
                wandb_log.log_summary(logger, self.role_counts)

    # ------------------------------------------------------------------ work --
    def _analyse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, expensive: bool) -> None:
        if self._disabled or not trainer.is_global_zero:
            return
        # Analysis must not change training: iterating a DataLoader draws a seed from torch's global
        # generator, for one. Rank 0 alone analyses, so a shifted stream would also desynchronize ranks.
        with preserved_rng(pl_module.device):
            self._analyse_now(trainer, pl_module, expensive)

    def _analyse_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule, expensive: bool) -> None:
        start = time.perf_counter()
        step = trainer.global_step
        if self.probe is None:
            probe = probe_from_datamodule(self.datamodule, self.cfg.probe_batches, objective_for(pl_module))
            self.probe = with_treebank(probe, self.cfg, self.datamodule, pl_module.model)
        again = self._last is not None and self._last[0] == step
        skip = self._written if again else set()
        _, roles, rows, images = run_analysis(
            pl_module.model,
            self.probe,
            self.cfg,
            self.out_dir,
            step,
            expensive=expensive,
            pictures=expensive,
            skip_metrics=skip,
            history=not again,
        )
        self._written = skip | {r["metric"] for r in rows}
        counts = export.all_role_counts(roles)
        self.role_counts = counts
        self.summary = {f"roles/{k}": v for k, v in counts.items()}
        logger = wandb_log.find_wandb(trainer)
        if logger is not None:
            wandb_log.log_analysis(logger, step, rows, roles, counts, images)
        # Role counts are few and readable: every other logger (the CSV log) gets them too; per-head
        # scalars stay out of metrics.csv, head_metrics.csv holds them.
        for other in trainer.loggers:
            if other is not logger:
                other.log_metrics({f"roles/{k}": float(v) for k, v in counts.items()}, step=step)
        self._last = (step, expensive)
        took = time.perf_counter() - start
        self.analyses += 1
        self.seconds += took
        self.timings.append((step, expensive, took))


@contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Every random state training reads (torch CPU and CUDA, Python, NumPy) as it was before."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


def with_treebank(probe: ProbeData, cfg: AnalysisConfig, datamodule: Any, model: Any) -> ProbeData:
    """``probe`` plus the sentences of ``analysis.treebank`` (if set), read with the data's tokenizer."""
    from mhaexp.analysis.treebank import probe_with_treebank

    max_tokens = int(model.cfg.max_seq_len)
    return probe_with_treebank(probe, cfg, datamodule.tokenizer, max_tokens, int(datamodule.batch_size))[0]


def _is_fsdp(trainer: pl.Trainer) -> bool:
    return type(trainer.strategy).__name__.startswith("FSDP")


def build_roles_provider(
    analysis_cfg: AnalysisConfig | Mapping[str, Any], datamodule: Any
) -> Callable[[Any, Sequence[Any]], list[HeadRole]]:
    """A roles provider for :mod:`mhaexp.pruning` (``criterion=role``): the heads' roles on the probe set.

    The batches the pruner passes are ignored: roles are defined on the fixed, annotated probe set, the
    same one the callback uses. Only the cheap tier is computed (roles need nothing else).
    """
    cfg = analysis_settings(analysis_cfg)
    settings = cfg.to_dict()
    cache: dict[str, ProbeData] = {}

    def provide(model: Any, batches: Sequence[Any]) -> list[HeadRole]:
        if "probe" not in cache:
            cache["probe"] = with_treebank(probe_from_datamodule(datamodule, cfg.probe_batches), cfg, datamodule, model)
        hm = compute_head_metrics(model, cache["probe"], settings, expensive=False, importance=False)
        roles = classify_heads(hm.metrics, settings["thresholds"], hm.relation_names, hm.se)
        return export.real_roles(roles, hm.n_heads)

    return provide


def build_analysis_callback(
    analysis_cfg: AnalysisConfig | Mapping[str, Any], datamodule: Any, run_dir: str | Path
) -> pl.Callback | None:
    """The callback for ``conf/analysis`` (``cfg.analysis``), or None when ``enabled`` is false."""
    cfg = analysis_settings(analysis_cfg)
    if not cfg.enabled:
        return None
    return AnalysisCallback(cfg, datamodule, run_dir)
