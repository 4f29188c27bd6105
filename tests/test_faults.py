"""Resume, checkpoints and faults, with real training processes."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from mhaexp.checkpoint import read_checkpoint
from mhaexp.errors import ConfigError

BIN = Path(sys.executable).parent
# This file's runs: the shared tiny run (tests/conftest.py), with these on top.
EXTRA = [
    "data.batch_size=32",
    "trainer.max_steps=60",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=1",
    "logger=csv",
]


def env_for(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "MHAEXP_CACHE": str(tmp_path / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


@pytest.fixture
def train(cli: Callable[..., subprocess.CompletedProcess]) -> Callable[..., subprocess.CompletedProcess]:
    """``train(args, tmp_path, check=True)``: ``mhaexp-train`` through the ``cli`` fixture."""

    def run(args: list[str], tmp_path: Path, check: bool = True) -> subprocess.CompletedProcess:
        proc = cli("mhaexp-train", *args, cwd=tmp_path, env=env_for(tmp_path))
        if check:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    return run


def logged_steps(run_dir: Path) -> list[int]:
    """Steps in a live run's metrics.csv; [] while it is missing or half-written (the CSV logger rewrites
    the whole file when a new column, such as the first val/loss, appears)."""
    try:
        return list(losses(run_dir))
    except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError, KeyError, ValueError):
        return []


def losses(run_dir: Path) -> dict[int, float]:
    """train/loss by step; a step logged twice (before a kill and again after resume) keeps its last value."""
    df = pd.read_csv(run_dir / "metrics.csv").dropna(subset=["train/loss"])
    return {int(s): float(v) for s, v in zip(df["step"], df["train/loss"], strict=True)}


def test_sigkill_then_resume_gives_the_uninterrupted_curve(
    tmp_path: Path, tiny: list[str], train: Callable[..., subprocess.CompletedProcess]
) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train([*tiny, *EXTRA, f"hydra.run.dir={whole}"], tmp_path)
    kill_after = random.Random().randint(22, 48)
    proc = subprocess.Popen(
        [str(BIN / "mhaexp-train"), *tiny, *EXTRA, f"hydra.run.dir={broken}"],
        cwd=tmp_path,
        env=env_for(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if max(logged_steps(broken), default=-1) >= kill_after:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(losses(broken))
    assert killed_at < 59
    out = train([*tiny, *EXTRA, f"hydra.run.dir={broken}", "resume=auto"], tmp_path)
    assert "resuming from" in out.stderr
    expected, got = losses(whole), losses(broken)
    print(f"killed after step {killed_at}; {len(got)} logged steps compared")
    assert sorted(got) == sorted(expected) == list(range(60))
    assert got == expected  # bit-exact, not approximately equal
    assert json.loads((broken / "summary.json").read_text())["global_step"] == 60


SAVER = """
import sys, torch
from mhaexp.training.checkpointing import AtomicCheckpointIO
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
io = AtomicCheckpointIO() if sys.argv[2] == "atomic" else TorchCheckpointIO()
print("saving", flush=True)
while True:
    io.save_checkpoint({"big": torch.randn(64, 1024, 1024), "mhaexp": {}, "state_dict": {}}, sys.argv[1])
"""


@pytest.mark.parametrize("io", ["atomic", "plain"])
def test_kill_during_save_leaves_previous_checkpoint_loadable(io: str, tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"step": 7, "mhaexp": {}, "state_dict": {}}, path)
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path), io], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    size = path.stat().st_size
    deadline = time.monotonic() + 60
    # Kill once bytes of the new checkpoint are on disk: the atomic writer's temporary file,
    # or the plain writer's target itself.
    while time.monotonic() < deadline:
        writing = (
            [p for p in tmp_path.iterdir() if p.name != "last.ckpt"]
            if io == "atomic"
            else ([path] if path.stat().st_size != size else [])
        )
        if writing and writing[0].exists() and writing[0].stat().st_size > 0:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        intact = torch.load(path, weights_only=False)["step"] == 7
    except Exception:
        intact = False
    # The plain writer is the control: it shows that this test can catch a torn write.
    assert intact is (io == "atomic")
    if io == "atomic":
        # SIGKILL leaves the half-written temporary behind; resume must never take it for a checkpoint.
        assert not [p for p in tmp_path.glob("*.ckpt") if p.name != "last.ckpt"]


def test_truncated_or_empty_checkpoint_is_named_and_auto_skips_it(
    tmp_path: Path, tiny: list[str], train: Callable[..., subprocess.CompletedProcess]
) -> None:
    run = tmp_path / "run"
    train([*tiny, *EXTRA, "trainer.max_steps=20", f"hydra.run.dir={run}"], tmp_path)
    good = run / "checkpoints" / "last.ckpt"
    data = good.read_bytes()
    truncated = run / "checkpoints" / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    empty = run / "hpc_ckpt_9.ckpt"
    empty.write_bytes(b"")
    for bad in (truncated, empty):
        with pytest.raises(ConfigError) as err:
            read_checkpoint(bad, "resume")
        assert str(bad) in str(err.value)
        proc = train([*tiny, *EXTRA, f"resume={bad}"], tmp_path, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and str(bad) in lines[0], proc.stderr
    os.utime(good, (time.time() - 100, time.time() - 100))  # make the damaged files the newest
    proc = train([*tiny, *EXTRA, "trainer.max_steps=30", f"hydra.run.dir={run}", "resume=auto"], tmp_path)
    assert "skipping" in proc.stderr and f"resuming from {run / 'checkpoints'}" in proc.stderr
    assert json.loads((run / "summary.json").read_text())["global_step"] == 30


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_wandb_falls_back_offline_and_training_completes(
    tmp_path: Path, tiny: list[str], cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    env = {**env_for(tmp_path), "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}", "WANDB_API_KEY": "x" * 40}
    env.pop("WANDB_MODE")
    run = tmp_path / "run"
    args = [
        *tiny,
        *EXTRA,
        "logger=wandb",
        "logger.mode=online",
        "logger.init_timeout=5",
        "trainer.max_steps=10",
        f"hydra.run.dir={run}",
    ]
    start = time.monotonic()
    proc = cli("mhaexp-train", *args, cwd=tmp_path, env=env)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cannot be reached (Connection refused)" in proc.stderr and "logging offline" in proc.stderr
    assert "credentials" not in proc.stderr  # an unreachable server is not a rejected key
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert json.loads((run / "summary.json").read_text())["global_step"] == 10
    print(f"online->offline fallback run took {elapsed:.1f}s")


def test_two_process_ddp_matches_one_process_loss_curve(
    tmp_path: Path, tiny: list[str], train: Callable[..., subprocess.CompletedProcess]
) -> None:
    """Same global batch (data.batch_size is global): 2 gloo ranks reproduce the 1-process curve."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*tiny, *EXTRA, "trainer.max_steps=20", "trainer.val_check_interval=20"]
    train([*args, f"hydra.run.dir={one}"], tmp_path)
    train([*args, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={two}"], tmp_path)
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == list(range(20))
    worst = max(abs(a[s] - b[s]) for s in a)
    print(f"max |loss_1proc - loss_2proc| over 20 steps: {worst:.2e}")
    assert worst < 1e-5


def test_non_finite_loss_stops_with_one_line_naming_the_step_and_fails_the_wandb_run(
    tmp_path: Path,
    wandb_records: Callable[[Path], list[dict]],
    tiny: list[str],
    train: Callable[..., subprocess.CompletedProcess],
) -> None:
    run = tmp_path / "run"
    args = [*tiny, *EXTRA, "logger=wandb", "optim.lr=1e12", "trainer.gradient_clip_val=null", f"hydra.run.dir={run}"]
    proc = train(args, tmp_path, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mhaexp-train: error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(errors) == 1 and "train loss is nan at step" in errors[0] and "before the optimizer step" in errors[0]
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    records = wandb_records(next((run / "wandb").glob("offline-run-*")))
    exits = [r["exit"] for r in records if r["type"] == "exit"]
    assert exits and exits[-1]["exit_code"] == 1  # the W&B run is marked failed


def test_a_malformed_fault_setting_is_refused_before_anything_starts(cli, tiny: list[str], tmp_path: Path) -> None:
    env = {**env_for(tmp_path), "MHAEXP_FAULT": "chekpoint:2"}
    proc = cli("mhaexp-train", *tiny, *EXTRA, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "MHAEXP_FAULT" in lines[0] and "chekpoint:2" in lines[0] and "checkpoint" in lines[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
