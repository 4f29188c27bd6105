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

from mhaexp.errors import ArgumentParser
from mhaexp.rundir import CHECKPOINT_DIR, LAST_CHECKPOINT, job_config_path
from mhaexp.tools.bench import Args, Row, register, spread

STEPS = 300
QUICK_STEPS = 30
CEILING_STEPS, QUICK_CEILING_STEPS = 20, 2  # timed optimizer steps per job model (after WARM_STEPS)
WARM_STEPS = 3
SWEEP = ["model.n_heads=1,2,4,8"]
TARGET = ">= 1.25"


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def step_seconds(job_dirs: list[Path], threads: int, steps: int) -> float:
    """Seconds of one optimizer step of each job's model, summed over the jobs, at ``threads`` torch threads.

    Each model is rebuilt from its job's last checkpoint and trained on random tokens of the job's own
    batch shape (``data.batch_size`` x ``data.seq_len``): the cost of a step does not depend on the values.
    """
    import torch
    from omegaconf import OmegaConf

    from mhaexp.nn.io import load_model
    from mhaexp.tools.bench import train_step_fn

    torch.set_num_threads(threads)  # as mhaexp.training.parallel.share_cpu_threads does in a job
    total = 0.0
    for job in job_dirs:
        data = OmegaConf.load(job_config_path(job)).data
        model = load_model(job / CHECKPOINT_DIR / LAST_CHECKPOINT)
        step = train_step_fn(model, data.batch_size, data.seq_len, model.cfg.vocab_size, torch.device("cpu"), None)
        for _ in range(WARM_STEPS):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        total += (time.perf_counter() - start) / steps
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
        cmd = [sys.executable, "-m", "mhaexp.tools.bench_sweep", "--threads", str(threads), "--steps", str(steps)]
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
    train = str(Path(sys.executable).parent / "mhaexp-train")
    with tempfile.TemporaryDirectory(prefix="mhaexp-bench-sweep-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "WANDB_MODE": "offline", "MHAEXP_CACHE": str(root / "cache")}
        common = [f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false"]
        _run([train, *common, "trainer.max_steps=1", f"hydra.run.dir={root / 'warm'}"], root, env)
        seq, par, ceilings = [], [], []
        for r in range(repeats):
            seq.append(_run([train, "-m", *SWEEP, *common, f"hydra.sweep.dir={root / f'seq{r}'}"], root, env))
            par.append(
                _run(
                    [
                        train,
                        "-m",
                        "hydra/launcher=parallel",
                        f"hydra.launcher.n_jobs={slots}",
                        *SWEEP,
                        *common,
                        f"hydra.sweep.dir={root / f'par{r}'}",
                    ],
                    root,
                    env,
                )
            )
            jobs = sorted(d for d in (root / f"seq{r}").iterdir() if (d / CHECKPOINT_DIR).is_dir())
            ceilings.append(ceiling(jobs, slots, QUICK_CEILING_STEPS if args.quick else CEILING_STEPS, env))
    n_jobs = 4
    per_hour = [n_jobs * 3600 / w for w in seq], [n_jobs * 3600 / w for w in par]
    ratios = [s / p for s, p in zip(seq, par, strict=True)]
    case = f"4 jobs x {steps} steps, default model, {slots} slots on {os.cpu_count()} cores"
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
