"""Gradual pruning during training on the cubic sparsity schedule of Zhu & Gupta 2017.

"To prune, or not to prune: exploring the efficacy of pruning for model compression", eq. 1:
``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3`` for ``t in {t0, t0 + dt, ..., t0 + n dt}``;
the sparsity rises fast at first and flattens towards ``s_f`` at ``t1 = t0 + n dt``. Applied to
heads: the lowest-ranked live heads are masked whenever the target count rises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mhaexp.pruning.schedules.base import Need, Pruner, Schedule, fraction_to_count

if TYPE_CHECKING:
    from mhaexp.pruning.config import PruningConfig


def gradual_fraction(
    step: int, start_step: int, end_step: int, final_fraction: float, initial_fraction: float = 0.0, every: int = 1
) -> float:
    """Zhu & Gupta 2017's cubic sparsity at ``step``.

    Zero before ``start_step``; from there ``s_f + (s_i - s_f)(1 - p)^3`` with
    ``p = floor((step - t0) / dt) * dt / (t1 - t0)`` clipped to 1, so the value changes only every
    ``every`` (``dt``) steps and reaches ``final_fraction`` at ``end_step``.
    """
    if step < start_step:
        return 0.0
    span = max(1, end_step - start_step)
    done = ((step - start_step) // every) * every
    p = 1.0 if step >= end_step else min(1.0, done / span)
    return final_fraction + (initial_fraction - final_fraction) * (1.0 - p) ** 3


def gradual_target(
    step: int,
    total: int,
    start_step: int,
    end_step: int,
    final_count: int,
    initial_fraction: float = 0.0,
    every: int = 1,
) -> int:
    """Target pruned count at ``step`` for the cubic schedule ending at ``final_count`` heads."""
    final_fraction = final_count / total
    f = gradual_fraction(step, start_step, end_step, final_fraction, initial_fraction, every)
    return min(final_count, fraction_to_count(f, total))


class Gradual(Schedule):
    kind = "gradual"

    @classmethod
    def validate(cls, cfg: PruningConfig, total: int, target: int, max_steps: int, need: Need) -> None:
        need(
            "end_step",
            cfg.end_step is not None and cfg.end_step > cfg.start_step,
            f"must be an integer > pruning.start_step={cfg.start_step}",
        )
        need("end_step", cfg.end_step <= max_steps, f"the schedule must end by trainer.max_steps={max_steps}")
        need(
            "initial_fraction",
            cfg.initial_fraction <= target / total,
            f"must be in [0, final fraction={target / total:.3g}]",
        )

    def on_step(self, pruner: Pruner, step: int) -> None:
        c = self.cfg
        want = gradual_target(step, self.total, c.start_step, c.end_step, self.target, c.initial_fraction, c.every)
        if want > len(pruner.pruned):
            pruner.prune_to(want, self.kind)
        pruner.finished = want >= self.target and step >= c.end_step
