"""``mhaexp-train``: the thin entry point. Check the command line, then let Hydra run each job.

What one job does lives in :mod:`mhaexp.training.run`; this module only decides whether
to start, and what a job's failure means for the rest of a sweep.

Exit codes: 0 every job finished (jobs left out by ``sweep.skip_invalid=true`` do not
count against it); 1 at least one job failed, was invalid or did not finish (the other
jobs of the sweep still ran; ``sweep_summary.json`` says which); 2 the command line or
config is invalid and nothing was started.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from mhaexp.cli.preflight import (
    check_jobs,
    checked_launcher,
    compose_job,
    hydra_context,
    job_run_config,
    split_argv,
    wants_check,
)
from mhaexp.config import CONF_DIR
from mhaexp.errors import ConfigError, NonFiniteLossError, fail
from mhaexp.faults import ENV as FAULT_ENV
from mhaexp.faults import armed
from mhaexp.rundir import STATUS_FILE
from mhaexp.training import sweep
from mhaexp.training.config import RunConfig
from mhaexp.training.parallel import prestart_workers

PROG = "mhaexp-train"
# Hydra's own files share the run directory with the CSV log by design; and a deprecation inside
# Lightning is not the user's to act on.
warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def is_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group() -> str | None:
    """The default W&B group: the sweep directory's name in multirun, none for a single run."""
    return Path(HydraConfig.get().sweep.dir).name if is_multirun() else None


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / STATUS_FILE).write_text(json.dumps({"status": status, **extra}, indent=2))


def objective(run: RunConfig, summary: dict[str, Any] | None) -> float | None:
    """The number a model-based sweeper (Optuna) minimizes: ``sweep.objective`` of the summary.

    None for a failed job or a missing metric: hydra-optuna-sweeper 1.3 records a trial whose
    value is not float-castable as failed and goes on, whereas NaN makes it abort the study.
    """
    value = (summary or {}).get(run.sweep.objective)
    return None if value is None or math.isnan(float(value)) else float(value)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def run_job(cfg: DictConfig) -> dict[str, Any] | float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run = job_run_config(cfg)  # before torch loads: an invalid job (one preflight let through) costs nothing
        from mhaexp.training.parallel import share_cpu_threads
        from mhaexp.training.run import train  # torch and Lightning load only once a job really starts

        share_cpu_threads()
        summary = train(run, run_dir, group=sweep_group())
    except ConfigError as e:
        write_status(run_dir, "invalid", error=str(e))
        if is_multirun():
            print(f"{PROG}: invalid job: {e}", file=sys.stderr)
            return None
        fail(PROG, e)
    except Exception as e:
        write_status(run_dir, "failed", error=f"{type(e).__name__}: {e}")
        if is_multirun() and not os.environ.get("HYDRA_FULL_ERROR"):
            print(f"{PROG}: job failed: {type(e).__name__}: {e}", file=sys.stderr)
            return None
        if isinstance(e, NonFiniteLossError) and not os.environ.get("HYDRA_FULL_ERROR"):
            # A diagnosis, not a bug: one line, the step, what to change; the traceback adds nothing.
            fail(PROG, e, code=1)
        raise
    write_status(run_dir, "ok", best_val_loss=summary.get("best_val_loss"))
    return objective(run, summary) if run.sweep.objective else summary


def skip_invalid_requested(argv: list[str], jobs: list[list[str]]) -> bool:
    """``sweep.skip_invalid`` as the sweep's jobs compose it (command line or a config file)."""
    flags, _, config_name = split_argv(argv)
    if not ("-m" in flags or "--multirun" in flags):
        return False
    with hydra_context():
        for job in jobs:
            try:
                return compose_job(job, config_name).sweep.skip_invalid is True
            except HydraException:
                continue
    return False


def preflight(argv: list[str]) -> None:
    """Exit 2 with one line per invalid job, unless the sweep asked to skip them."""
    try:
        armed(os.environ.get(FAULT_ENV))  # read at the first fault point, mid-training: checked before anything starts
        jobs, invalid = check_jobs(argv)
    except ConfigError as e:
        fail(PROG, e)
    if not invalid:
        return
    sweeping = len(jobs) > 1
    skip = sweeping and len(invalid) < len(jobs) and skip_invalid_requested(argv, jobs)
    verb = "skipping" if skip else "error"
    for bad in invalid:
        prefix = f"[{' '.join(bad.overrides)}] " if sweeping else ""
        print(f"{PROG}: {verb}: {prefix}{bad.error}", file=sys.stderr)
    if skip:
        print(
            f"{PROG}: {len(invalid)} of {len(jobs)} sweep jobs are invalid; running the other "
            f"{len(jobs) - len(invalid)}",
            file=sys.stderr,
        )
        # The SweepSummary callback leaves them out of the launch and reports them.
        sweep.note_skipped([(bad.overrides, str(bad.error)) for bad in invalid])
        return
    if sweeping:
        hint = "" if len(invalid) == len(jobs) else " (sweep.skip_invalid=true runs the valid ones)"
        print(
            f"{PROG}: {len(invalid)} of {len(jobs)} sweep jobs are invalid; nothing was started{hint}", file=sys.stderr
        )
    sys.exit(2)


def main() -> None:
    argv = sys.argv[1:]
    warm = None
    if wants_check(argv):
        preflight(argv)
        # The sweep is valid: its parallel workers can import torch while Hydra composes the jobs.
        warm = prestart_workers(checked_launcher())
    try:
        run_job()
    except BaseException:
        if warm is not None:
            warm.cancel()
        raise
    # Set by the SweepSummary callback once every job of a multirun has reported.
    if sweep.any_failing(sweep.last_summary):
        sys.exit(1)


if __name__ == "__main__":
    main()
