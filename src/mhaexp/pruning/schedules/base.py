"""What every pruning schedule shares: naming heads, counting them, choosing which go, and the hooks.

A schedule is stated as a *target count* of pruned heads that never decreases over training; the
:class:`Pruner` (the pruning callback) prunes the lowest-scoring live heads until the model reaches it.
Counts come from fractions by rounding to the nearest head (:func:`fraction_to_count`).

``min_heads_per_layer`` (>= 1) is a floor every selection respects; ``scope`` is ``global`` (one
ranking over all heads) or ``per_layer`` (every layer loses the same share of its heads, its
lowest-scoring ones).

Nothing here imports torch at module level (scores may be tensors or lists), so ``mhaexp-train`` can
check every job of a sweep with the schedules' :meth:`Schedule.validate` cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from torch import Tensor

    from mhaexp.pruning.config import PruningConfig

Head = tuple[int, int]
SCOPES = ("global", "per_layer")
# The rankings a schedule can prune by (mhaexp.pruning.criteria implements them).
CRITERIA = ("importance", "ablation", "random", "entropy", "role")


def fraction_to_count(fraction: float, total: int) -> int:
    """Heads pruned for a fraction of ``total``: the nearest whole number (halves round up)."""
    return int(math.floor(fraction * total + 0.5))


def max_prunable(layer_sizes: Sequence[int], min_heads_per_layer: int) -> int:
    """Most heads that can go while every layer keeps ``min_heads_per_layer``."""
    return sum(max(0, n - min_heads_per_layer) for n in layer_sizes)


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


def select_heads(
    scores: Sequence[Tensor],
    pruned: Iterable[Head],
    target: int,
    scope: str = "global",
    min_heads_per_layer: int = 1,
    normalize: bool = False,
) -> list[Head]:
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
        import torch

        from mhaexp.heads.importance import normalize_by_layer  # torch: this module stays light for preflight

        live = [torch.tensor([(i, h) not in dead for h in range(len(s))]) for i, s in enumerate(scores)]
        scores = normalize_by_layer(scores, live)
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
        alloc = allocate_per_layer(min(target, max_prunable(sizes, min_heads_per_layer)), sizes, min_heads_per_layer)
        for i in range(len(sizes)):
            need = alloc[i] - (sizes[i] - live[i])
            for head in ranked([i])[: max(0, min(need, live[i] - min_heads_per_layer))]:
                chosen.append(head)
    return sorted(chosen)


class Pruner(Protocol):
    """What a schedule drives (:class:`mhaexp.pruning.callback.PruningCallback`): its state rides in checkpoints."""

    pruned: list[Head]
    iteration: int  # pruning steps done so far (iterative)
    finished: bool  # the schedule has nothing left to do

    def prune_to(self, target: int, reason: str, rescore: bool = True) -> list[Head]:
        """Rank (again, unless ``rescore`` is false and scores are cached), mask up to ``target``, record."""
        ...

    def stop_at_floor(self, heads: Sequence[Head]) -> None:
        """Undo the step that pruned ``heads`` (quality fell below the floor) and finish."""
        ...

    def below_floor(self) -> bool:
        """Whether the last recorded quality is below ``quality_floor``."""
        ...


Need = Callable[[str, bool, str], None]  # need(field, ok, what would be valid): a ConfigError when not ok


class Schedule:
    """When to prune how many heads; one subclass per ``pruning.kind``, registered in :data:`SCHEDULES`.

    The callback calls :meth:`on_step` before every training step and :meth:`at_end` at the end of
    training unless the pruner is ``finished``; a schedule prunes through the :class:`Pruner`.
    """

    kind: ClassVar[str]

    def __init__(self, cfg: PruningConfig, total: int) -> None:
        self.cfg = cfg
        self.total = total
        self.target = cfg.target_count(total)

    @classmethod
    def validate(cls, cfg: PruningConfig, total: int, target: int, max_steps: int, need: Need) -> None:
        """What this kind's keys need beyond their own domains (called by ``validate_pruning``)."""

    def on_step(self, pruner: Pruner, step: int) -> None:
        """Before training step ``step``."""

    def at_end(self, pruner: Pruner) -> None:
        """At the end of training, unless finished: prune whatever the target still lacks."""
        if self.target > len(pruner.pruned):
            pruner.prune_to(self.target, f"{self.kind}_end")


def check_at_step(cfg: PruningConfig, max_steps: int, need: Need) -> None:
    """``at_step`` (one_shot, iterative) is a training step, or null for the end of training."""
    need(
        "at_step",
        cfg.at_step is None or cfg.at_step <= max_steps,
        f"must be a step in 0..trainer.max_steps={max_steps}, or null for the end of training",
    )
