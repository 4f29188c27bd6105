"""When to prune how many heads, and which: pure step math, no model and no tensors but scores.

Heads are named ``(layer, head)``. Every schedule is stated as a *target count* of pruned heads
that never decreases over training; the callback prunes the lowest-scoring live heads until the
model reaches it. Counts come from fractions by rounding to the nearest head
(:func:`fraction_to_count`).

* one-shot: 0 before ``at_step``, ``K`` from then on.
* iterative (Michel et al. 2019, "Are Sixteen Heads Really Better than One?", Sec. 4.2 / Fig. 3):
  ``K_i = min(K, i * d)`` after the i-th pruning step, ``d = round(step_fraction * H)`` heads per
  step, steps ``finetune_steps`` apart starting at ``at_step``.
* gradual (Zhu & Gupta 2017, "To prune, or not to prune", eq. 1):
  ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3`` for ``t in {t0, t0 + dt, ..., t0 + n dt}``;
  the sparsity rises fast at first and flattens towards ``s_f`` at ``t1 = t0 + n dt``.

``min_heads_per_layer`` (>= 1) is a floor every selection respects; ``scope`` is ``global`` (one
ranking over all heads) or ``per_layer`` (every layer loses the same share of its heads, its
lowest-scoring ones).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

Head = tuple[int, int]
SCOPES = ("global", "per_layer")


def fraction_to_count(fraction: float, total: int) -> int:
    """Heads pruned for a fraction of ``total``: the nearest whole number (halves round up)."""
    return int(math.floor(fraction * total + 0.5))


def max_prunable(layer_sizes: Sequence[int], min_heads_per_layer: int) -> int:
    """Most heads that can go while every layer keeps ``min_heads_per_layer``."""
    return sum(max(0, n - min_heads_per_layer) for n in layer_sizes)


def one_shot_target(step: int, at_step: int, count: int) -> int:
    """Target pruned count at ``step`` of a one-shot schedule that prunes ``count`` heads at ``at_step``."""
    return count if step >= at_step else 0


def iterative_counts(total: int, step_fraction: float, target: int) -> list[int]:
    """Cumulative pruned counts after each iterative step (Michel et al. 2019): ``d, 2d, ..., target``.

    ``d = max(1, round(step_fraction * total))``; the last step is cut to land on ``target``.
    """
    d = max(1, fraction_to_count(step_fraction, total))
    return [min(target, d * i) for i in range(1, math.ceil(target / d) + 1)] if target > 0 else []


def iterative_steps(at_step: int, n_iterations: int, finetune_steps: int) -> list[int]:
    """Training steps at which each iterative pruning step runs: ``at_step + i * finetune_steps``."""
    return [at_step + i * finetune_steps for i in range(n_iterations)]


def gradual_fraction(step: int, start_step: int, end_step: int, final_fraction: float,
                     initial_fraction: float = 0.0, every: int = 1) -> float:
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


def gradual_target(step: int, total: int, start_step: int, end_step: int, final_count: int,
                   initial_fraction: float = 0.0, every: int = 1) -> int:
    """Target pruned count at ``step`` for the cubic schedule ending at ``final_count`` heads."""
    final_fraction = final_count / total
    f = gradual_fraction(step, start_step, end_step, final_fraction, initial_fraction, every)
    return min(final_count, fraction_to_count(f, total))


def allocate_per_layer(count: int, layer_sizes: Sequence[int], min_heads_per_layer: int) -> list[int]:
    """Split ``count`` pruned heads over layers in proportion to their sizes (largest remainder).

    Each layer gets ``floor(count * n_l / H)``; the heads left over go to the layers with the
    largest fractional parts (lower layer first on ties), never past ``n_l - min_heads_per_layer``.
    """
    caps = [max(0, n - min_heads_per_layer) for n in layer_sizes]
    if count > sum(caps):
        raise ValueError(f"cannot prune {count} heads keeping {min_heads_per_layer} per layer of {list(layer_sizes)}")
    total = sum(layer_sizes)
    quotas = [count * n / total for n in layer_sizes]
    alloc = [min(cap, math.floor(q)) for q, cap in zip(quotas, caps, strict=True)]
    order = sorted(range(len(layer_sizes)), key=lambda i: (-(quotas[i] - math.floor(quotas[i])), i))
    left = count - sum(alloc)
    while left > 0:  # terminates: count <= sum(caps)
        for i in order:
            if left and alloc[i] < caps[i]:
                alloc[i] += 1
                left -= 1
    return alloc


def normalize_by_layer(scores: Sequence[Tensor], pruned: Iterable[Head] = ()) -> list[Tensor]:
    """Divide each layer's scores by their L2 norm over its live heads (Michel et al. 2019, Sec. 4.2:
    "we normalize the importance scores by layer (using the l2 norm)"), so global ranking does not
    simply empty the layer whose gradients are smallest."""
    dead = set(pruned)
    out = []
    for i, s in enumerate(scores):
        live = torch.tensor([(i, h) not in dead for h in range(len(s))], dtype=torch.bool)
        norm = s[live].float().norm() if live.any() else torch.tensor(0.0)
        out.append(s.float() / (norm + 1e-20))
    return out


def select_heads(scores: Sequence[Tensor], pruned: Iterable[Head], target: int, scope: str = "global",
                 min_heads_per_layer: int = 1, normalize: bool = False) -> list[Head]:
    """The live heads to prune next so that ``target`` heads are pruned in all, lowest score first.

    Args:
        scores: one 1-D tensor per layer; higher = more important (kept longer).
        pruned: heads already pruned; they stay pruned.
        target: total pruned heads wanted afterwards (across layers).
        scope: ``global`` ranks all heads together; ``per_layer`` first splits ``target`` over layers
            with :func:`allocate_per_layer` and ranks within each layer.
        min_heads_per_layer: no layer drops below this many live heads; a global selection skips a
            full layer's heads and goes on to the next-lowest elsewhere.
        normalize: apply :func:`normalize_by_layer` first.

    Ties are broken by (layer, head), so a selection is a function of its inputs. Returns the new
    heads, sorted.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    dead = set(pruned)
    sizes = [len(s) for s in scores]
    if normalize:
        scores = normalize_by_layer(scores, dead)
    live = [n - sum((i, h) in dead for h in range(n)) for i, n in enumerate(sizes)]
    chosen: list[Head] = []

    def ranked(layers: Iterable[int]) -> list[Head]:
        cand = [(float(scores[i][h]), i, h) for i in layers for h in range(sizes[i]) if (i, h) not in dead]
        return [(i, h) for _, i, h in sorted(cand)]

    if scope == "global":
        need = target - len(dead)
        for i, h in ranked(range(len(sizes))):
            if need <= 0:
                break
            if live[i] > min_heads_per_layer:
                chosen.append((i, h))
                live[i] -= 1
                need -= 1
    else:
        alloc = allocate_per_layer(min(target, max_prunable(sizes, min_heads_per_layer)), sizes,
                                   min_heads_per_layer)
        for i in range(len(sizes)):
            need = alloc[i] - (sizes[i] - live[i])
            for head in ranked([i])[: max(0, min(need, live[i] - min_heads_per_layer))]:
                chosen.append(head)
    return sorted(chosen)
