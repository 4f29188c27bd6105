"""Evaluating a model on held-out batches, and the helpers every per-head measure's forwards share.

:func:`evaluate` gives the token-weighted loss and accuracy (the quality a pruning step or an
``init_from`` conversion reports); :func:`eval_mode` runs a block in eval mode and gives the model back
in the mode it was in; :func:`row_groups` and :func:`group_extent` cut a padded batch into forwards
of similar extent; :func:`layer_sizes` counts query heads per layer. The measures themselves live in
:mod:`mhaexp.heads.importance`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from mhaexp.nn.model import Transformer
from mhaexp.nn.objectives import IGNORE, Batch, Objective, causal_lm_objective


def layer_sizes(model: Transformer) -> list[int]:
    """Query heads per layer."""
    return [layer.n_heads for layer in model.attention_layers]


@contextmanager
def eval_mode(model: Transformer) -> Iterator[None]:
    """Eval mode (no dropout, deterministic L0 gates) for the duration, then the previous mode."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def token_losses(model: Transformer, batch: Batch, index: int, objective: Objective) -> tuple[Tensor, Tensor, Tensor]:
    """(per-token loss (B, T), correct (B, T) bool, scored (B, T) bool)."""
    inputs, targets = objective(batch, index)
    logits, _ = model(inputs, attention_mask=batch["attention_mask"])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="none")
    scored = targets != IGNORE
    return loss.view(targets.shape), logits.argmax(-1) == targets, scored


@torch.no_grad()
def evaluate(
    model: Transformer, batches: Sequence[Batch], objective: Objective = causal_lm_objective
) -> tuple[float, float]:
    """Token-weighted mean loss and accuracy over ``batches`` (every scored token weighs the same)."""
    total = correct = count = 0.0
    with eval_mode(model):
        for i, batch in enumerate(batches):
            loss, right, scored = token_losses(model, batch, i, objective)
            total += float(loss[scored].sum())
            correct += float(right[scored].sum())
            count += float(scored.sum())
    return total / max(count, 1.0), correct / max(count, 1.0)


def row_groups(mask: Tensor, overhead_tokens: int = 192) -> list[Tensor]:
    """The rows of a batch in groups of similar extent (last real token + 1), for forwards cut to each
    group's extent: pads cost as much as tokens in every matmul, and a batch of sentences padded to its
    longest is often half pads. Rows are independent (no real token sees a pad: causal or key-padding
    masks), so what the groups compute adds up to what the whole batch computes. The grouping minimizes
    sum(rows x extent) plus ``overhead_tokens`` per group (the fixed cost of one more forward); a function
    of the mask alone."""
    B, T = mask.shape
    real = mask.bool()
    extent = torch.where(real.any(1), T - real.flip(1).int().argmax(1), torch.zeros(B, dtype=torch.long))
    order = torch.argsort(extent, stable=True)
    ext = extent[order].tolist()
    best, cut = [0.0] + [math.inf] * B, [0] * (B + 1)
    for j in range(1, B + 1):
        for i in range(j):
            cost = best[i] + (j - i) * ext[j - 1] + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out, j = [], B
    while j > 0:
        out.append(order[cut[j] : j])
        j = cut[j]
    return out[::-1]


def group_extent(mask: Tensor, rows: Tensor) -> int:
    """How far the real tokens of ``rows`` reach (at least 1): the width a group's forward is cut to."""
    real = mask[rows].bool()
    cols = real.any(0).nonzero()
    return int(cols[-1]) + 1 if len(cols) else 1


@torch.no_grad()
def sequence_losses(
    model: Transformer, batches: Sequence[Batch], objective: Objective = causal_lm_objective
) -> tuple[Tensor, Tensor]:
    """(summed loss, scored tokens) per sequence of ``batches``, both ``(N,)``: :func:`evaluate`'s loss is
    ``sum(loss) / sum(tokens)``; two models scored on the same sequences give paired per-sequence terms."""
    losses, counts = [], []
    with eval_mode(model):
        for i, batch in enumerate(batches):
            loss, _, scored = token_losses(model, batch, i, objective)
            losses.append((loss * scored).sum(1).double())
            counts.append(scored.sum(1).double())
    return torch.cat(losses), torch.cat(counts)
