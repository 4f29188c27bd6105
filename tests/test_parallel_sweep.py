"""`hydra/launcher=parallel`: sweep jobs side by side, with every guarantee of the sequential sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pandas as pd
import pytest
import torch

# Module-scoped fixtures: one worker runs the whole module under pytest-xdist (make test).
pytestmark = pytest.mark.xdist_group("test_parallel_sweep")

# This file's runs: the shared tiny run (tests/conftest.py), with these on top.
EXTRA = ["data.n_train=400", "trainer.max_steps=20"]


@pytest.fixture(scope="module")
def sweep(
    tmp_path_factory: pytest.TempPathFactory, tiny: list[str], cli: Callable[..., subprocess.CompletedProcess]
) -> dict:
    """One parallel sweep: two identical jobs (seed 0 twice), one other seed, one job that diverges.

    A fresh, empty data cache: all four jobs build the same dataset at the same time.
    """
    root = tmp_path_factory.mktemp("parallel")
    args = [
        "-m",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={root / 'sweep'}",
        *tiny,
        *EXTRA,
        "logger=wandb",
        "seed=0,0,1",
        "optim.lr=3e-3,1e12",
    ]
    proc = cli("mhaexp-train", *args, cwd=root, timeout=600)
    return {"proc": proc, "root": root, "sweep": root / "sweep"}


def test_every_job_ran_in_its_own_run_dir_and_the_summary_says_how(sweep: dict) -> None:
    proc = sweep["proc"]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # the diverging jobs failed
    summary = json.loads((sweep["sweep"] / "sweep_summary.json").read_text())
    assert summary["counts"]["ok"] == 3 and summary["counts"]["failed"] == 3
    dirs = sorted(p for p in sweep["sweep"].iterdir() if (p / ".hydra").is_dir())
    assert len(dirs) == 6
    for d in dirs:
        status = json.loads((d / "status.json").read_text())["status"]
        assert status in ("ok", "failed")
        if status == "ok":
            record = json.loads((d / "summary.json").read_text())
            assert record["global_step"] == 20
            # Two job slots on this machine's cores: each job had its share of the threads.
            assert record["torch_threads"] == max(1, (os.cpu_count() or 1) // 2)
            # What the numbers depend on beyond config and seed, for comparing runs across machines.
            assert record["torch_version"] == torch.__version__
            assert record["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
            runs = list((d / "wandb").glob("offline-run-*"))
            assert len(runs) == 1  # one W&B run per job


def test_identical_jobs_give_identical_numbers_side_by_side(sweep: dict) -> None:
    by_seed: dict[str, list[pd.DataFrame]] = {}
    for d in sweep["sweep"].iterdir():
        if (d / "status.json").is_file() and json.loads((d / "status.json").read_text())["status"] == "ok":
            overrides = (d / ".hydra" / "overrides.yaml").read_text()
            seed = "seed=1" if "seed=1" in overrides else "seed=0"
            by_seed.setdefault(seed, []).append(pd.read_csv(d / "metrics.csv"))
    a, b = by_seed["seed=0"]
    pd.testing.assert_frame_equal(a, b)  # bit-identical, though they ran at the same time
    assert not by_seed["seed=1"][0]["train/loss"].dropna().equals(a["train/loss"].dropna())


def test_a_concurrent_first_build_of_the_data_cache_leaves_one_dataset(sweep: dict) -> None:
    cache = sweep["root"] / "cache"
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1 and entries[0].startswith("grammar-"), entries  # no half-built leftovers
    assert (cache / entries[0] / "dataset_dict.json").is_file()


def test_prestarted_workers_are_the_ones_the_launcher_then_runs_jobs_in() -> None:
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed

    from mhaexp.cli.preflight import check_jobs, checked_launcher
    from mhaexp.training.parallel import prestart_workers

    _, invalid = check_jobs(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=0,1,2,3"])
    assert not invalid
    launcher = checked_launcher()
    warm = prestart_workers(launcher)
    assert warm is not None
    warm.join(timeout=300)
    assert len(set(warm.pids)) == 2 and os.getpid() not in warm.pids  # one warm-up in each worker
    # What the joblib plugin's launch() hands to joblib.Parallel, built from the same composed config.
    cfg = {k: v for k, v in launcher.items() if k != "_target_"}
    cfg["backend"] = "loky"
    process_joblib_cfg(cfg)
    pids = Parallel(**cfg)(delayed(os.getpid)() for _ in range(6))
    assert set(pids) <= set(warm.pids)  # no fresh workers: the jobs ran where the imports were done


def test_one_job_at_a_time_starts_no_workers() -> None:
    from mhaexp.cli.preflight import check_jobs, checked_launcher
    from mhaexp.training.parallel import prestart_workers

    check_jobs(["-m", "seed=0,1"])  # the basic launcher: jobs run in this process
    assert prestart_workers(checked_launcher()) is None
    check_jobs(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=1", "seed=0,1"])
    assert prestart_workers(checked_launcher()) is None
    check_jobs(["seed=0"])  # a single run
    assert checked_launcher() == {}


def test_the_launching_process_does_not_load_torch() -> None:
    # It checks and composes every job and hands them to the workers: torch (seconds to import)
    # would only delay the first job.
    heavy = ("torch", "pytorch_lightning", "wandb")
    code = f"import sys, mhaexp.cli.train; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_sweep_that_stops_before_its_jobs_kills_the_warming_workers() -> None:
    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor

    from mhaexp.training.parallel import prestart_workers

    get_reusable_executor(reuse=True).shutdown(wait=True, kill_workers=True)  # no warm workers left over
    launcher = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}
    warm = prestart_workers(launcher)
    assert warm is not None and warm.is_alive()  # still importing torch in the workers
    warm.cancel()
    warm.join(timeout=60)
    assert not warm.is_alive() and warm.pids == []  # the warm-up ended with its workers, unfinished
    # The next Parallel gets fresh workers.
    assert len(Parallel(n_jobs=2, backend="loky")(delayed(os.getpid)() for _ in range(2))) == 2
