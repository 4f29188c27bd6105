"""Shared test plumbing: real configs composed by Hydra, the real CLIs as subprocesses, one tiny run,
and what an offline W&B run holds (read back with the real ``wandb leet inspect --json``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig

BIN = Path(sys.executable).parent

# The one small-run override list: a 2-layer d=32 model on a few hundred grammar sentences, a few dozen
# steps, validating often, no analysis. Tests append what they need (later overrides win in Hydra).
TINY_RUN = (
    "model=tiny",
    "data.n_train=640",
    "data.n_val=64",
    "data.n_probe=16",
    "trainer.max_steps=30",
    "trainer.val_check_interval=10",
    "trainer.log_every_n_steps=5",
    "analysis=off",
)


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    """A copy of :data:`TINY_RUN` to extend."""
    return list(TINY_RUN)


@pytest.fixture
def compose() -> Iterator[Callable[[list[str]], DictConfig]]:
    """``compose(overrides)``: the job config ``mhaexp-train`` would build, from the real ``conf/``."""
    from mhaexp.cli.preflight import compose_job, hydra_context

    with hydra_context():
        yield lambda overrides=(): compose_job(list(overrides))


def cli_env(cwd: Path, **extra: str) -> dict[str, str]:
    """W&B offline and a data cache private to the test."""
    return {**os.environ, "WANDB_MODE": "offline", "MHAEXP_CACHE": str(cwd / "cache"), **extra}


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess]:
    """``cli("mhaexp-train", *args, cwd=..., env=..., timeout=...)``: run one of our entry points for real."""

    def run(
        entry: str, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / entry), *args],
            cwd=cwd,
            env=env if env is not None else cli_env(Path(cwd)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def only_offline_run(run_dir: Path) -> Path:
    """The job's one offline W&B run directory."""
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, offline
    return offline[0]


def inspect_records(offline_run: Path) -> list[dict]:
    """Every record of an offline run, one dict per record (``type`` says which kind)."""
    out = subprocess.run(
        [str(BIN / "wandb"), "leet", "inspect", "--json", str(offline_run)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def wandb_run() -> Callable[[Path], Path]:
    """``wandb_run(run_dir)``: the job's one offline W&B run directory."""
    return only_offline_run


@pytest.fixture(scope="session")
def wandb_records() -> Callable[[Path], list[dict]]:
    """``wandb_records(offline_run)``: every record the offline run holds."""
    return inspect_records
