"""Running a study: its sweeps through the real ``mhaexp-train``, into one study directory.

A study directory (``studies/<name>/`` by default) holds::

    runs/<stage>/<job>/     one run directory per job, as mhaexp-train writes it (plus sweep_summary.json)
    logs/<stage>.log        the stage's terminal output
    eval/*.json             measurements a study makes on the trained checkpoints (e.g. masked accuracy)
    model/                  --model <source>: the pretrained model imported (mhaexp-import) and measured
    *.png                   the study's figures
    verdict.json report.md  the verdicts, computed from the files above only

Every run of a study starts from an empty ``runs/``: a verdict never mixes runs of two budgets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mhaexp.errors import ConfigError
from mhaexp.rundir import STATUS_FILE, job_config_path
from mhaexp.training.sweep import job_dirs, read_job

MARKER = ".mhaexp-study"  # marks a directory this module made, so a rerun may empty it
VERDICT_FILE = "verdict.json"
BUDGET_FILE = "budget.json"  # the budget the runs were trained with, written first: --verdict-only reads it
REPORT_FILE = "report.md"
RUNS_DIR, LOGS_DIR, EVAL_DIR, MODEL_DIR = "runs", "logs", "eval", "model"
MODEL_CKPT = "model.ckpt"  # MODEL_DIR/MODEL_CKPT: --model's import, its tokenizer beside it
SMOKE_STEPS = 24  # STUDY_SMOKE=1: enough steps for every stage to run end to end, not to learn
# Small datasets to build (data.n_probe follows analysis.probe_sequences).
SMOKE_DATA = ("data.n_train=512", "data.n_val=64", "analysis.probe_sequences=16")


class StudyError(RuntimeError):
    """A stage failed; the message is one line naming the stage and the first failing job."""


@dataclass(frozen=True)
class Budget:
    """How much a study trains. ``steps=None`` and ``seeds=None`` take the study's defaults."""

    steps: int | None = None
    seeds: int | None = None
    smoke: bool = False
    n_jobs: int = 2  # sweep jobs at once (hydra/launcher=parallel); 1 = sequential
    extra: tuple[str, ...] = ()  # overrides for every job, e.g. trainer=gpu
    model: str | None = None  # --model: a pretrained source (hub name or save_pretrained dir) measured, not trained

    def __post_init__(self) -> None:
        for name in ("steps", "seeds"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(name, v, "a positive int")
        if not isinstance(self.n_jobs, int) or self.n_jobs < 1:
            raise ConfigError("jobs", self.n_jobs, "a positive int")

    def n_steps(self, default: int) -> int:
        return SMOKE_STEPS if self.smoke else (self.steps or default)

    def seed_list(self, default: int = 2) -> list[int]:
        """Seeds 0..n-1 (one in a smoke run: it proves the path, the seed comparisons are unit-tested)."""
        return [0] if self.smoke else list(range(self.seeds or default))

    def interval(self, steps: int, points: int) -> int:
        """Steps between validations/analyses for ``points`` of them per run (3 in a smoke run)."""
        return max(1, steps // (3 if self.smoke else points))

    def scaled(self, default_steps: int, share: float) -> int:
        """A stage sized as a share of the main training budget (at least 1 step)."""
        return max(1, round(self.n_steps(default_steps) * share))


@dataclass
class StudyContext:
    """What a study's ``run`` and ``verdicts`` see: its directory, budget and the stages run so far."""

    name: str
    out: Path
    budget: Budget
    stage_seconds: dict[str, float] = field(default_factory=dict)
    echo: Callable[[str], None] = print

    @property
    def runs_dir(self) -> Path:
        return self.out / RUNS_DIR

    def eval_path(self, name: str) -> Path:
        path = self.out / EVAL_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def common_overrides(self) -> list[str]:
        # The W&B tag and group put every run of the study side by side in the W&B UI as well.
        common = [f"logger.tags=['study:{self.name}']"]
        if not any(o.startswith("logger=") and o != "logger=wandb" for o in self.budget.extra):
            common.append(f"logger.group=study-{self.name}")
        return [*common, *(SMOKE_DATA if self.budget.smoke else ()), *self.budget.extra]

    def sweep(self, stage: str, overrides: Sequence[str], timeout: int | None = None) -> list[Path]:
        """Run ``mhaexp-train -m <overrides>`` as stage ``stage``; the job run directories, in job order.

        Raises :class:`StudyError` when any job did not finish ``ok``.
        """
        sweep_dir = self.runs_dir / stage
        log = self.out / LOGS_DIR / f"{stage}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        launcher = ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={self.budget.n_jobs}"]
        cmd = [
            str(Path(sys.executable).parent / "mhaexp-train"),
            "-m",
            *overrides,
            *self.common_overrides(),
            *(launcher if self.budget.n_jobs > 1 else []),
            f"hydra.sweep.dir={sweep_dir}",
        ]
        self.echo(f"[{self.name}] {stage}: {' '.join(overrides)}")
        returncode, seconds = self._logged(stage, cmd, log, timeout)
        jobs = [read_job(d) for d in job_dirs(sweep_dir)]
        bad = [j for j in jobs if j["status"] != "ok"]
        if returncode != 0 or bad or not jobs:
            first = bad[0] if bad else None
            what = f"job {first['dir']}: {first['status']}: {first.get('error')}" if first else _last_line(log)
            raise StudyError(f"{self.name}: stage {stage} failed ({what}); see {log}")
        self.echo(f"[{self.name}] {stage}: {len(jobs)} jobs ok in {seconds:.0f} s")
        return job_dirs(sweep_dir)

    def command(self, stage: str, program: str, args: Sequence[str], timeout: int | None = None) -> None:
        """Run another mhaexp command (``mhaexp-import``, ``mhaexp-analyze``) as stage ``stage``, logged like a
        sweep; StudyError with the log's last line when it fails."""
        log = self.out / LOGS_DIR / f"{stage}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(Path(sys.executable).parent / program), *args]
        self.echo(f"[{self.name}] {stage}: {program} {' '.join(args)}")
        returncode, _ = self._logged(stage, cmd, log, timeout)
        if returncode != 0:
            raise StudyError(f"{self.name}: stage {stage} failed ({_last_line(log)}); see {log}")

    @property
    def model_ckpt(self) -> Path:
        """Where ``--model``'s source is imported (the tokenizer is saved beside it)."""
        return self.out / MODEL_DIR / MODEL_CKPT

    def import_model(self) -> Path:
        """``mhaexp-import`` of ``--model`` into :attr:`model_ckpt` (stage ``import``)."""
        assert self.budget.model is not None
        self.model_ckpt.parent.mkdir(parents=True, exist_ok=True)
        self.command("import", "mhaexp-import", [f"source={self.budget.model}", f"out={self.model_ckpt}"])
        return self.model_ckpt

    def _logged(self, stage: str, cmd: Sequence[str], log: Path, timeout: float | None) -> tuple[int, float]:
        """Run ``cmd`` with its output in ``log`` (the command line first); (exit code, seconds), the seconds
        also recorded as the stage's."""
        start = time.perf_counter()
        with log.open("w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            returncode = run_group(cmd, f, timeout)
        seconds = time.perf_counter() - start
        self.stage_seconds[stage] = round(seconds, 1)
        return returncode, seconds

    def stage_runs(self, stage: str) -> list[Path]:
        """The ok run directories of a finished stage, in job order (for ``verdicts``)."""
        return [d for d in job_dirs(self.runs_dir / stage) if _status(d) == "ok"]

    def rel(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.out.resolve()))

    def run_path(self, recorded: str) -> Path:
        """The run directory that a path recorded in one of this study's eval files names, inside this study.

        Eval files record where each run was when it was measured. A study directory copied or moved since
        must read its own runs, never the original's (a mixed result) nor fail: the path is re-rooted at its
        last ``runs/`` component, below which a study's layout is fixed (``runs/<stage>/<job>``).
        """
        parts = Path(recorded).parts
        if RUNS_DIR not in parts:
            raise StudyError(f"{recorded}: not a run of a study (no '{RUNS_DIR}/' in the path)")
        below = parts[len(parts) - parts[::-1].index(RUNS_DIR) :]
        return self.runs_dir.joinpath(*below)


def run_group(cmd: Sequence[str], log: Any, timeout: float | None = None) -> int:
    """Run ``cmd`` (output to the file ``log``) in a process group of its own and return its exit code.
    If this process is stopped meanwhile (SIGTERM, Ctrl-C, the timeout), the whole group is killed: the
    sweep and the parallel launcher's workers, which would otherwise go on training for a study nobody reads."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        raise


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        return None


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no output"


def run_config(run_dir: Path) -> DictConfig:
    """The job's composed config (``.hydra/config.yaml``)."""
    cfg = OmegaConf.load(job_config_path(run_dir))
    assert isinstance(cfg, DictConfig)
    return cfg


def prepare_out(out: Path) -> None:
    """Empty a previous run of this study (never a directory this module did not make)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError("--out", str(out), "an empty or new directory, or one a previous study run wrote")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("")


def budget_dict(budget: Budget) -> dict[str, Any]:
    d = asdict(budget)
    d["extra"] = list(budget.extra)
    return d


def write_budget(out: Path, budget: Budget, finished: bool) -> None:
    """``budget.json``: written unfinished before the first run and finished after the last, so that
    ``--verdict-only`` never reads a stopped study's partial runs as if they were all of them."""
    doc = {**budget_dict(budget), "finished": finished}
    (Path(out) / BUDGET_FILE).write_text(json.dumps(doc, indent=2) + "\n")


def recorded_budget(out: Path, n_jobs: int = 2) -> Budget:
    """The budget the runs in ``out`` were trained with (``budget.json``; a study directory from before it
    existed: the budget in ``verdict.json``). ConfigError if ``out`` holds no study's runs, or a stopped one's."""
    out = Path(out)
    bad = ConfigError("--out", str(out), "a directory a study run wrote (run the study without --verdict-only first)")
    if not (out / MARKER).is_file():
        raise bad
    try:
        path = out / BUDGET_FILE
        d = json.loads(path.read_text()) if path.is_file() else json.loads((out / VERDICT_FILE).read_text())["budget"]
        finished = d.get("finished", True)  # budget.json from before the flag: it cannot tell, trusted as then
        budget = Budget(
            steps=d["steps"],
            seeds=d["seeds"],
            smoke=bool(d["smoke"]),
            n_jobs=n_jobs,
            extra=tuple(d["extra"]),
            model=d.get("model"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        raise bad from None
    if finished is not True:
        raise ConfigError(
            "--out", str(out), "a study whose runs finished (these were stopped part way: rerun without --verdict-only)"
        )
    if not (out / (MODEL_DIR if budget.model else RUNS_DIR)).is_dir():
        raise bad
    return budget
