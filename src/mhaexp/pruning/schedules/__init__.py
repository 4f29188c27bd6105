"""Pruning schedules: when to prune how many heads. One class per ``pruning.kind``, each in its own file.

Adding a schedule: write ``<kind>.py`` with a :class:`Schedule` subclass (``kind``, ``validate``,
``on_step``, ``at_end``), register it in :data:`SCHEDULES` below, add its keys to
:class:`mhaexp.pruning.config.PruningConfig` (``only=["<kind>"]``) and ``conf/pruning/<kind>.yaml``.
The callback, the preflight check and the config's list of kinds read the registry.
"""

from __future__ import annotations

from mhaexp.pruning.schedules.base import (
    CRITERIA,
    SCOPES,
    Head,
    Pruner,
    Schedule,
    allocate_per_layer,
    fraction_to_count,
    max_prunable,
    select_heads,
)
from mhaexp.pruning.schedules.gradual import Gradual, gradual_fraction, gradual_target
from mhaexp.pruning.schedules.iterative import Iterative, iterative_counts, iterative_steps
from mhaexp.pruning.schedules.one_shot import OneShot, one_shot_target

# The registry: pruning.kind -> its schedule (the kinds that rank heads and prune to a target count).
SCHEDULES: dict[str, type[Schedule]] = {s.kind: s for s in (OneShot, Iterative, Gradual)}

__all__ = [
    "CRITERIA",
    "SCHEDULES",
    "SCOPES",
    "Head",
    "Pruner",
    "Schedule",
    "allocate_per_layer",
    "fraction_to_count",
    "gradual_fraction",
    "gradual_target",
    "iterative_counts",
    "iterative_steps",
    "max_prunable",
    "one_shot_target",
    "select_heads",
]
