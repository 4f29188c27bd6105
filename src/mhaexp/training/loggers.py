"""Experiment loggers (W&B, CSV) built from ``conf/logger``, and the guard that always closes W&B."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from mhaexp import faults
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


# In a checkpoint: how many data rows metrics.csv held when it was saved (written by RunRecord). A run resumed
# from it keeps exactly those rows: the rows logged after the checkpoint are logged again by the resumed run.
METRICS_ROWS_KEY = "metrics_rows"


class RunCSVWriter(ExperimentWriter):
    """Lightning's ``metrics.csv`` writer that starts from a resumed run's rows, counts the rows it holds,
    and rewrites the file atomically when a new column appears (Lightning truncates it, then writes it
    again: a kill in between lost every row)."""

    def __init__(self, log_dir: str, header: list[str], kept: list[dict[str, str]]) -> None:
        super().__init__(log_dir)
        self.rows = 0
        if kept:  # replaced in one step: a kill now leaves the old file, which the next resume cuts again
            self._write_all(header, kept)
            self.metrics_keys = list(header)
            self.rows = len(kept)
        elif os.path.isfile(self.metrics_file_path):  # a fresh start
            os.remove(self.metrics_file_path)

    def _check_log_dir_exists(self) -> None:
        """Lightning's deletes an existing metrics.csv here, before the kept rows could replace it."""

    def save(self) -> None:
        self.rows += len(self.metrics)
        super().save()

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            self._write_all(fieldnames, list(csv.DictReader(f)))

    def _write_all(self, header: list[str], rows: list[dict[str, str]]) -> None:
        tmp = f"{self.metrics_file_path}.tmp"
        with open(tmp, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header)
            out.writeheader()
            out.writerows(rows)
        os.replace(tmp, self.metrics_file_path)


class RunCSVLogger(CSVLogger):
    """``metrics.csv`` in the run directory (through :class:`RunCSVWriter`), written through at every log call."""

    def __init__(self, run_dir: Path, header: list[str], kept: list[dict[str, str]]) -> None:
        super().__init__(save_dir=str(run_dir), name="", version="", flush_logs_every_n_steps=1)
        self._kept = (header, kept)

    @property
    @rank_zero_experiment
    def experiment(self) -> RunCSVWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = RunCSVWriter(self.log_dir, *self._kept)
        return self._experiment


def csv_logger(run_dir: Path, resume: dict[str, Any] | None) -> RunCSVLogger:
    """``metrics.csv`` in the run directory; ``resume``: the checkpoint a resumed run starts from.

    Lightning's CSVLogger deletes an existing file; a resumed run instead keeps the rows logged before
    its checkpoint: as many as the checkpoint counted (:data:`METRICS_ROWS_KEY`), or, for a checkpoint
    written before that count was kept, the rows of the steps before its global step.
    """
    path = run_dir / METRICS_FILE
    header: list[str] = []
    kept: list[dict[str, str]] = []
    if resume is not None and path.is_file():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = sorted(reader.fieldnames or [])
            rows = list(reader)
        if METRICS_ROWS_KEY in resume:
            kept = rows[: resume[METRICS_ROWS_KEY]]
        else:
            step = int(resume.get("global_step", 0))
            kept = [row for row in rows if row.get("step") and int(float(row["step"])) < step]
    return RunCSVLogger(run_dir, header, kept)


def build_loggers(
    run: RunConfig, run_dir: Path, group: str | None, run_id: str | None = None, resume: dict[str, Any] | None = None
) -> list[Logger]:
    """A CSV logger always (the run directory's own record), plus W&B unless ``logger=csv|none``.

    ``resume``: the checkpoint a resumed run starts from."""
    lc = run.logger
    if lc.kind == "none":
        return []
    loggers: list[Logger] = [csv_logger(run_dir, resume)]
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

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        faults.point("wandb", step)


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
