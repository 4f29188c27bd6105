"""What a job prints: our lines, not Lightning's start-up chatter."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path


def test_a_job_prints_our_lines_not_lightnings_chatter(
    tmp_path: Path, tiny: list[str], cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    proc = cli(
        "mhaexp-train", *tiny, "trainer.max_steps=10", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for chatter in (
        "GPU available",
        "TPU available",
        "HPU available",
        "💡",
        "litlogger",
        "litmodels",
        "`Trainer.fit` stopped",
    ):
        assert chatter not in out, chatter
    assert f"run directory : {tmp_path / 'run'}" in proc.stdout
