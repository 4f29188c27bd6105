"""Benchmark section ``sweep``: jobs per hour of a 4-job sweep, parallel launcher against sequential.

``python -m mhaexp.tools.bench --sections sweep``. The same sweep of the default model
(``model.n_heads=1,2,4,8``, each job cut to ``STEPS`` steps, analysis and W&B offline on as in
``make train``) runs through the real ``mhaexp-train -m`` twice per repeat: with Hydra's basic
launcher (one job after another, each on every core) and with ``hydra/launcher=parallel``
(``n_jobs`` = min(4, cores) side by side, cores shared out). The two alternate, so load from other
processes falls on both. The data cache is built once beforehand, so neither pays for it.

Rows: jobs per hour of each, and their ratio (target ``>= 1.25`` on 2 cores; on larger machines
it should approach the number of job slots).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mhaexp.tools.bench import Args, Row, register, spread

STEPS = 300
QUICK_STEPS = 30
SWEEP = ["model.n_heads=1,2,4,8"]
TARGET = ">= 1.25"


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall


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
        seq, par = [], []
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
    n_jobs = 4
    per_hour = [n_jobs * 3600 / w for w in seq], [n_jobs * 3600 / w for w in par]
    ratios = [s / p for s, p in zip(seq, par, strict=True)]
    case = f"4 jobs x {steps} steps, default model, {slots} slots on {os.cpu_count()} cores"
    extra = {"seq_wall_s": seq, "par_wall_s": par}
    return [
        Row("sweep", case, "sequential jobs/hour", *spread(per_hour[0]), unit="jobs/h", extra=extra),
        Row("sweep", case, "parallel jobs/hour", *spread(per_hour[1]), unit="jobs/h"),
        Row("sweep", case, "parallel / sequential", *spread(ratios), target=None if args.quick else TARGET),
    ]
