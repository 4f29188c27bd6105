"""The analysis callback: per-head metrics and roles on the fixed probe set while a model trains.

Cadence: at the start of training, every ``every_n_steps`` optimizer steps, and at the end of fit.
Every analysis computes the cheap tier (pattern metrics, copying score, gradient importance, roles);
every ``expensive_every``-th one (0: none), and the last, also the expensive tier (ablation, JS + MDS, GQA
diversity) and the pictures (see :mod:`mhaexp.analysis.collect`).

Probe size: a full analysis (the expensive tier, so the end of the run) reads the first
``probe_sequences`` probe sequences, a cheap-only one the first ``step_probe_sequences`` of them (the
same sequences, fewer), which keeps the per-step analyses cheap (see :func:`tier_probe`).

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

from mhaexp import faults
from mhaexp.analysis import export, head_view, index_page, plots, wandb_log
from mhaexp.analysis.collect import HeadMetrics, ProbeData, compute_head_metrics, objective_for, probe_from_datamodule
from mhaexp.analysis.config import AnalysisConfig
from mhaexp.analysis.roles import HeadRole, classify_heads
from mhaexp.config import build
from mhaexp.nn.objectives import Objective, causal_lm_objective
from mhaexp.rundir import ANALYSIS_DIR, ANALYSIS_REPORT_FILE, HEAD_METRICS_FILE, HEAD_ROLES_HISTORY_FILE

# In a checkpoint: the analysis' state when it was saved; the appended tables' sizes in bytes among it.
ANALYSIS_STATE_KEY = "analysis"
APPENDED_TABLES = (HEAD_METRICS_FILE, HEAD_ROLES_HISTORY_FILE)


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
) -> tuple[HeadMetrics, list[HeadRole], list[dict[str, Any]], dict[str, Path]]:
    """One analysis step into ``out_dir`` (CSV tables, summary, markdown, PNGs, ``head_view.html``,
    ``index.html``); shared with the CLI.

    Returns the metrics, the roles, the tidy rows written and the pictures.
    """
    settings = tier_settings(cfg, full=expensive)
    hm = compute_head_metrics(model, probe, settings, expensive=expensive)
    roles = classify_heads(hm.metrics, settings["thresholds"], hm.relation_names, hm.se)
    roles = export.real_roles(roles, hm.n_heads)
    rows = export.tidy_rows(step, hm)
    export.append_metrics(out_dir, rows)
    faults.point("analysis", step)
    export.write_roles(out_dir, step, roles)
    export.write_js(out_dir, step, hm)
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

    Resume: each checkpoint holds the size of the appended tables and the latest analysis. A resumed run
    cuts the tables back to those sizes (rows written after the checkpoint, even half a row, are written
    again), and does not repeat an analysis the checkpoint already held.
    """

    def __init__(self, analysis_cfg: AnalysisConfig | Mapping[str, Any], datamodule: Any, run_dir: str | Path) -> None:
        self.cfg = analysis_settings(analysis_cfg)
        self.every = self.cfg.every_n_steps
        self.expensive_every = self.cfg.expensive_every  # 0: only at the end
        self.datamodule = datamodule
        self.out_dir = Path(run_dir) / ANALYSIS_DIR
        self.probes: dict[bool, ProbeData] = {}  # expensive (full analysis) or not -> its probe
        self.role_counts: dict[str, int] = {}
        self.summary: dict[str, Any] = {}
        self.seconds = 0.0
        self.analyses = 0
        self.timings: list[tuple[int, bool, float]] = []  # (step, expensive, seconds) per analysis
        self._last: tuple[int, bool] | None = None  # (step, expensive) of the latest analysis
        self._disabled = False
        self._table_sizes: dict[str, int] | None = None  # a resumed run's checkpoint's, until cut back to
        self._ended = False  # on_train_end ran (a run resumed from its final checkpoint skips it)

    # ------------------------------------------------------------------ hooks --
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        sizes = {name: _size(self.out_dir / name) for name in APPENDED_TABLES}
        checkpoint[ANALYSIS_STATE_KEY] = {
            "table_sizes": sizes if trainer.is_global_zero else None,
            "last": list(self._last) if self._last else None,
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get(ANALYSIS_STATE_KEY)
        if state:
            self._table_sizes = state["table_sizes"]
            self._last = (int(state["last"][0]), bool(state["last"][1])) if state["last"] else None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the checkpoint is restored, before anything is analysed: the tables as they were at it. A run
        # that starts from step 0 starts them empty (killed before its first checkpoint, it starts afresh
        # in the same directory: the rows it wrote before are written again).
        sizes = self._table_sizes
        if sizes is None and trainer.global_step == 0:
            sizes = dict.fromkeys(APPENDED_TABLES, 0)
        if sizes is not None and trainer.is_global_zero:
            for name, size in sizes.items():
                path = self.out_dir / name
                if path.is_file() and path.stat().st_size > size:
                    with path.open("r+b") as f:
                        f.truncate(size)
            self._table_sizes = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _is_fsdp(trainer):
            self._disabled = True
            rank_zero_warn("analysis: skipped under FSDP (the model's weights are sharded across ranks)")
        if trainer.global_step > 0:
            # Resumed from a checkpoint without the tables' sizes (an older one): the step was analysed
            # before the interruption; later rows are from a rolled-back past.
            if trainer.is_global_zero and not self._disabled and self._table_sizes is None:
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
        self._ended = True
        self._finish(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._ended:  # resumed from the final checkpoint: Lightning skipped training and on_train_end
            self._finish(trainer, pl_module)

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
        if not self.probes:
            objective = objective_for(pl_module)
            self.probes = {
                full: tier_probe(self.cfg, self.datamodule, pl_module.model, objective, full) for full in (True, False)
            }
        if self._last is not None and self._last[0] == step:
            # A full analysis after a per-step one at this step (fit ended there): its rows, on the full
            # probe, replace that one's.
            export.drop_after(self.out_dir, step - 1)
        _, roles, rows, images = run_analysis(
            pl_module.model,
            self.probes[expensive],
            self.cfg,
            self.out_dir,
            step,
            expensive=expensive,
            pictures=expensive,
        )
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


def tier_settings(cfg: AnalysisConfig, full: bool) -> dict[str, Any]:
    """The analysis settings of a full analysis, or of a per-step one: that reads at most
    ``step_probe_sequences`` of the random repeated sequences too (``induction_sequences``)."""
    settings = cfg.to_dict()
    if not full:
        settings["induction_sequences"] = min(cfg.induction_sequences, cfg.step_probe_sequences)
    return settings


def tier_probe(
    cfg: AnalysisConfig, datamodule: Any, model: Any, objective: Objective = causal_lm_objective, full: bool = True
) -> ProbeData:
    """The probe of a full analysis (``full``: ``probe_sequences`` sequences of the data's probe set, and
    ``analysis.treebank``'s sentences up to ``treebank_max_sentences``) or of a cheap per-step one (the first
    ``step_probe_sequences`` of those sequences, and at most as many treebank sentences). A probe set
    holding fewer sequences than a full analysis asks for is read whole, with a warning."""
    from mhaexp.analysis.treebank_scores import probe_with_treebank

    n = cfg.probe_sequences if full else min(cfg.step_probe_sequences, cfg.probe_sequences)
    probe = probe_from_datamodule(datamodule, n, objective)
    if full and probe.n_sequences < n:
        rank_zero_warn(
            f"analysis: the probe set holds {probe.n_sequences} sequences, fewer than analysis.probe_sequences={n}; "
            "the analysis reads those"
        )
    cap = cfg.treebank_max_sentences
    limit = cap if full else min(n, cap or n)
    max_tokens = int(model.cfg.max_seq_len)
    return probe_with_treebank(probe, cfg, datamodule.tokenizer, max_tokens, int(datamodule.batch_size), limit)[0]


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _is_fsdp(trainer: pl.Trainer) -> bool:
    return type(trainer.strategy).__name__.startswith("FSDP")


def build_roles_provider(
    analysis_cfg: AnalysisConfig | Mapping[str, Any], datamodule: Any
) -> Callable[[Any, Sequence[Any]], list[HeadRole]]:
    """A roles provider for :mod:`mhaexp.pruning` (``criterion=role``): the heads' roles on the probe set.

    The batches the pruner passes are ignored: roles are defined on the fixed, annotated probe set, the
    one the callback's full analyses use. Only the cheap tier is computed (roles need nothing else).
    """
    cfg = analysis_settings(analysis_cfg)
    settings = cfg.to_dict()
    cache: dict[str, ProbeData] = {}

    def provide(model: Any, batches: Sequence[Any]) -> list[HeadRole]:
        if "probe" not in cache:
            cache["probe"] = tier_probe(cfg, datamodule, model)
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
