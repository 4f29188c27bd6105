"""Turn per-head metrics into named roles.

``classify_heads`` reads a dict of metric tensors, one value per (layer, head), their standard errors,
and the thresholds of ``conf/analysis/default.yaml`` (``analysis.thresholds``), and returns every role
each head holds. The roles, the metric behind each, its bar and its rule are the table
:data:`mhaexp.analysis.registry.ROLES`; the metrics are :data:`mhaexp.analysis.registry.METRICS` (keys of
:class:`mhaexp.analysis.collect.HeadMetrics`). Metrics absent from the dict simply produce no role, so a
caller without dependency annotations can still classify the other roles. Accuracies come with their
baseline (``syntactic_baseline`` ``(R,)``, ``coreference_baseline`` scalar): a syntactic or coreference
role is a margin over a baseline, never a raw accuracy.

A head holds a role only when the bar is cleared at the lower end of the metric's interval,
value - 2 SE (:data:`~mhaexp.analysis.registry.SE_MULTIPLE`): a score that clears its bar by less than
its sampling noise says nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from mhaexp.analysis.registry import ROLES, SE_MULTIPLE, Role
from mhaexp.analysis.role_families import ROLE_FAMILIES


@dataclass(frozen=True)
class HeadRole:
    """One role held by one head.

    ``score`` is the metric behind the role and ``se`` its standard error over probe sequences (0 for
    weight-only metrics, NaN when unknown); ``margin`` is how far the score clears its bar:
    score - threshold, or, for syntactic and coreference roles, accuracy - baseline (the bar being the
    margin threshold). ``unassigned`` rows carry NaN for all three.
    """

    layer: int
    head: int
    role: str
    score: float
    margin: float
    se: float = float("nan")

    @property
    def family(self) -> str:
        """``positional:-1`` -> ``positional``; ``syntactic:nsubj`` -> ``syntactic``."""
        return self.role.split(":", 1)[0]


def _threshold(thresholds: Mapping[str, Any], key: str) -> float:
    try:
        return float(thresholds[key])
    except KeyError:
        raise KeyError(f"thresholds has no '{key}' (see conf/analysis/default.yaml, analysis.thresholds)") from None


def _metric(metrics: Mapping[str, Tensor], key: str) -> Tensor:
    try:
        return torch.as_tensor(metrics[key]).float().cpu()
    except KeyError:
        raise KeyError(f"metrics has no '{key}' (see mhaexp.analysis.registry)") from None


def _layer_head_shape(metrics: Mapping[str, Tensor]) -> tuple[int, int]:
    for key, value in metrics.items():
        if key.endswith("_baseline"):
            continue
        if value.dim() < 2:
            raise ValueError(f"metric '{key}' must be (layers, heads[, ...]); got shape {tuple(value.shape)}")
        return int(value.shape[0]), int(value.shape[1])
    raise ValueError("metrics holds no per-head tensor")


def classify_heads(
    metrics: Mapping[str, Tensor],
    thresholds: Mapping[str, Any],
    relation_names: Sequence[str] = (),
    se: Mapping[str, Tensor] | None = None,
) -> list[HeadRole]:
    """Assign roles to heads. A head can hold several roles; a head with none gets ``unassigned``.

    Each :class:`~mhaexp.analysis.registry.Role` of the registry, with ``lower = score - 2 * se``:

    * ``at_least``: ``lower >= thresholds[bar]`` (``induction``, ``copying``, ``broad``, ...);
    * ``above``: ``lower > thresholds[bar]`` (``sink``: Gu et al. 2024 use ``>``);
    * ``margin``: ``lower - baseline >= thresholds[bar]`` (``syntactic:<relation>``, ``coreference``).

    ``positional:<offset>`` names the head's best offset, and ``previous_token`` is that role at offset -1.
    ``se``: the metrics' standard errors (same shapes); a metric without one there counts as exact (0),
    one with a NaN SE (too few sequences to tell) holds no role. NaN scores never pass. Relation r is
    named ``relation_names[r]`` (``str(r)`` if not given).

    Returns:
        Roles sorted by layer, head, then :data:`ROLE_FAMILIES` order.
    """
    L, H = _layer_head_shape(metrics)
    se = se or {}
    found: list[HeadRole] = []

    def add(role: str | list[str], score: Tensor, err: Tensor, margin: Tensor, hit: Tensor) -> None:
        if tuple(hit.shape[:2]) != (L, H):
            raise ValueError(f"metric for role '{role}' has shape {tuple(hit.shape)}, expected ({L}, {H}, ...)")
        for idx in hit.nonzero().tolist():
            name = role if isinstance(role, str) else role[idx[2]]
            at = tuple(idx)
            found.append(HeadRole(idx[0], idx[1], name, float(score[at]), float(margin[at]), float(err[at])))

    for role in ROLES:
        if role.metric in metrics:
            _apply(role, metrics, se, thresholds, relation_names, add)

    assigned = {(r.layer, r.head) for r in found}
    nan = float("nan")
    found += [HeadRole(l, h, "unassigned", nan, nan) for l in range(L) for h in range(H) if (l, h) not in assigned]
    rank = {family: i for i, family in enumerate(ROLE_FAMILIES)}
    return sorted(found, key=lambda r: (r.layer, r.head, rank[r.family], r.role))


def _apply(
    role: Role,
    metrics: Mapping[str, Tensor],
    se: Mapping[str, Tensor],
    thresholds: Mapping[str, Any],
    relation_names: Sequence[str],
    add: Any,
) -> None:
    """The heads holding ``role``, handed to ``add(name(s), score, se, margin, hit)``."""
    score = _metric(metrics, role.metric)
    err = torch.as_tensor(se[role.metric]).float().cpu() if role.metric in se else torch.zeros_like(score)
    lower = score - SE_MULTIPLE * err
    bar = _threshold(thresholds, role.bar)
    if role.direction == "margin":
        baseline = _metric(metrics, str(role.baseline))
        margin = score - baseline
        hit = lower - baseline >= bar
    else:
        margin = score - bar
        hit = lower > bar if role.direction == "above" else lower >= bar
    if role.name_by == "relation":
        names = [relation_names[r] if r < len(relation_names) else str(r) for r in range(score.shape[-1])]
        add([f"{role.family}:{n}" for n in names], score, err, margin, hit)
    elif role.name_by == "offset" or role.offset is not None:
        offset = _metric(metrics, "positional_offset").long()
        if role.offset is not None:
            add(role.family, score, err, margin, hit & (offset == role.offset))
        else:
            for value in offset[hit].unique().tolist():
                add(f"{role.family}:{value}", score, err, margin, hit & (offset == value))
    else:
        add(role.family, score, err, margin, hit)


def role_counts(roles: Sequence[HeadRole]) -> dict[str, int]:
    """Number of distinct heads holding each role family (``positional:-1`` and ``positional:1`` both
    count under ``positional``), in :data:`ROLE_FAMILIES` order; families nobody holds are omitted."""
    heads: dict[str, set[tuple[int, int]]] = {}
    for r in roles:
        heads.setdefault(r.family, set()).add((r.layer, r.head))
    return {family: len(heads[family]) for family in ROLE_FAMILIES if family in heads}


def roles_table(roles: Sequence[HeadRole]) -> list[dict[str, Any]]:
    """One dict per role, keys ``layer, head, role, score, margin, se`` (e.g. rows of a W&B table)."""
    return [asdict(r) for r in roles]
