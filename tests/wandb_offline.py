"""What an offline W&B run really holds, read back with the real ``wandb leet inspect --json``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WANDB = Path(sys.executable).parent / "wandb"


def only_offline_run(run_dir: Path) -> Path:
    """The job's one offline W&B run directory."""
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, offline
    return offline[0]


def inspect_records(offline_run: Path) -> list[dict]:
    """Every record of an offline run, one dict per record (``type`` says which kind)."""
    out = subprocess.run(
        [str(WANDB), "leet", "inspect", "--json", str(offline_run)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]
