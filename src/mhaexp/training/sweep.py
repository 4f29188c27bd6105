"""What became of every job of a ``-m`` sweep: ``sweep_summary.json`` and a short table.

:class:`SweepSummary` is a Hydra callback (registered in ``conf/train.yaml``). At the end
of a multirun it reads each job's ``status.json`` rather than Hydra's in-memory job
returns, so it works the same for the local launcher and for submitit/SLURM (where the
jobs ran in other processes) and can be rerun by hand on a sweep whose submitting
process died: ``python -m mhaexp.training.sweep multirun/<date>/<time>_<id>``.

Job states:
  ok          finished; ``best_val_loss`` is copied from its status
  failed      raised at run time (say a non-finite loss); ``error`` says what
  invalid     its config was rejected when the job started
  skipped     invalid and left out before launch (``sweep.skip_invalid=true``); no run dir
  unfinished  has a run dir but no status: killed, timed out, or still running
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mhaexp.rundir import (
    HYDRA_DIR,
    HYDRA_SETTINGS_FILE,
    JOB_OVERRIDES_FILE,
    SKIPPED_FILE,
    STATUS_FILE,
    SWEEP_SUMMARY_FILE,
)

STATES = ("ok", "failed", "invalid", "skipped", "unfinished")
# States a CI script should treat as a broken sweep. Skipped jobs were left out on request.
FAILING = ("failed", "invalid", "unfinished")

# Set by mhaexp.cli.train before Hydra starts (same process), read when the sweep starts.
_skipped: list[dict[str, Any]] = []
# The last summary written in this process: mhaexp.cli.train turns it into the exit code.
last_summary: dict[str, Any] | None = None


def note_skipped(jobs: list[tuple[list[str], str]]) -> None:
    """Record jobs left out of the sweep as (overrides, reason) for the summary.

    Only task overrides are kept, as in each run dir's ``.hydra/overrides.yaml``.
    """
    _skipped[:] = [
        {"overrides": [o for o in overrides if o in job_key(overrides)], "error": reason} for overrides, reason in jobs
    ]


class SweepSummary(Callback):
    """Leaves the noted invalid jobs out of the launch; summarizes every job at the end."""

    def __init__(self) -> None:
        self._restore: Callable[[], None] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _skipped:
            return
        # On disk, not only in memory: a summary rebuilt later by hand still knows them.
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SKIPPED_FILE).write_text(json.dumps(_skipped, indent=2))
        self._restore = launch_without([s["overrides"] for s in _skipped])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global last_summary
        if self._restore is not None:
            self._restore()
            self._restore = None
        sweep_dir = Path(str(config.hydra.sweep.dir))
        last_summary = write_summary(sweep_dir)
        print(format_table(last_summary))


def job_key(overrides: list[str]) -> frozenset[str]:
    """What identifies a job both in preflight's expansion and in Hydra's sweeper: its task overrides.

    Preflight's job lists also hold ``hydra.*``/``hydra/...`` overrides and may order the keys
    differently from the sweeper, which sees only the task overrides.
    """
    return frozenset(str(o) for o in overrides if not str(o).lstrip("+~").startswith(("hydra.", "hydra/")))


def launch_without(jobs: list[list[str]]) -> Callable[[], None]:
    """Make Hydra's basic sweeper leave these jobs out of its expansion; return the undo.

    Filtering at expansion (rather than letting each invalid job fail at its start) keeps
    them off a SLURM queue, where each would wait for an allocation only to exit. Done here,
    at multirun start, because Hydra's plugin scan re-executes the sweeper's module and
    would discard a patch made earlier. A job the filter fails to match (another sweeper,
    say) still runs, hits its ConfigError at start and is recorded as ``invalid``: a miss
    costs a job slot, not correctness.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    drop = {job_key(job) for job in jobs}
    expand = BasicSweeper.split_arguments

    def split_arguments(overrides: list[Any], max_batch_size: int | None) -> list[list[list[str]]]:
        batches = [[job for job in batch if job_key(job) not in drop] for batch in expand(overrides, max_batch_size)]
        return [batch for batch in batches if batch]

    BasicSweeper.split_arguments = staticmethod(split_arguments)  # type: ignore[method-assign]

    def restore() -> None:
        BasicSweeper.split_arguments = staticmethod(expand)  # type: ignore[method-assign]

    return restore


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Run directories of a sweep in job order (Hydra writes ``.hydra/`` before the job starts)."""
    dirs = [p.parent.parent for p in sweep_dir.glob(f"*/{HYDRA_DIR}/{JOB_OVERRIDES_FILE}")]
    return sorted(dirs, key=lambda d: (job_num(d) is None, job_num(d) or 0, d.name))


def job_num(run_dir: Path) -> int | None:
    hydra_yaml = run_dir / HYDRA_DIR / HYDRA_SETTINGS_FILE
    if hydra_yaml.is_file():
        num = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.job.num", default=None)
        if isinstance(num, int):
            return num
    head = run_dir.name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def read_job(run_dir: Path) -> dict[str, Any]:
    overrides = OmegaConf.to_container(OmegaConf.load(run_dir / HYDRA_DIR / JOB_OVERRIDES_FILE))
    job: dict[str, Any] = {"num": job_num(run_dir), "dir": run_dir.name, "overrides": overrides}
    status_file = run_dir / STATUS_FILE
    if not status_file.is_file():
        return {**job, "status": "unfinished", "error": None}
    try:
        status = json.loads(status_file.read_text())
    except json.JSONDecodeError as e:  # a job killed while writing it
        return {**job, "status": "unfinished", "error": f"unreadable status.json: {e}"}
    return {**job, **status, "error": status.get("error")}


def summarize(sweep_dir: Path) -> dict[str, Any]:
    sweep_dir = Path(sweep_dir)
    jobs = [read_job(d) for d in job_dirs(sweep_dir)]
    skipped_file = sweep_dir / SKIPPED_FILE
    if skipped_file.is_file():
        for s in json.loads(skipped_file.read_text()):
            jobs.append(
                {"num": None, "dir": None, "overrides": s["overrides"], "status": "skipped", "error": s["error"]}
            )
    counts = {state: sum(j["status"] == state for j in jobs) for state in STATES}
    return {"sweep_dir": str(sweep_dir), "counts": counts, "jobs": jobs}


def write_summary(sweep_dir: Path) -> dict[str, Any]:
    summary = summarize(sweep_dir)
    path = Path(sweep_dir) / SWEEP_SUMMARY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(path)
    return summary


def any_failing(summary: dict[str, Any] | None) -> bool:
    return bool(summary) and any(summary["counts"].get(s, 0) for s in FAILING)


def varying(jobs: list[dict[str, Any]]) -> set[str]:
    """Override keys whose value differs between jobs: the sweep's axes, worth showing."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for o in job["overrides"]:
            key, _, value = str(o).partition("=")
            values.setdefault(key, set()).add(value)
    return {k for k, v in values.items() if len(v) > 1 or any(k not in _keys(j) for j in jobs)}


def _keys(job: dict[str, Any]) -> set[str]:
    return {str(o).partition("=")[0] for o in job["overrides"]}


def format_table(summary: dict[str, Any], error_width: int = 100) -> str:
    jobs, counts = summary["jobs"], summary["counts"]
    head = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    lines = [f"sweep {summary['sweep_dir']}: {head or 'no jobs'}"]
    axes = varying(jobs)
    for j in jobs:
        shown = " ".join(o for o in map(str, j["overrides"]) if o.partition("=")[0] in axes) or "-"
        num = "-" if j["num"] is None else str(j["num"])
        if j["status"] == "ok" and j.get("best_val_loss") is not None:
            detail = f"best_val_loss {j['best_val_loss']:.4f}"
        else:
            detail = (j.get("error") or "").splitlines()[0][:error_width] if j.get("error") else ""
        lines.append(f"  {num:>3}  {j['status']:<10}  {shown:<30}  {detail}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Rebuild a sweep's summary by hand (a SLURM sweep whose submitting process did not wait)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m mhaexp.training.sweep <sweep dir>", file=sys.stderr)
        sys.exit(2)
    summary = write_summary(Path(args[0]))
    print(format_table(summary))
    sys.exit(1 if any_failing(summary) else 0)


if __name__ == "__main__":
    main()
