"""One pruning step: rank the live heads, select the lowest up to a target, mask them, evaluate.

The pruning callback (every schedule) and :func:`mhaexp.pruning.curves.compute_pruning_curve` both
prune through :func:`prune_step`, so a curve and a training-time schedule take the same step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from mhaexp.heads.evaluation import evaluate
from mhaexp.nn.model import Transformer
from mhaexp.nn.objectives import Batch, Objective
from mhaexp.pruning.criteria import Roles, head_scores
from mhaexp.pruning.schedules import Head, select_heads
from mhaexp.pruning.surgery import apply_mask


@dataclass(frozen=True)
class Ranking:
    """How heads are ranked and selected: the criterion and its knobs, and the selection rules."""

    criterion: str
    scope: str
    min_heads_per_layer: int
    normalize: bool
    seed: int
    roles: Roles | None = None
    # Further keyword arguments of head_scores (role_tiebreak, max_rows); absent ones take its defaults.
    score_kwargs: dict[str, Any] = field(default_factory=dict)

    def scores(self, model: Transformer, batches: Sequence[Batch], objective: Objective) -> list[Tensor]:
        return head_scores(
            self.criterion, model, batches, objective, seed=self.seed, roles=self.roles, **self.score_kwargs
        )


@dataclass
class PruneStep:
    """What one step did: the heads it masked, the scores it ranked by, the quality after."""

    new: list[Head]
    scores: list[Tensor]
    val_loss: float
    val_acc: float


def prune_step(
    model: Transformer,
    batches: Sequence[Batch],
    objective: Objective,
    pruned: Sequence[Head],
    target: int,
    ranking: Ranking,
    scores: Sequence[Tensor] | None = None,
    agree: Callable[[list[Head]], list[Head]] | None = None,
    eval_batches: Sequence[Batch] | None = None,
) -> PruneStep:
    """Mask the lowest-ranked live heads so that ``target`` are pruned in all; evaluate on ``batches``.

    Args:
        scores: rank by these (cached from an earlier step) instead of scoring the model again.
        agree: makes every process mask the same heads (the callback broadcasts rank 0's choice).
        eval_batches: measure the quality on these instead: held-out batches the ranking never saw, so a
            curve is not flattered by a ranking fitted to the batches it is measured on.
    """
    if scores is None:
        scores = ranking.scores(model, batches, objective)
    new = select_heads(scores, pruned, target, ranking.scope, ranking.min_heads_per_layer, ranking.normalize)
    if agree is not None:
        new = [tuple(h) for h in agree(new)]
    apply_mask(model, new)
    loss, acc = evaluate(model, batches if eval_batches is None else eval_batches, objective)
    return PruneStep(list(new), list(scores), loss, acc)
