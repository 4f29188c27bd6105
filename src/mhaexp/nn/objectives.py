"""What a model is trained and scored on: targets from a batch, and the ignore index.

One home for the next-token rule, shared by training (:mod:`mhaexp.training.module`), the importance
measures (:mod:`mhaexp.heads.importance`) and the analysis.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

Batch = dict[str, Tensor]
# (batch, index of the batch in the held-out list) -> (model input ids, targets with IGNORE). The
# index lets a masked-LM objective draw the same masks every time the same batch is re-scored.
Objective = Callable[[Batch, int], tuple[Tensor, Tensor]]

IGNORE = -100  # torch's cross_entropy default ignore_index


def causal_lm_objective(batch: Batch, index: int = 0) -> tuple[Tensor, Tensor]:
    """Next-token targets, IGNORE where the next token is padding and at the last position."""
    ids, real = batch["input_ids"], batch["attention_mask"].bool()
    return ids, causal_targets(ids, real)


def causal_targets(ids: Tensor, real: Tensor) -> Tensor:
    """``targets[:, t] = ids[:, t + 1]``, IGNORE where that token is padding and at the last position."""
    targets = ids.roll(-1, dims=1).masked_fill(~real.roll(-1, dims=1), IGNORE)
    targets[:, -1] = IGNORE
    return targets
