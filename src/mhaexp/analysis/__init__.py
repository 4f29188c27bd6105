"""Per-head analysis during training: probe collection, roles, exports, plots, W&B logging, the callback.

The measures themselves live in :mod:`mhaexp.heads`; this package runs the model on probe data,
feeds them, classifies roles and writes what it found.

Names are imported on first use, so the CLI's config check (``mhaexp.analysis.config``) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"HeadRole": "roles", "classify_heads": "roles", "role_counts": "roles", "roles_table": "roles"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"mhaexp.analysis.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mhaexp.analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
