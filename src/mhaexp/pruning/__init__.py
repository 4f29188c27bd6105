"""Head pruning (masked and physical) and MHA -> GQA/MQA conversion.

* :mod:`.config` - the checked pruning config (:func:`validate_pruning`; torch-free, for the CLI's sweep check).
* :mod:`.schedules` - one schedule class per kind (when to prune how many heads) in a registry, and
  which heads go (pure step math; torch-free).
* :mod:`.step` - one pruning step: rank, select, mask, evaluate (the callback's and the curve's).
* :mod:`.criteria` - pruning criteria by name (the measures are :mod:`mhaexp.heads.importance`).
* :mod:`.l0` - hard-concrete gates with an expected-L0 penalty (Voita et al. 2019).
* :mod:`.surgery` - physical removal (GQA-aware), K/V head conversion.
* :mod:`.callback` - the Lightning callback that drives a schedule; :mod:`.l0_callback` - the L0 one;
  :mod:`.recorder` - what both record and write; :mod:`.held_out` - held-out batches, the module's
  objective, logging from any hook (also used by ``init_from``).
* :mod:`.curves` - pruning curves (CSV, PNG, overlays).

Names are imported on first use, so ``from mhaexp.pruning import validate_pruning`` does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PruningCallback": "callback",
    "build_pruning_callback": "callback",
    "L0Callback": "l0_callback",
    "PruningConfig": "config",
    "validate_pruning": "config",
    "SCHEDULES": "schedules",
    "prune_step": "step",
    "gradual_fraction": "schedules",
    "iterative_counts": "schedules",
    "select_heads": "schedules",
    "compute_pruning_curve": "curves",
    "plot_pruning_curves": "curves",
    "write_curve_csv": "curves",
    "head_scores": "criteria",
    "random_scores": "criteria",
    "role_scores": "criteria",
    "HardConcreteGate": "l0",
    "attach_l0_gates": "l0",
    "fold_l0_gates": "l0",
    "apply_mask": "surgery",
    "convert_to_gqa": "surgery",
    "parse_heads": "surgery",
    "prune_checkpoint": "surgery",
    "prune_heads": "surgery",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"mhaexp.pruning.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mhaexp.pruning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
