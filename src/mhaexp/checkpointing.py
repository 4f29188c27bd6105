"""Checkpoints that survive being killed: atomic writes, checks on load, and finding where to resume."""

from __future__ import annotations

import os
import random
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from mhaexp.errors import ConfigError
from mhaexp.lightning_module import CHECKPOINT_KEY


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, then rename over the target.

    A kill during ``torch.save`` then leaves the previous checkpoint untouched
    instead of a truncated file under its name.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def check_checkpoint(path: str | Path, field: str = "resume") -> dict[str, Any]:
    """Load a checkpoint on the CPU, or raise a one-line ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, str(path), "no such checkpoint file")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise ConfigError(field, str(path), "the file is empty or truncated, not a loadable checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a damaged archive fails in many ways inside torch.load
        raise ConfigError(field, str(path), f"the checkpoint could not be read ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise ConfigError(field, str(path), "not an mhaexp checkpoint (no 'mhaexp' entry)")
    return ckpt


def candidates(run_dir: Path) -> list[Path]:
    """Checkpoints a run directory holds, newest first (SLURM's hpc checkpoints included)."""
    found = list(run_dir.glob("hpc_ckpt_*.ckpt")) + list((run_dir / "checkpoints").glob("*.ckpt"))
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def newest_good_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` that loads; damaged ones are reported and passed over."""
    for path in candidates(run_dir):
        try:
            check_checkpoint(path)
        except ConfigError as e:
            print(f"mhaexp-train: warning: skipping {e}", file=sys.stderr)
            continue
        return path
    return None


class RNGState(pl.Callback):
    """Save and restore the Python, NumPy and torch generators with each checkpoint.

    Lightning restores weights, optimizer and loop counters but not these, so
    dropout masks after a resume would otherwise differ from an uninterrupted run.
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # Tensors and plain types only: Lightning loads checkpoints with weights_only=True.
        checkpoint["rng"] = {
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(gauss)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get("rng")
        if not state:
            return
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
