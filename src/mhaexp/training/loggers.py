"""Experiment loggers (W&B, CSV) built from ``conf/logger``, and the guard that always closes W&B."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from mhaexp.net import unreachable, wandb_server
from mhaexp.nn.config import ModelConfig
from mhaexp.rundir import METRICS_FILE, RUN_ID_FILE
from mhaexp.training.config import LoggerConfig, RunConfig


def flat_config(resolved: dict[str, Any], model: ModelConfig) -> dict[str, Any]:
    """The resolved run config, plus the head-shape keys at top level so W&B can group runs by them.

    The head shape is the checked model's (``ModelConfig`` resolves ``head_dim`` and ``n_kv_heads``).
    """
    config = dict(resolved)
    config.update(
        n_heads=model.n_heads,
        n_kv_heads=model.n_kv_heads,
        head_dim=model.head_dim,
        d_model=model.d_model,
        pruning=resolved["pruning"]["kind"],
    )
    return config


def csv_logger(run_dir: Path, resume_step: int | None) -> CSVLogger:
    """``metrics.csv`` in the run directory, written through at every log call.

    Lightning's CSVLogger deletes an existing file; a resumed run instead keeps the
    rows logged before its checkpoint's step (later ones are about to be logged again).
    """
    path = run_dir / METRICS_FILE
    header: list[str] = []
    kept: list[dict[str, str]] = []
    if resume_step is not None and path.is_file():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = sorted(reader.fieldnames or [])
            kept = [row for row in reader if row.get("step") and int(float(row["step"])) < resume_step]
    logger = CSVLogger(save_dir=str(run_dir), name="", version="", flush_logs_every_n_steps=1)
    writer = logger.experiment
    if kept and hasattr(writer, "metrics_keys"):  # rank 0 only: other ranks hold a dummy
        with path.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header)
            out.writeheader()
            out.writerows(kept)
        writer.metrics_keys = header
    return logger


def build_loggers(
    run: RunConfig, run_dir: Path, group: str | None, run_id: str | None = None, resume_step: int | None = None
) -> list[Logger]:
    """A CSV logger always (the run directory's own record), plus W&B unless ``logger=csv|none``."""
    lc = run.logger
    if lc.kind == "none":
        return []
    loggers: list[Logger] = [csv_logger(run_dir, resume_step)]
    if lc.kind == "wandb":
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            FallbackWandbLogger(
                project=lc.project,
                entity=lc.entity,
                name=lc.name,
                group=lc.group or group,
                tags=list(lc.tags),
                save_dir=str(run_dir),
                mode=lc.mode,
                id=run_id,
                resume="allow" if run_id else None,
                config=flat_config(run.resolved, run.model),
                settings=wandb_settings(lc),
            )
        )
    return loggers


class FallbackWandbLogger(WandbLogger):
    """A WandbLogger that, when ``mode=online`` cannot reach the server, goes on offline.

    The run is then written under the run directory like any offline run, and
    ``wandb sync`` uploads it later; training never waits longer than ``init_timeout``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Lightning always passes wandb.init(anonymous=...), which W&B >= 0.19 answers in every run with
        # "The anonymous setting has no effect and will be removed": no user can act on it.
        self._wandb_init.pop("anonymous", None)

    @property
    def experiment(self) -> Any:
        try:
            return super().experiment
        except Exception as e:
            if self._wandb_init.get("mode") != "online":
                raise
            import wandb

            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            server = wandb_server()
            why = unreachable(server)
            # W&B words a server it cannot reach as a credentials failure: say which it really is.
            problem = (
                f"the W&B server {server} cannot be reached ({why})"
                if why is not None
                else f"the W&B server {server} answers but refused the run ({first}; check the API key: wandb login)"
            )
            print(
                f"mhaexp-train: notice: {problem}; logging offline instead. "
                f"Upload later with `wandb sync {self.save_dir}/wandb/offline-run-*`",
                file=sys.stderr,
            )
            wandb.teardown()
            self._wandb_init["mode"] = "offline"
            self._experiment = None
            return super().experiment


def saved_run_id(run_dir: Path) -> str | None:
    path = run_dir / RUN_ID_FILE
    return path.read_text().strip() if path.is_file() else None


def remember_run_id(run_dir: Path, loggers: list[Logger]) -> None:
    """Write the W&B run id beside the checkpoints, so ``resume`` continues the same W&B run."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            (run_dir / RUN_ID_FILE).write_text(str(logger.experiment.id))


def wandb_settings(lc: LoggerConfig) -> Any:
    import wandb

    # A bounded wait for the server: training must not hang on an unreachable W&B.
    return wandb.Settings(init_timeout=float(lc.init_timeout), console="off", silent=True)


def wandb_run_dir(run_dir: Path) -> Path | None:
    """The offline W&B run directory a job wrote (the newest, if a resume made several)."""
    runs = sorted((run_dir / "wandb").glob("*run-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


@contextmanager
def wandb_always_finished() -> Iterator[None]:
    """Finish the W&B run however the job ends; an exception marks it failed (exit code 1).

    Multirun jobs share one process, so a run left open would swallow the next job's records.
    """
    try:
        yield
    except BaseException:
        _finish(exit_code=1)
        raise
    else:
        _finish(exit_code=0)


def _finish(exit_code: int) -> None:
    wandb = sys.modules.get("wandb")  # never imported: no W&B run to close (logger=csv|none)
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=exit_code)
