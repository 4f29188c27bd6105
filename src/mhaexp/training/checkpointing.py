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
from pytorch_lightning.callbacks import ModelCheckpoint

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


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (``step{N}.ckpt`` every ``every_n_train_steps``, ``last.ckpt``), plus one
    at the end of training, always, so ``last.ckpt`` is the model the run ends with.

    Lightning writes only on its step interval and, at the end, ``last.ckpt`` only if it wrote nothing at
    all: ``max_steps=700`` with an interval of 250 left ``last.ckpt`` at step 500, while the end-of-run
    analysis and the summary described step 700. ``saved_steps`` names the step each file this process
    wrote holds (file name in the checkpoint folder -> global step), for the run record.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.saved_steps: dict[str, int] = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Skipped when the interval already wrote this step (or on a fast_dev_run / outside fit).
        if not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self.saved_steps[Path(filepath).name] = trainer.global_step

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        self.saved_steps.pop(Path(filepath).name, None)


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
