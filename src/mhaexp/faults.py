"""Opt-in fault injection for the soak test (:mod:`mhaexp.tools.soak`): the process SIGKILLs itself the n-th
time it passes a named point, so that every kind of interruption can be hit on purpose, not only by chance.

``MHAEXP_FAULT=<point>:<n>`` arms it (``checkpoint:2``: die inside the second checkpoint write);
``MHAEXP_FAULT=count`` only counts the passes and prints them at exit. Unset, the default, :func:`point`
returns at once. The points, where the code calls :func:`point`:

* ``step``: inside a training step, after the forward pass and before the backward pass and optimizer step
  (:meth:`mhaexp.training.module.LMModule.training_step`);
* ``checkpoint``: inside a checkpoint write, the temporary file written and not yet renamed onto its name
  (:func:`mhaexp.checkpoint.atomic_save`);
* ``analysis``: inside an analysis step, ``head_metrics.csv`` appended and the role tables not yet written
  (:func:`mhaexp.analysis.callback.run_analysis`);
* ``wandb``: right after a record was handed to W&B (``FallbackWandbLogger.log_metrics``).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys

from mhaexp.errors import ConfigError

ENV = "MHAEXP_FAULT"
POINTS = ("step", "checkpoint", "analysis", "wandb")
COUNT = "count"  # MHAEXP_FAULT=count: kill nothing, print how often each point was passed at exit
# The lines the process prints (stderr) as it kills itself / exits counting; the soak driver reads them.
KILL_PREFIX = "mhaexp fault: SIGKILL at"
COUNT_PREFIX = "mhaexp fault: passes"

_passed: dict[str, int] = {}


def armed(value: str | None) -> tuple[str, int] | None:
    """The (point, n) of a ``MHAEXP_FAULT`` value; None when unset or counting; malformed: a ConfigError."""
    if not value or value == COUNT:
        return None
    name, _, count = value.partition(":")
    if name not in POINTS or not count.isdigit() or int(count) < 1:
        raise ConfigError(
            ENV, value, f"<point>:<n> with point one of {list(POINTS)} and n a positive integer, or {COUNT!r}"
        )
    return name, int(count)


def point(name: str, step: int | None = None) -> None:
    """Pass the point ``name`` (at training ``step``, where known); SIGKILL this process if it is the armed pass."""
    value = os.environ.get(ENV)
    if not value:
        return
    if not _passed:
        atexit.register(_report_passes, value)
    _passed[name] = _passed.get(name, 0) + 1
    target = armed(value)
    if target is not None and target == (name, _passed[name]):
        print(f"{KILL_PREFIX} {name}:{target[1]} step={step}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def _report_passes(value: str) -> None:
    if value == COUNT:
        print(COUNT_PREFIX, " ".join(f"{k}={v}" for k, v in sorted(_passed.items())), file=sys.stderr, flush=True)
