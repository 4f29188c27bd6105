"""Sweeps end to end: the real `mhaexp-train -m`, W&B offline runs, the sweep summary, SLURM requeue."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mhaexp.cli.preflight import check_jobs

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
# This file's runs: the shared tiny run (tests/conftest.py), with these on top.
EXTRA = ["data.n_train=500", "trainer.max_steps=20", "logger=csv"]
SLURM_ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NTASKS": "1",
    "SLURM_JOB_NAME": "mhaexp",
    "SLURM_NODELIST": "localhost",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_sweeps")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for the module: the tiny grammar data is generated once, not per process."""
    return tmp_path_factory.mktemp("cache")


def cli_env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "HYDRA_FULL_ERROR"}
    return {**env, "WANDB_MODE": "offline", "MHAEXP_CACHE": str(cache), **extra}


@pytest.fixture(scope="module")
def train(cli: Callable[..., subprocess.CompletedProcess]) -> Callable[..., subprocess.CompletedProcess]:
    """``train(args, cwd, env)``: ``mhaexp-train`` through the ``cli`` fixture."""

    def run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
        return cli("mhaexp-train", *args, cwd=cwd, env=env, timeout=timeout)

    return run


def sweep_dirs(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in cwd.glob("multirun/*/*/multirun.yaml"))


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/status.json"))


def summary_of(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep_summary.json").read_text())


def run_and_config(records: list[dict]) -> tuple[dict, dict]:
    """(the run record, the merged config) of a job's offline W&B records."""
    run = next(r["run"] for r in records if r["type"] == "run")
    config = dict(run.get("config", {}).get("update", {}))
    for r in records:
        if r["type"] == "config":
            config.update(r["config"]["update"])
    return run, config


def test_sweep_gives_each_job_its_own_dir_and_wandb_run_grouped_by_sweep(
    tmp_path: Path,
    cache: Path,
    wandb_run: Callable[[Path], Path],
    wandb_records: Callable[[Path], list[dict]],
    tiny: list[str],
    train: Callable[..., subprocess.CompletedProcess],
) -> None:
    proc = train(
        ["-m", *tiny, *EXTRA, "logger=wandb", "trainer.max_steps=10", "model.n_heads=2,4", "seed=0,1"],
        tmp_path,
        cli_env(cache),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [sweep_dir] = sweep_dirs(tmp_path)
    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 4
    runs = {job: run_and_config(wandb_records(wandb_run(job))) for job in jobs}
    assert len({run["run_id"] for run, _ in runs.values()}) == 4
    assert {run["run_group"] for run, _ in runs.values()} == {sweep_dir.name}
    for job, (_, config) in runs.items():
        assert job.name.endswith(f"_h{config['n_heads']}")  # each W&B run carries its own job's config
    summary = summary_of(sweep_dir)
    assert summary["counts"] == {"ok": 4, "failed": 0, "invalid": 0, "skipped": 0, "unfinished": 0}
    assert {j["dir"] for j in summary["jobs"]} == {job.name for job in jobs}
    assert f"sweep {sweep_dir.relative_to(tmp_path)}: 4 ok" in proc.stdout


def test_invalid_combinations_stop_the_sweep_before_anything_is_written(
    tmp_path: Path, cache: Path, tiny: list[str], train: Callable[..., subprocess.CompletedProcess]
) -> None:
    proc = train(["-m", *tiny, *EXTRA, "model.n_heads=3,4"], tmp_path, cli_env(cache))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 2, lines
    assert lines[0].startswith("mhaexp-train: error: [") and "model.n_heads=3 is invalid" in lines[0]
    assert lines[1] == (
        "mhaexp-train: 1 of 2 sweep jobs are invalid; nothing was started (sweep.skip_invalid=true runs the valid ones)"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory: pytest.TempPathFactory, cache: Path, tiny: list[str]) -> Iterator[dict]:
    """Two sweeps started at the same moment in one directory (tests 2, 3 and 4 read them).

    "skip": an invalid job left out by sweep.skip_invalid=true, a valid one that runs.
    "fail": a job whose loss goes non-finite at once (lr 1e12, no clipping) beside one that finishes.
    """
    cwd = tmp_path_factory.mktemp("two_sweeps")
    env = cli_env(cache)
    args = {
        "skip": ["-m", *tiny, *EXTRA, "model.n_heads=3,4", "sweep.skip_invalid=true"],
        "fail": ["-m", *tiny, *EXTRA, "optim.lr=3e-3,1e12", "trainer.gradient_clip_val=null"],
    }
    procs = {
        k: subprocess.Popen(
            [str(BIN / "mhaexp-train"), *a], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for k, a in args.items()
    }
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[k] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    yield {"cwd": cwd, **out}


def sweep_of(cwd: Path, marker: str) -> Path:
    """The sweep directory whose jobs were given the override ``marker``."""
    found = [d for d in sweep_dirs(cwd) if f"- {marker}\n" in (d / "multirun.yaml").read_text()]
    assert len(found) == 1, found
    return found[0]


def test_skip_invalid_runs_the_valid_jobs_and_reports_the_skipped(two_sweeps: dict) -> None:
    proc = two_sweeps["skip"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "mhaexp-train: skipping: [" in proc.stderr and "model.n_heads=3 is invalid" in proc.stderr
    assert "mhaexp-train: 1 of 2 sweep jobs are invalid; running the other 1" in proc.stderr
    sweep_dir = sweep_of(two_sweeps["cwd"], "sweep.skip_invalid=true")
    [job] = job_dirs(sweep_dir)  # the invalid job never got a run directory
    assert job.name.endswith("_h4")
    summary = summary_of(sweep_dir)
    assert summary["counts"]["ok"] == 1 and summary["counts"]["skipped"] == 1
    skipped = next(j for j in summary["jobs"] if j["status"] == "skipped")
    assert "model.n_heads=3" in skipped["overrides"] and "model.n_heads=3 is invalid" in skipped["error"]
    assert "skipped" in proc.stdout and "1 ok, 1 skipped" in proc.stdout


def test_a_failing_job_does_not_stop_the_others_and_the_exit_code_says_so(two_sweeps: dict) -> None:
    proc = two_sweeps["fail"]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "mhaexp-train: job failed: NonFiniteLossError" in proc.stderr
    summary = summary_of(sweep_of(two_sweeps["cwd"], "optim.lr=3e-3,1e12"))
    assert summary["counts"]["ok"] == 1 and summary["counts"]["failed"] == 1
    by_status = {j["status"]: j for j in summary["jobs"]}
    assert "optim.lr=0.003" in by_status["ok"]["overrides"]
    assert "optim.lr=1000000000000.0" in by_status["failed"]["overrides"]
    assert by_status["failed"]["error"].startswith("NonFiniteLossError: train loss is")
    assert " at step " in by_status["failed"]["error"]
    ok_dir = Path(summary["sweep_dir"]) / by_status["ok"]["dir"]
    assert json.loads((two_sweeps["cwd"] / ok_dir / "summary.json").read_text())["global_step"] == 20


def test_sweeps_started_together_never_share_a_directory(two_sweeps: dict) -> None:
    cwd = two_sweeps["cwd"]
    skip, fail = sweep_of(cwd, "sweep.skip_invalid=true"), sweep_of(cwd, "optim.lr=3e-3,1e12")
    assert skip != fail and len(sweep_dirs(cwd)) == 2
    print(f"sweep dirs: {skip.relative_to(cwd)}  {fail.relative_to(cwd)}")
    for sweep_dir, marker in ((skip, "sweep.skip_invalid"), (fail, "optim.lr=")):
        for job in job_dirs(sweep_dir):
            assert marker in (job / ".hydra" / "overrides.yaml").read_text(), job


def wait_for(predicate: Callable[[], object], timeout: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_slurm_requeue_saves_hpc_checkpoint_and_rerun_resumes_from_it(
    tmp_path: Path, cache: Path, tiny: list[str], train: Callable[..., subprocess.CompletedProcess]
) -> None:
    """SIGUSR1 on a run under (faked) SLURM: Lightning checkpoints, requeues; the same job id resumes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = {**cli_env(cache), **SLURM_ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    args = [*tiny, *EXTRA, "trainer.max_steps=40", "trainer.val_check_interval=10"]

    first = subprocess.Popen(
        [str(BIN / "mhaexp-train"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # A periodic checkpoint means fit is running, so Lightning's SIGUSR1 handler is in place.
        wait_for(lambda: list(cwd.glob("runs/slurm-4242_*/checkpoints/*.ckpt")), 240, first, "a checkpoint")
        [run_dir] = list(cwd.glob("runs/slurm-4242_*"))
        first.send_signal(signal.SIGUSR1)
        wait_for(lambda: calls.is_file() and (run_dir / "hpc_ckpt_1.ckpt").is_file(), 60, first, "the requeue")
    finally:
        first.kill()  # SIGTERM is ignored under SLURM (Lightning bypasses it); SLURM itself would kill
        first.communicate(timeout=60)
    assert calls.read_text().split() == ["requeue", "4242"]

    import torch

    hpc_step = torch.load(run_dir / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert 10 <= hpc_step < 40

    # Set the first attempt's log aside, so metrics.csv holds only what the rerun logs.
    (run_dir / "metrics.csv").rename(run_dir / "metrics.first.csv")
    # The first attempt may outlive the signal and write a later step checkpoint (SLURM kills it only
    # at the time limit); the requeued job must continue from the newest one, the hpc one or later.
    from mhaexp.training.checkpointing import newest_good_checkpoint

    newest = newest_good_checkpoint(run_dir)
    assert newest is not None
    resume_step = torch.load(newest, map_location="cpu", weights_only=False)["global_step"]
    assert resume_step >= hpc_step
    again = train(args, cwd, env)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert list(cwd.glob("runs/*")) == [run_dir]  # same job id, same run directory
    assert f"mhaexp-train: resuming from {newest}" in out, out[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 40
    log = pd.read_csv(run_dir / "metrics.csv")
    train_steps = log["step"][log["train/loss"].notna()].astype(int).tolist()
    first_log = pd.read_csv(run_dir / "metrics.first.csv")
    first_steps = first_log["step"][first_log["train/loss"].notna()].astype(int).tolist()
    # The rerun continued at the checkpoint's step (steps are logged 0-based, every 5th) through to the end.
    # Lightning saves the hpc checkpoint from inside a step: when that step had already written its row
    # (the checkpoint's step itself, logged by the first attempt), the rerun's first row is the next one.
    at = next(s for s in range(4, 40, 5) if s >= resume_step)
    assert train_steps[0] == at or (train_steps[0] == at + 5 and at in first_steps), (resume_step, train_steps)
    assert train_steps == list(range(train_steps[0], 40, 5)), train_steps
    # No logging step is missing from both attempts' logs.
    assert sorted(set(first_steps) | set(train_steps)) == list(range(4, 40, 5)), (first_steps, train_steps)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "ok"


# ---- configs for other sweep drivers: cheap checks, no training ---------------------------------------------------


def test_wandb_sweep_config_parameters_are_valid_overrides() -> None:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    spec = yaml.safe_load((ROOT / "experiments" / "wandb_sweep.yaml").read_text())
    assert spec["metric"] == {"name": "best_val_loss", "goal": "minimize"}
    assert Path(spec["program"]).name == "mhaexp-train" and spec["command"][:2] == ["${program}", "${args_no_hyphens}"]
    extra = spec["command"][2:]
    params = spec["parameters"]
    assert {"model.n_heads", "model.n_kv_heads", "seed"} <= set(params)
    values = {k: p["values"] if "values" in p else [p["value"]] for k, p in params.items()}
    # What the agent puts on the command line for one run: plain Hydra overrides.
    first = {k: {"value": v[0]} for k, v in values.items()}
    args = create_sweep_command_args({"args": first})["args_no_hyphens"]
    assert args == [f"{k}={v[0]}" for k, v in values.items()]
    jobs, invalid = check_jobs([*args, *extra])
    assert len(jobs) == 1 and not invalid, invalid
    # Every point of the grid, checked in one pass as `-m` would expand it.
    jobs, invalid = check_jobs(["-m", *(f"{k}={','.join(map(str, v))}" for k, v in values.items()), *extra])
    assert len(jobs) == len(list(itertools.product(*values.values())))
    assert not invalid, [(i.overrides, str(i.error)) for i in invalid]


def test_slurm_launcher_preset_renders_the_sbatch_lines_requeue_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import submitit
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from mhaexp.cli.preflight import hydra_context

    (tmp_path / "srun").write_text("#!/bin/sh\n")  # submitit's SLURM executor looks for srun
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with hydra_context():
        cfg = compose(
            "train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=2"], return_hydra_config=True
        )
        HydraConfig.instance().set_config(cfg)
        params = dict(instantiate(cfg.hydra.launcher).params)
    # The plugin's own split of launcher params into executor and sbatch parameters.
    executor = submitit.AutoExecutor(
        folder=tmp_path, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sbatch = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    for line in (
        "--signal=USR1@120",
        "--requeue",
        "--ntasks-per-node=2",
        "--gpus-per-node=2",
        "--time=240",
        "--job-name=mhaexp",
    ):
        assert f"#SBATCH {line}\n" in sbatch, sbatch
    assert executor._executor.max_num_timeout > 0
