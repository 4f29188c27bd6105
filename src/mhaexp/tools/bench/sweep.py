"""Benchmark section ``sweep``: jobs per hour of a 4-job sweep, parallel launcher against sequential.

``python -m mhaexp.tools.bench --sections sweep``. The same sweep of the default model
(``model.n_heads=1,2,4,8``, each job cut to ``STEPS`` steps, analysis and W&B offline on as in
``make train``) runs through the real ``mhaexp-train -m`` twice per repeat: with Hydra's basic
launcher (one job after another, each on every core) and with ``hydra/launcher=parallel``
(``n_jobs`` = min(4, cores) side by side, cores shared out). The two alternate, so load from other
processes falls on both. The data cache is built once beforehand, so neither pays for it.

Rows: jobs per hour of each, and their ratio (target ``>= 1.25`` on 2 cores; on larger machines
it should approach the number of job slots).

What the ratio can reach is set by the machine, not by the launcher: a job's training steps on 1 thread
against the same steps on every core. So the section also measures, in the same run and on the same
models (each sequential job's own checkpoint), one optimizer step of every job at ``cores`` threads
alone and at ``cores // slots`` threads with ``slots`` such processes side by side:

* ``thread-scaling ceiling`` = slots x (step time on every core) / (step time side by side). If the
  jobs were nothing but training steps, the sweep ratio would be this.
* ``launcher efficiency`` = sweep ratio / ceiling: what the launcher (and the jobs' own serial parts)
  keeps of that. Near 1 means the launcher loses nothing and a missed target is the hardware's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mhaexp
from mhaexp.errors import ArgumentParser
from mhaexp.rundir import CHECKPOINT_DIR, LAST_CHECKPOINT, SUMMARY_FILE, job_config_path
from mhaexp.tools.bench.harness import Args, Row, SectionTimeoutError, block_seconds, register, spread

STEPS = 300
QUICK_STEPS = 30
CEILING_STEPS, QUICK_CEILING_STEPS = 20, 2  # timed optimizer steps per job model (after WARM_STEPS)
WARM_STEPS = 3
HEADS = "1,2,4,8"  # the sweep's jobs: one per model.n_heads value
TARGET = ">= 1.25"


def train_command() -> list[str]:
    """``mhaexp-train`` beside this interpreter, or its module where the entry point is not installed."""
    exe = Path(sys.executable).parent / "mhaexp-train"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mhaexp.cli.train"]


def cli_env(root: Path, **extra: str) -> dict[str, str]:
    """The CLI runs' environment: full Hydra errors, W&B offline, a data cache under ``root``, and these
    sources first on the path (so a checkout that is not the installed one runs itself)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "offline", "MHAEXP_CACHE": str(root / "cache")}
    env.update(extra)
    src = str(Path(mhaexp.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


def run_cli(args: list[str], root: Path, env: dict[str, str], what: str, deadline: float | None = None) -> float:
    """Wall seconds of ``mhaexp-train <args>`` run in ``root``. Fails, naming ``what``, when the run fails or
    when ``deadline`` (a ``time.perf_counter()`` reading) leaves it under 5 s."""
    timeout = None
    if deadline is not None:
        timeout = deadline - time.perf_counter()
        if timeout < 5:
            raise SectionTimeoutError(f"no time left for the {what} sweep")
    start = time.perf_counter()
    p = subprocess.run(train_command() + args, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{what} sweep exited {p.returncode}: {(p.stdout + p.stderr).strip()[-2000:]}")
    return time.perf_counter() - start


def common_overrides(steps: int, extra: tuple[str, ...] = ()) -> list[str]:
    """Every job's overrides: ``extra``, then ``steps`` training steps with no progress bar."""
    return [*extra, f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false"]


def warm_up(root: Path, env: dict[str, str], common: list[str], deadline: float | None = None) -> float:
    """One 1-step run, so the data cache exists before either launcher is timed."""
    return run_cli([*common, "trainer.max_steps=1", f"hydra.run.dir={root / 'warm'}"], root, env, "warm-up", deadline)


def sequential_and_parallel(
    root: Path,
    env: dict[str, str],
    common: list[str],
    heads: str,
    slots: int,
    tag: str = "",
    deadline: float | None = None,
) -> tuple[float, float]:
    """Wall seconds of one sweep (a job per ``model.n_heads`` value in ``heads``) through the real
    ``mhaexp-train -m``: Hydra's basic launcher (one job after another, into ``seq<tag>``), then
    ``hydra/launcher=parallel`` with ``slots`` jobs side by side (into ``par<tag>``)."""
    sweep = [f"model.n_heads={heads}"]
    seq = run_cli(["-m", *sweep, *common, f"hydra.sweep.dir={root / f'seq{tag}'}"], root, env, "sequential", deadline)
    launcher = ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={slots}"]
    par_dir = f"hydra.sweep.dir={root / f'par{tag}'}"
    par = run_cli(["-m", *launcher, *sweep, *common, par_dir], root, env, "parallel", deadline)
    return seq, par


def finished_jobs(sweep_dir: Path) -> int:
    """Jobs of a sweep that wrote their summary (a job that failed writes none)."""
    return len(list(sweep_dir.glob(f"*/{SUMMARY_FILE}")))


def step_seconds(job_dirs: list[Path], threads: int, steps: int) -> float:
    """Seconds of one optimizer step of each job's model, summed over the jobs, at ``threads`` torch threads.

    Each model is rebuilt from its job's last checkpoint and trained on random tokens of the job's own
    batch shape (``data.batch_size`` x ``data.seq_len``): the cost of a step does not depend on the values.
    """
    import torch
    from omegaconf import OmegaConf

    from mhaexp.nn.io import load_model
    from mhaexp.tools.bench.reference import train_step_fn

    torch.set_num_threads(threads)  # as mhaexp.training.parallel.share_cpu_threads does in a job
    total = 0.0
    for job in job_dirs:
        data = OmegaConf.load(job_config_path(job)).data
        model = load_model(job / CHECKPOINT_DIR / LAST_CHECKPOINT)
        step = train_step_fn(model, data.batch_size, data.seq_len, model.cfg.vocab_size, torch.device("cpu"), None)
        for _ in range(WARM_STEPS):
            step()
        total += block_seconds(step, steps, torch.device("cpu"))
    return total


def ceiling(job_dirs: list[Path], slots: int, steps: int, env: dict[str, str]) -> float:
    """slots x (a step of every job on every core) / (the same with ``slots`` processes side by side)."""
    cores = os.cpu_count() or 1

    def seconds(proc: subprocess.Popen[str]) -> float:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"step timing failed ({proc.returncode}): {err[-2000:]}")
        return float(json.loads(out.strip().splitlines()[-1])["step_s"])

    def popen(threads: int) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "mhaexp.tools.bench.sweep", "--threads", str(threads), "--steps", str(steps)]
        cmd += [str(j) for j in job_dirs]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    alone = seconds(popen(cores))
    side_by_side = [seconds(p) for p in [popen(max(1, cores // slots)) for _ in range(slots)]]
    return slots * alone / statistics.mean(side_by_side)


@register("sweep")
def bench_sweep(args: Args) -> list[Row]:
    steps = QUICK_STEPS if args.quick else STEPS
    repeats = 1 if args.quick else max(1, min(args.repeats, 2))
    slots = min(4, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="mhaexp-bench-sweep-") as tmp:
        root = Path(tmp)
        env = cli_env(root)
        common = common_overrides(steps)
        warm_up(root, env, common)
        seq, par, ceilings = [], [], []
        for r in range(repeats):
            seq_s, par_s = sequential_and_parallel(root, env, common, HEADS, slots, tag=str(r))
            seq.append(seq_s)
            par.append(par_s)
            jobs = sorted(d for d in (root / f"seq{r}").iterdir() if (d / CHECKPOINT_DIR).is_dir())
            ceilings.append(ceiling(jobs, slots, QUICK_CEILING_STEPS if args.quick else CEILING_STEPS, env))
    n_jobs = len(HEADS.split(","))
    per_hour = [n_jobs * 3600 / w for w in seq], [n_jobs * 3600 / w for w in par]
    ratios = [s / p for s, p in zip(seq, par, strict=True)]
    case = f"{n_jobs} jobs x {steps} steps, default model, {slots} slots on {os.cpu_count()} cores"
    extra = {"seq_wall_s": seq, "par_wall_s": par}
    efficiency = [r / c for r, c in zip(ratios, ceilings, strict=True)]
    return [
        Row("sweep", case, "sequential jobs/hour", *spread(per_hour[0]), unit="jobs/h", extra=extra),
        Row("sweep", case, "parallel jobs/hour", *spread(per_hour[1]), unit="jobs/h"),
        Row("sweep", case, "parallel / sequential", *spread(ratios), target=None if args.quick else TARGET),
        Row("sweep", case, "thread-scaling ceiling (training steps)", *spread(ceilings)),
        Row("sweep", case, "launcher efficiency (ratio / ceiling)", *spread(efficiency)),
    ]


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="internal: time one optimizer step of each job's model (JSON).")
    p.add_argument("jobs", nargs="+", type=Path, help="job run directories (each with its last checkpoint)")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--steps", type=int, default=CEILING_STEPS)
    ns = p.parse_args(argv)
    print(json.dumps({"step_s": step_seconds(ns.jobs, ns.threads, ns.steps)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
