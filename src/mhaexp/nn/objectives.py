"""What a model is trained and scored on: targets from a batch, and the ignore index.

One home for the next-token rule, shared by training (:mod:`mhaexp.training.module`), the importance
measures (:mod:`mhaexp.heads.importance`) and the analysis.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mhaexp.batch import LOSS_MASK

Batch = dict[str, Tensor]
# (batch, index of the batch in the held-out list) -> (model input ids, targets with IGNORE). The
# index lets a masked-LM objective draw the same masks every time the same batch is re-scored.
Objective = Callable[[Batch, int], tuple[Tensor, Tensor]]

IGNORE = -100  # torch's cross_entropy default ignore_index


def causal_lm_objective(batch: Batch, index: int = 0) -> tuple[Tensor, Tensor]:
    """Next-token targets, IGNORE where the next token is padding and at the last position."""
    ids, real = batch["input_ids"], batch["attention_mask"].bool()
    return ids, causal_targets(ids, real, batch.get(LOSS_MASK))


def causal_targets(ids: Tensor, real: Tensor, scored: Tensor | None = None) -> Tensor:
    """``targets[:, t] = ids[:, t + 1]``, IGNORE where that token is padding, at the last position, and
    where ``scored`` (a batch's :data:`LOSS_MASK`, aligned with the targets) is False."""
    targets = ids.roll(-1, dims=1).masked_fill(~real.roll(-1, dims=1), IGNORE)
    targets[:, -1] = IGNORE
    if scored is not None:
        targets = targets.masked_fill(~scored.bool(), IGNORE)
    return targets


def answer_exact_match(logits: Tensor, targets: Tensor, answer: Tensor) -> Tensor:
    """(B, Q) 1.0 where every step of query q's answer is predicted exactly, NaN where row b has no query q.

    ``answer`` (B, T) holds, at each position whose next token belongs to an answer, the 1-based number
    of the query it answers (0 elsewhere; a bool mask is one query). Scored under teacher forcing, which
    for exact match equals greedy generation: up to the first wrong step the two see the same prefix, so
    both fail there or both copy the whole answer (Wu et al. 2024 score the generated answer).
    """
    answer = answer.long() * (targets != IGNORE)
    n_queries = max(1, int(answer.max()))
    wrong = logits.argmax(-1) != targets  # (B, T)
    query = torch.arange(1, n_queries + 1, device=answer.device)
    steps = answer[:, None, :] == query[None, :, None]  # (B, Q, T)
    hit = (~(steps & wrong[:, None, :]).any(dim=-1)).float()
    return hit.masked_fill(~steps.any(dim=-1), float("nan"))


def answer_depth(depth: Tensor, answer: Tensor) -> Tensor:
    """(B, Q) the depth recorded at query q's answer steps (-1 where row b has no query q)."""
    n_queries = max(1, int(answer.max()))
    query = torch.arange(1, n_queries + 1, device=answer.device)
    steps = answer.long()[:, None, :] == query[None, :, None]
    return torch.where(steps, depth[:, None, :], torch.full_like(depth[:, None, :], -1)).amax(dim=-1)
