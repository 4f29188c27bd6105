"""Iterative pruning: rank, prune the lowest ``step_fraction`` of all heads, (fine-tune), repeat.

Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?", Sec. 4.2 / Fig. 3: heads are
pruned in steps of 10% by importance, re-estimated on held-out data before every step.
``K_i = min(K, i * d)`` after the i-th step, ``d = round(step_fraction * H)`` heads per step, steps
``finetune_steps`` apart from ``at_step``; it stops early when quality falls below ``quality_floor``
(the step that crossed it is undone).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mhaexp.pruning.schedules.base import Need, Pruner, Schedule, check_at_step, fraction_to_count

if TYPE_CHECKING:
    from mhaexp.pruning.config import PruningConfig


def iterative_counts(total: int, step_fraction: float, target: int) -> list[int]:
    """Cumulative pruned counts after each iterative step (Michel et al. 2019): ``d, 2d, ..., target``.

    ``d = max(1, round(step_fraction * total))``; the last step is cut to land on ``target``.
    """
    d = max(1, fraction_to_count(step_fraction, total))
    return [min(target, d * i) for i in range(1, math.ceil(target / d) + 1)] if target > 0 else []


def iterative_steps(at_step: int, n_iterations: int, finetune_steps: int) -> list[int]:
    """Training steps at which each iterative pruning step runs: ``at_step + i * finetune_steps``."""
    return [at_step + i * finetune_steps for i in range(n_iterations)]


class Iterative(Schedule):
    kind = "iterative"

    def __init__(self, cfg: PruningConfig, total: int) -> None:
        super().__init__(cfg, total)
        self.counts = iterative_counts(total, cfg.step_fraction, self.target)

    @classmethod
    def validate(cls, cfg: PruningConfig, total: int, target: int, max_steps: int, need: Need) -> None:
        check_at_step(cfg, max_steps, need)
        n = len(iterative_counts(total, cfg.step_fraction, target))
        if cfg.at_step is not None and cfg.finetune_steps > 0:
            end = cfg.at_step + n * cfg.finetune_steps
            need(
                "finetune_steps",
                end <= max_steps,
                f"the schedule ({n} pruning steps from step {cfg.at_step}, {cfg.finetune_steps} steps apart) ends "
                f"at step {end}, after trainer.max_steps={max_steps}",
            )
        if cfg.at_step is None:
            need(
                "finetune_steps",
                cfg.finetune_steps == 0,
                "must be 0 when pruning.at_step is null (pruning at the end of training leaves no steps to fine-tune)",
            )

    def on_step(self, pruner: Pruner, step: int) -> None:
        c = self.cfg
        # The next pruning step is due at iterative_steps(...)[pruner.iteration].
        if c.at_step is not None and step >= iterative_steps(c.at_step, pruner.iteration + 1, c.finetune_steps)[-1]:
            self._iterate(pruner, all_at_once=c.finetune_steps == 0)

    def at_end(self, pruner: Pruner) -> None:
        self._iterate(pruner, all_at_once=True)

    def _iterate(self, pruner: Pruner, all_at_once: bool) -> None:
        """Prune ``step_fraction`` more and check the floor; once, or until the target."""
        while not pruner.finished and pruner.iteration < len(self.counts):
            i = pruner.iteration
            new = pruner.prune_to(self.counts[i], f"iterative_{i + 1}", rescore=self.cfg.exact)
            pruner.iteration += 1
            if pruner.below_floor():
                pruner.stop_at_floor(new)
            if not all_at_once:
                break
        if pruner.iteration >= len(self.counts):
            pruner.finished = True
