"""Our checkpoint files: the key that marks them, the one reader, and the atomic writer.

A checkpoint is Lightning's dict plus ``ckpt[CHECKPOINT_KEY] = {"model": <ModelConfig as a dict>,
"version": 1, ...}``, which is what rebuilds the model without the Hydra config. Every command that
opens one (resume, ``init_from``, ``mhaexp-analyze``, ``mhaexp-prune``) goes through
:func:`read_checkpoint`, so a missing, truncated or foreign file gives the same one-line error.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from mhaexp import faults
from mhaexp.errors import ConfigError

CHECKPOINT_KEY = "mhaexp"


def read_checkpoint(path: str | os.PathLike[str], field: str = "ckpt", mmap: bool = False) -> dict[str, Any]:
    """Load one of our checkpoints on the CPU, or raise a ConfigError naming ``field`` and the file.
    ``mmap``: the tensors stay in the file until read (for a look at the config of a large model)."""
    import torch  # here only: config checks that never open a checkpoint should not pay for torch

    p = Path(path)
    if not p.is_file():
        raise ConfigError(field, str(path), "no such file; give the path of an mhaexp checkpoint (.ckpt)")
    if p.stat().st_size == 0 or not zipfile.is_zipfile(p):
        raise ConfigError(field, str(path), "the file is empty or truncated, not a loadable checkpoint")
    try:
        # Our checkpoints carry plain hyper-parameter dicts next to the tensors; Lightning loads
        # local files the same way.
        ckpt = torch.load(p, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - a damaged archive fails in many ways inside torch.load
        raise ConfigError(field, str(path), f"the checkpoint could not be read ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise ConfigError(
            field,
            str(path),
            f"not an mhaexp checkpoint (no '{CHECKPOINT_KEY}' entry); "
            "use a .ckpt written by mhaexp-train or mhaexp-prune",
        )
    return ckpt


def atomic_save(obj: Any, path: str | os.PathLike[str], save: Any = None) -> Path:
    """Write through a temporary file in the same folder, then rename over ``path``.

    A kill during the write leaves the previous file untouched instead of a torn one under its name.
    ``save(obj, tmp_path)`` defaults to ``torch.save``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if save is None:
        import torch

        save = torch.save
    try:
        save(obj, tmp)
        faults.point("checkpoint", obj.get("global_step") if isinstance(obj, dict) else None)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
