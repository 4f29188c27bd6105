"""Checkpoints that survive being killed: atomic writes, checks on load, and finding where to resume."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from mhaexp.checkpoint import atomic_save, read_checkpoint
from mhaexp.errors import ConfigError
from mhaexp.rundir import CHECKPOINT_DIR


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, then rename over the target.

    A kill during ``torch.save`` then leaves the previous checkpoint untouched
    instead of a truncated file under its name.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_save(
            checkpoint,
            path,
            lambda obj, tmp: super(AtomicCheckpointIO, self).save_checkpoint(obj, tmp, storage_options),
        )


def candidates(run_dir: Path) -> list[Path]:
    """Checkpoints a run directory holds, newest first (SLURM's hpc checkpoints included)."""
    found = list(run_dir.glob("hpc_ckpt_*.ckpt")) + list((run_dir / CHECKPOINT_DIR).glob("*.ckpt"))
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def newest_good_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of ``run_dir`` that loads; damaged ones are reported and passed over."""
    for path in candidates(run_dir):
        try:
            read_checkpoint(path, "resume")
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
