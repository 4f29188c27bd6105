"""Turn per-head metrics into named roles.

``classify_heads`` reads a dict of metric tensors, one value per (layer, head), and the thresholds of
``conf/analysis/default.yaml`` (``analysis.thresholds``), and returns every role each head holds.
Metrics absent from the dict simply produce no role, so a caller without dependency annotations can
still classify the other roles. Accuracies come with their baseline: a syntactic or coreference role is
a margin over a baseline, never a raw accuracy.

Metric keys (``L`` layers, ``H`` heads, ``R`` relations), with the function that computes each:

==========================  ===========  =====================================================
key                         shape        source
==========================  ===========  =====================================================
``positional_frac``         (L, H)       ``positional_heads(...)[2]``
``positional_offset``       (L, H)       ``positional_heads(...)[1]``
``syntactic_accuracy``      (L, H, R)    ``dependency_accuracy``
``syntactic_baseline``      (R,)         ``offset_baseline(...)[0]`` (anything broadcastable)
``coreference``             (L, H)       ``antecedent_accuracy``
``coreference_baseline``    scalar       ``offset_baseline(antecedent, ...)[0]`` (broadcastable)
``prefix_matching``         (L, H)       ``prefix_matching_score``
``duplicate_matching``      (L, H)       ``duplicate_matching_score``
``copying``                 (L, H)       ``copying_score``
``sink``                    (L, H)       ``sink_score``
``rare_word``               (L, H)       ``rare_token_score``
``normalized_entropy``      (L, H)       ``normalized_entropy``
==========================  ===========  =====================================================

Threshold keys: ``positional``, ``syntactic_margin``, ``coreference_margin``, ``induction``,
``duplicate``, ``copying``, ``sink``, ``rare_word``, ``broad``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from mhaexp.analysis.role_families import ROLE_FAMILIES

# Roles decided by "score >= threshold": (role, metric key, threshold key).
_AT_LEAST: tuple[tuple[str, str, str], ...] = (
    # Olsson et al.'s score, over the queries that have an earlier copy: the TransformerLens ratios
    # (``induction``, ``duplicate``) divide by every query and stay below 0.5 even for perfect heads.
    ("induction", "prefix_matching", "induction"),
    ("duplicate", "duplicate_matching", "duplicate"),
    ("copying", "copying", "copying"),
    ("rare_word", "rare_word", "rare_word"),
    ("broad", "normalized_entropy", "broad"),
    ("retrieval", "retrieval", "retrieval"),
    ("streaming", "streaming", "streaming"),
)


@dataclass(frozen=True)
class HeadRole:
    """One role held by one head.

    ``score`` is the metric behind the role; ``margin`` is how far it clears its bar: score - threshold,
    or, for syntactic and coreference roles, accuracy - baseline (the bar being the margin threshold).
    ``unassigned`` rows carry NaN for both.
    """

    layer: int
    head: int
    role: str
    score: float
    margin: float

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
        raise KeyError(f"metrics has no '{key}' (see the key table in mhaexp.analysis.roles)") from None


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
) -> list[HeadRole]:
    """Assign roles to heads. A head can hold several roles; a head with none gets ``unassigned``.

    Rules (thresholds from ``thresholds``; see the module docstring for the metric keys):

    * ``positional:<offset>``: ``positional_frac >= positional`` (Voita et al. 2019); also
      ``previous_token`` when that offset is -1.
    * ``syntactic:<relation>``: ``accuracy - baseline >= syntactic_margin`` (Voita et al. 2019).
    * ``coreference``: ``accuracy - coreference_baseline >= coreference_margin``.
    * ``induction``, ``duplicate``, ``copying``, ``rare_word``, ``broad`` (normalized entropy):
      ``score >= threshold``.
    * ``sink``: the ``sink`` score strictly above the ``sink`` threshold (Gu et al. 2024 use ``>``).

    NaN scores never pass. Relation r is named ``relation_names[r]`` (``str(r)`` if not given).

    Returns:
        Roles sorted by layer, head, then :data:`ROLE_FAMILIES` order.
    """
    L, H = _layer_head_shape(metrics)
    found: list[HeadRole] = []

    def add(role: str | list[str], score: Tensor, margin: Tensor, hit: Tensor) -> None:
        if tuple(hit.shape[:2]) != (L, H):
            raise ValueError(f"metric for role '{role}' has shape {tuple(hit.shape)}, expected ({L}, {H}, ...)")
        for idx in hit.nonzero().tolist():
            name = role if isinstance(role, str) else role[idx[2]]
            found.append(HeadRole(idx[0], idx[1], name, float(score[tuple(idx)]), float(margin[tuple(idx)])))

    if "positional_frac" in metrics:
        frac = _metric(metrics, "positional_frac")
        offset = _metric(metrics, "positional_offset").long()
        bar = _threshold(thresholds, "positional")
        hit = frac >= bar
        for value in offset[hit].unique().tolist():
            add(f"positional:{value}", frac, frac - bar, hit & (offset == value))
        add("previous_token", frac, frac - bar, hit & (offset == -1))

    if "syntactic_accuracy" in metrics:
        accuracy = _metric(metrics, "syntactic_accuracy")
        gain = accuracy - _metric(metrics, "syntactic_baseline")
        names = [relation_names[r] if r < len(relation_names) else str(r) for r in range(accuracy.shape[-1])]
        add([f"syntactic:{n}" for n in names], accuracy, gain, gain >= _threshold(thresholds, "syntactic_margin"))

    if "coreference" in metrics:
        accuracy = _metric(metrics, "coreference")
        gain = accuracy - _metric(metrics, "coreference_baseline")
        add("coreference", accuracy, gain, gain >= _threshold(thresholds, "coreference_margin"))

    for role, key, threshold_key in _AT_LEAST:
        if key in metrics:
            score = _metric(metrics, key)
            bar = _threshold(thresholds, threshold_key)
            add(role, score, score - bar, score >= bar)

    if "sink" in metrics:
        score = _metric(metrics, "sink")
        bar = _threshold(thresholds, "sink")
        add("sink", score, score - bar, score > bar)

    assigned = {(r.layer, r.head) for r in found}
    nan = float("nan")
    found += [HeadRole(l, h, "unassigned", nan, nan) for l in range(L) for h in range(H) if (l, h) not in assigned]
    rank = {family: i for i, family in enumerate(ROLE_FAMILIES)}
    return sorted(found, key=lambda r: (r.layer, r.head, rank[r.family], r.role))


def role_counts(roles: Sequence[HeadRole]) -> dict[str, int]:
    """Number of distinct heads holding each role family (``positional:-1`` and ``positional:1`` both
    count under ``positional``), in :data:`ROLE_FAMILIES` order; families nobody holds are omitted."""
    heads: dict[str, set[tuple[int, int]]] = {}
    for r in roles:
        heads.setdefault(r.family, set()).add((r.layer, r.head))
    return {family: len(heads[family]) for family in ROLE_FAMILIES if family in heads}


def roles_table(roles: Sequence[HeadRole]) -> list[dict[str, Any]]:
    """One dict per role, keys ``layer, head, role, score, margin`` (e.g. rows of a W&B table)."""
    return [asdict(r) for r in roles]
