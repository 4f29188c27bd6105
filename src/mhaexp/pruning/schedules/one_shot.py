"""One-shot pruning: rank the heads once and mask the lowest-ranked ones at one step.

Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?" (NeurIPS), Sec. 3-4: many heads
of a trained model can be removed at test time with little loss. The target is 0 before ``at_step``
and ``K`` from then on; ``at_step: null`` prunes at the end of training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mhaexp.pruning.schedules.base import Need, Pruner, Schedule, check_at_step

if TYPE_CHECKING:
    from mhaexp.pruning.config import PruningConfig


def one_shot_target(step: int, at_step: int, count: int) -> int:
    """Target pruned count at ``step`` of a one-shot schedule that prunes ``count`` heads at ``at_step``."""
    return count if step >= at_step else 0


class OneShot(Schedule):
    kind = "one_shot"

    @classmethod
    def validate(cls, cfg: PruningConfig, total: int, target: int, max_steps: int, need: Need) -> None:
        check_at_step(cfg, max_steps, need)

    def on_step(self, pruner: Pruner, step: int) -> None:
        at = self.cfg.at_step
        if at is not None and step >= at:
            pruner.prune_to(one_shot_target(step, at, self.target), self.kind)
            pruner.finished = True
