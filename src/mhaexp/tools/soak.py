"""Soak test of resume (``make soak``): train, SIGKILL at a random moment, resume with ``resume=auto``, N times;
each resumed run must end with the numbers of an uninterrupted run, bit for bit on the CPU.

``python -m mhaexp.tools.soak --n 10 [--seed 0] [--out soak_out] [override ...]``

1. A reference run of the soak config (:data:`SOAK_RUN`: the default model, data, logger (W&B offline)
   and analysis, cut to a short run that validates, checkpoints and analyses often) counts how often it
   passes each fault point of :mod:`mhaexp.faults`.
2. Each of the N runs is killed once, by a plan drawn from a seeded RNG: mostly at the n-th pass of a
   point (a training step, a checkpoint write, an analysis step, a W&B write; n uniform over the passes the
   reference counted), else by a timer at a random moment of the reference's training time. It then resumes
   with ``resume=auto`` into the same run directory.
3. The resumed run's ``metrics.csv`` and ``analysis/head_metrics.csv`` must equal the reference's byte for
   byte, and its ``summary.json`` best val loss exactly. Any difference fails the soak (exit 1).

The table (run, plan, point hit, step killed, resumed from, identical) goes to stdout and ``soak.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mhaexp.checkpoint import read_checkpoint
from mhaexp.faults import COUNT, COUNT_PREFIX, ENV, KILL_PREFIX, POINTS
from mhaexp.rundir import ANALYSIS_DIR, HEAD_METRICS_FILE, METRICS_FILE, SUMMARY_FILE
from mhaexp.training.checkpointing import newest_good_checkpoint

# The soak config: the default model, data, logger and analysis; a short run that passes every fault point
# several times (4 validations and checkpoint saves, 6 analyses, a W&B record every 5 steps).
SOAK_RUN = (
    "trainer.max_steps=80",
    "trainer.val_check_interval=20",
    "trainer.log_every_n_steps=5",
    "trainer.limit_val_batches=2",
    "analysis.every_n_steps=15",
)
TIMER_SHARE = 0.2  # share of the runs killed by a timer rather than at a named point
POLL_SECONDS = 0.05
TIMER_TRIES = 4  # a timer kill that came after the run ended is tried again this often, at half the delay
COMPARED = (METRICS_FILE, f"{ANALYSIS_DIR}/{HEAD_METRICS_FILE}")
TRAIN = Path(sys.executable).parent / "mhaexp-train"


@dataclass
class Outcome:
    """One soak run: how it was killed, where, and whether the resumed run matched the reference."""

    run: int
    plan: str  # "<point>:<n>" or "timer:<seconds>s"
    hit: str | None = None  # the point the process died at (None: a timer kill)
    step_killed: int | None = None  # the fault's step, or for a timer the last step metrics.csv held
    resumed_from: int | None = None  # the global step of the checkpoint resume=auto took (None: from scratch)
    resumed_path: str | None = None
    identical: bool = False
    differences: list[str] = field(default_factory=list)


def run_train(
    args: list[str], run_dir: Path, env: dict[str, str], fault: str | None = None, kill_after: float | None = None
) -> tuple[subprocess.CompletedProcess, float | None]:
    """``mhaexp-train`` into ``run_dir``, and the seconds it trained (from its first ``metrics.csv`` row to its end).

    ``fault``: ``MHAEXP_FAULT``. ``kill_after``: SIGKILL it after that many seconds of training. Its own
    process group: a kill also takes the W&B service it started, as the loss of the machine would.
    """
    env = {k: v for k, v in env.items() if k != ENV} | ({ENV: fault} if fault else {})
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [str(TRAIN), *args, f"hydra.run.dir={run_dir}"], env=env, stdout=out, stderr=err, start_new_session=True
        )
        started = None
        while proc.poll() is None:
            if started is None and (run_dir / METRICS_FILE).is_file():
                started = time.monotonic()
            if kill_after is not None and started is not None and time.monotonic() - started >= kill_after:
                break
            time.sleep(POLL_SECONDS)
        if proc.poll() is None or proc.returncode == -signal.SIGKILL:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        trained = time.monotonic() - started if started is not None else None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read()), trained


def passes(stderr: str) -> dict[str, int]:
    """The pass counts a ``MHAEXP_FAULT=count`` run printed at exit."""
    line = next(line for line in stderr.splitlines() if line.startswith(COUNT_PREFIX))
    counts = dict(item.split("=") for item in line[len(COUNT_PREFIX) :].split())
    return {k: int(v) for k, v in counts.items()}


def killed_at(stderr: str) -> tuple[str, int | None] | None:
    """(point, step) of the kill line a faulted process printed, or None."""
    m = re.search(rf"^{re.escape(KILL_PREFIX)} (\w+):\d+ step=(\w+)$", stderr, flags=re.M)
    if m is None:
        return None
    return m.group(1), None if m.group(2) == "None" else int(m.group(2))


def last_logged_step(run_dir: Path) -> int | None:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        found = [int(float(r["step"])) for r in csv.DictReader(f) if r.get("step")]
    return max(found, default=None)


def resume_point(run_dir: Path) -> tuple[Path | None, int | None]:
    """The checkpoint ``resume=auto`` should take in ``run_dir`` and its global step (None: it starts afresh)."""
    path = newest_good_checkpoint(run_dir)
    return path, None if path is None else int(read_checkpoint(path, "resume")["global_step"])


def resumed(stderr: str) -> str | None:
    """The checkpoint a resumed run said it resumed from."""
    m = re.search(r"^mhaexp-train: resuming from (.+)$", stderr, flags=re.M)
    return m.group(1).strip() if m else None


def differences(reference: Path, run_dir: Path) -> list[str]:
    """What differs between a resumed run and the reference: the compared files byte for byte, best val loss."""
    found = []
    for name in COMPARED:
        a, b = reference / name, run_dir / name
        if not b.is_file():
            found.append(f"{name}: missing")
            continue
        ra, rb = a.read_bytes().splitlines(), b.read_bytes().splitlines()
        if ra != rb:
            first = next((i for i, (x, y) in enumerate(zip(ra, rb, strict=False)) if x != y), min(len(ra), len(rb)))
            found.append(f"{name}: {len(rb)} lines against {len(ra)}, first difference at line {first + 1}")
    best = [json.loads((d / SUMMARY_FILE).read_text()).get("best_val_loss") for d in (reference, run_dir)]
    if best[0] != best[1]:
        found.append(f"best_val_loss: {best[1]!r} against {best[0]!r}")
    return found


def plan_kills(n: int, counts: dict[str, int], seconds: float, seed: int) -> list[str]:
    """N kill plans from a seeded RNG: the points in turn (so each is hit), n uniform over its passes;
    every so often a timer at a random moment of the ``seconds`` the reference trained."""
    rng = random.Random(seed)
    points = [p for p in POINTS if counts.get(p)]
    plans = []
    for i in range(n):
        if rng.random() < TIMER_SHARE:
            plans.append(f"timer:{rng.uniform(0.05, 0.95) * seconds:.1f}s")
        else:
            point = points[i % len(points)]
            plans.append(f"{point}:{rng.randint(1, counts[point])}")
    return plans


def kill_and_resume(
    run: int, plan: str, args: list[str], run_dir: Path, reference: Path, env: dict[str, str]
) -> Outcome:
    """One soak run: train under ``plan`` until killed, resume with ``resume=auto``, compare with ``reference``."""
    outcome = Outcome(run, plan)
    if plan.startswith("timer:"):
        delay = float(plan[len("timer:") : -1])
        # The machine may be faster than when the reference ran: a run that ends first is run again,
        # killed sooner.
        for _ in range(TIMER_TRIES):
            first, _ = run_train(args, run_dir, env, kill_after=delay)
            if first.returncode != 0:
                break
            shutil.rmtree(run_dir)
            delay /= 2
        outcome.plan = f"timer:{delay:.1f}s"
    else:
        first, _ = run_train(args, run_dir, env, fault=plan)
    if first.returncode == 0:
        outcome.differences.append("the run finished before it was killed")
        return outcome
    if first.returncode != -signal.SIGKILL:
        outcome.differences.append(f"the run failed before its kill (exit {first.returncode}): {first.stderr[-1500:]}")
        return outcome
    hit = killed_at(first.stderr)
    if hit is not None:
        outcome.hit, outcome.step_killed = hit
    else:
        outcome.step_killed = last_logged_step(run_dir)
    path, outcome.resumed_from = resume_point(run_dir)
    second, _ = run_train([*args, "resume=auto"], run_dir, env)
    if second.returncode != 0:
        outcome.differences.append(f"resume failed (exit {second.returncode}): {second.stderr[-1500:]}")
        return outcome
    outcome.resumed_path = resumed(second.stderr)
    if outcome.resumed_path != (str(path) if path else None):
        outcome.differences.append(f"resume=auto took {outcome.resumed_path}, not the newest good checkpoint {path}")
    outcome.differences += differences(reference, run_dir)
    outcome.identical = not outcome.differences
    return outcome


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| run | kill plan | point hit | step killed | resumed from step | identical |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        hit = o.hit or "timer"
        lines.append(
            f"| {o.run} | {o.plan} | {hit} | {o.step_killed} | {o.resumed_from} | {'yes' if o.identical else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mhaexp.tools.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10, help="runs to kill and resume (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill plans (default 0)")
    p.add_argument("--out", type=Path, default=Path("soak_out"), help="directory for the runs and soak.json")
    p.add_argument(
        "--plans", default=None, help="comma-separated kill plans instead of random ones (checkpoint:3,timer:40s)"
    )
    p.add_argument("overrides", nargs="*", help="mhaexp-train overrides on top of the soak config")
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"--n={a.n} is invalid: give at least 1 run")
    out = a.out.resolve()
    if out.exists() and any(out.iterdir()):
        p.error(f"--out={str(a.out)!r} is invalid: not empty; give a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    args = [*SOAK_RUN, *a.overrides]
    env = {**os.environ, "WANDB_MODE": "offline", "MHAEXP_CACHE": str(out / "cache")}
    reference = out / "reference"
    ref, seconds = run_train(args, reference, env, fault=COUNT)
    if ref.returncode != 0 or seconds is None:
        print(f"soak: error: the reference run failed (exit {ref.returncode}):\n{ref.stderr[-3000:]}", file=sys.stderr)
        return 1
    counts = passes(ref.stderr)
    print(f"reference: trained {seconds:.0f}s, passes {counts}", flush=True)
    outcomes = []
    plans = a.plans.split(",") if a.plans else plan_kills(a.n, counts, seconds, a.seed)
    for i, plan in enumerate(plans):
        outcome = kill_and_resume(i, plan, args, out / f"run{i:02d}", reference, env)
        outcomes.append(outcome)
        print(f"run {i}: {plan}: {'identical' if outcome.identical else '; '.join(outcome.differences)}", flush=True)
    report: dict[str, Any] = {
        "config": args,
        "n": len(outcomes),
        "seed": a.seed,
        "reference_seconds": round(seconds, 1),
        "passes": counts,
        "runs": [asdict(o) for o in outcomes],
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    print(table(outcomes))
    good = sum(o.identical for o in outcomes)
    print(f"{good}/{len(outcomes)} resumed runs identical to the uninterrupted run")
    return 0 if good == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
