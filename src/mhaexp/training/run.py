"""One training job: data, model, loggers, callbacks, ``Trainer.fit``, and the closing report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment

from mhaexp.analysis import index_page
from mhaexp.analysis.callback import build_analysis_callback, build_roles_provider
from mhaexp.analysis.registry import role_interval
from mhaexp.analysis.seed_roles import fill, format_table, read_roles
from mhaexp.checkpoint import read_checkpoint
from mhaexp.data.datamodule import LMDataModule
from mhaexp.pruning.callback import build_pruning_callback
from mhaexp.rundir import ANALYSIS_DIR, CHECKPOINT_DIR, SUMMARY_FILE
from mhaexp.training.checkpointing import AtomicCheckpointIO, RNGState, RunCheckpoint, newest_good_checkpoint
from mhaexp.training.config import RunConfig, check_resume_model
from mhaexp.training.init_from import InitQualityCallback, load_init
from mhaexp.training.loggers import build_loggers, remember_run_id, saved_run_id, wandb_always_finished, wandb_run_dir
from mhaexp.training.module import LMModule
from mhaexp.training.progress import StepProgressBar
from mhaexp.training.quiet import quiet_lightning
from mhaexp.training.record import RunRecord


def run_dir_of(ckpt: Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` or ``<run>/hpc_ckpt_1.ckpt``)."""
    return ckpt.parent.parent if ckpt.parent.name == CHECKPOINT_DIR else ckpt.parent


def resume_checkpoint(run: RunConfig, run_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """(checkpoint, its contents) to continue from.

    ``resume=auto``: the newest good checkpoint in this run directory, if any (also what
    a requeued SLURM job finds); a path: that file, checked.
    """
    resume = run.resume
    if resume is None and SLURMEnvironment.detect() and any(run_dir.glob("hpc_ckpt_*.ckpt")):
        # A requeued SLURM job: Lightning would restore the hpc checkpoint by itself, but the
        # loggers must know its step too (metrics.csv keeps its history, W&B its run).
        resume = "auto"
    if resume is None:
        return None, None
    path = newest_good_checkpoint(run_dir) if resume == "auto" else Path(resume)
    if path is None:
        return None, None
    ckpt = read_checkpoint(path, "resume")
    if resume == "auto":  # a path was checked in the preflight; the run directory's newest only now
        check_resume_model(str(path), run.model, ckpt)
    return path, ckpt


def train(run: RunConfig, run_dir: Path, group: str | None = None) -> dict[str, Any]:
    """Train one job of the checked ``run`` into ``run_dir``; return its summary."""
    quiet_lightning()
    pl.seed_everything(run.seed, workers=True, verbose=False)
    model_cfg = run.model
    datamodule = LMDataModule.from_config(run.data)
    tok = datamodule.tokenizer
    module = LMModule(
        model_cfg,
        run.optim,
        pad_id=tok.pad_id,
        mask_id=tok.mask_id,
        seed=run.seed,
        compile=run.trainer.compile,
        data_vocab_size=run.data.n_vocab,
    )
    record = RunRecord(run_dir)
    validates = run.trainer.limit_val_batches != 0
    callbacks: list[pl.Callback] = [
        RunCheckpoint(
            dirpath=run_dir / CHECKPOINT_DIR,
            filename="step{step}",
            auto_insert_metric_name=False,
            # After the validation of every val_check_interval steps, not before it at the end of the step:
            # Lightning does not run again a validation that a resumed checkpoint preceded, so its numbers
            # (metrics.csv, the best val loss) would be lost. Without validation, at the end of the step.
            every_n_train_steps=None if validates else run.trainer.val_check_interval,
            save_on_train_epoch_end=False,
            save_last=True,
            save_top_k=1,
        ),
        RNGState(),
    ]
    ckpt, saved = resume_checkpoint(run, run_dir)
    if run.init_from and ckpt is None:  # a resumed run takes its weights from its checkpoint
        init = load_init(module, run.init_from, model_cfg, gqa_init=run.gqa_init, seed=run.seed)
        callbacks.append(InitQualityCallback(run.init_from, init, run_dir))
    analysis = build_analysis_callback(run.analysis, datamodule, run_dir)
    if analysis is not None:
        callbacks.append(analysis)
    pruning = build_pruning_callback(
        run.pruning,
        model_cfg,
        run.trainer.max_steps,
        run_dir,
        # Roles need the analysis thresholds: with analysis=off, criterion=role is refused up front.
        roles_provider=build_roles_provider(run.analysis, datamodule) if analysis is not None else None,
    )
    if pruning is not None:
        callbacks.append(pruning)
    # A progress bar redrawn into a log file or a pipe is noise; keep it for terminals.
    progress_bar = run.trainer.enable_progress_bar and sys.stdout.isatty()
    if progress_bar:
        callbacks.append(StepProgressBar())
    callbacks.append(record)  # last: its summary gathers what the others found at the end
    run_id = saved_run_id(run_dir_of(ckpt)) if ckpt is not None else saved_run_id(run_dir)
    loggers = build_loggers(run, run_dir, group, run_id=run_id, resume=saved)
    trainer = pl.Trainer(
        **{**run.trainer.kwargs(), "enable_progress_bar": progress_bar},
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
    )
    with wandb_always_finished():
        if trainer.is_global_zero:
            remember_run_id(run_dir, loggers)
        if ckpt is not None:
            print(f"mhaexp-train: resuming from {ckpt}", file=sys.stderr)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt is not None else None)
    summary = record.summary
    if not summary.get("global_step") and (run_dir / SUMMARY_FILE).is_file():
        # ddp_spawn: the callbacks ran in the spawned ranks; rank 0 wrote the summary file.
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    if trainer.is_global_zero:
        report(run_dir, summary, seed_table=datamodule.kind == "grammar")
    return summary


def role_table(rows: list[dict[str, str]]) -> list[str]:
    """One line per head with its roles (score ± standard error, margin over the bar): the rows of
    ``analysis/head_roles.csv``."""
    if not rows:
        return []
    heads: dict[tuple[int, int], list[str]] = {}
    for row in rows:
        key = (int(row["layer"]), int(row["head"]))
        role = row["role"]
        if row.get("score"):
            se = float(row.get("se") or "nan")
            role = role_interval(role, float(row["score"]), se, float(row["margin"]))
        heads.setdefault(key, []).append(role)
    lines = [f"  L{layer}H{head:<3} {', '.join(roles)}" for (layer, head), roles in sorted(heads.items())]
    return ["head roles    :", *lines]


def report(run_dir: Path, summary: dict[str, Any], seed_table: bool = False) -> None:
    """Where the run went and how to look at it: the last thing `make train` prints. ``seed_table``:
    also the seed document's five heads, as found by the analysis (grammar runs)."""
    roles = read_roles(run_dir)
    lines = role_table(roles)
    if seed_table and roles:
        lines += format_table(fill([(run_dir.name, roles)]))
    lines.append(f"run directory : {run_dir}")
    if summary.get("best_val_loss") is not None:
        lines.append(f"best val loss : {summary['best_val_loss']:.4f}")
    wb = wandb_run_dir(run_dir)
    if wb is not None:
        wandb_bin = Path(sys.executable).parent / "wandb"
        lines += [
            f"W&B run       : {wb}  (offline)" if "offline-run" in wb.name else f"W&B run       : {wb}",
            f"  browse      : {wandb_bin} leet {wb}",
            f"  upload      : {wandb_bin} sync {wb}",
        ]
    page = run_dir / ANALYSIS_DIR / index_page.FILE_NAME
    if page.is_file():  # last: the one path to open
        lines.append(f"analysis page : {page}")
    print("\n".join(lines))
