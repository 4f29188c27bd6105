"""mhaexp: config-driven experiments on how attention heads specialize."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Imported on first use, so that `mhaexp-train` can reject a bad command line before paying
# for torch: the names below are what `from mhaexp import X` offers.
_LAZY = {
    "MultiHeadAttention": "mhaexp.nn.attention",
    "ModelConfig": "mhaexp.nn.config",
    "Transformer": "mhaexp.nn.model",
    "load_model": "mhaexp.nn.io",
    "ConfigError": "mhaexp.errors",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mhaexp' has no attribute {name!r}")
