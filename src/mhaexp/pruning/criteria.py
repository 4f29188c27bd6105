"""Pruning criteria by name: the model-free ones (random, role) and the dispatch to the measures.

* ``importance``, ``ablation``, ``entropy``: :mod:`mhaexp.heads.importance`.
* ``random``: i.i.d. uniform scores from a seeded generator; the same seed gives the same order,
  and re-ranking gives nested pruned sets.
* ``role``: heads that hold a role (from a roles provider, e.g. :mod:`mhaexp.analysis.roles`) score
  above every head without one; a second criterion orders heads within each class (Voita et al.
  2019 keep the "specialized" positional, syntactic and rare-word heads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mhaexp.heads.evaluation import layer_sizes
from mhaexp.heads.importance import ablation_importance, entropy_scores, gradient_importance
from mhaexp.nn.model import Transformer
from mhaexp.nn.objectives import Batch, Objective, causal_lm_objective
from mhaexp.pruning.schedules import CRITERIA

# Roles: {(layer, head): role or [roles]}, or objects / dicts with layer, head, role (HeadRole rows).
Roles = Mapping[tuple[int, int], Any] | Iterable[Any]
RolesProvider = Callable[[Transformer, Sequence[Batch]], Roles]


def random_scores(sizes: Sequence[int], seed: int = 0) -> list[Tensor]:
    """Seeded uniform scores; one generator for all layers so the order is a function of the seed."""
    gen = torch.Generator().manual_seed(int(seed))
    return [torch.rand(n, generator=gen) for n in sizes]


def roles_by_head(roles: Roles) -> dict[tuple[int, int], list[str]]:
    """Normalize a roles description to ``{(layer, head): [role, ...]}``, dropping ``unassigned``."""
    out: dict[tuple[int, int], list[str]] = {}
    if isinstance(roles, Mapping):
        items = [((int(k[0]), int(k[1])), v) for k, v in roles.items()]
        pairs = [(k, r) for k, v in items for r in ([v] if isinstance(v, str) else list(v))]
    else:
        pairs = []
        for row in roles:
            get = row.get if isinstance(row, Mapping) else lambda name, row=row: getattr(row, name)
            pairs.append(((int(get("layer")), int(get("head"))), str(get("role"))))
    for key, role in pairs:
        if role and role != "unassigned":
            out.setdefault(key, []).append(role)
    return out


def role_scores(roles: Roles, sizes: Sequence[int], tiebreak: Sequence[Tensor] | None = None) -> list[Tensor]:
    """1 + (tiebreak rank in [0, 0.5)) for heads holding a role, the same minus 1 for the others.

    The rank, not the raw tie-break score, is added, so any tie-break criterion orders heads within
    a class without ever lifting a role-less head above a role holder.
    """
    held = roles_by_head(roles)
    flat = torch.cat([t.float() for t in tiebreak]) if tiebreak is not None else torch.zeros(sum(sizes))
    rank = torch.empty_like(flat)
    rank[torch.argsort(flat, stable=True)] = torch.arange(len(flat), dtype=flat.dtype)
    rank = 0.5 * rank / max(1, len(flat))
    out, start = [], 0
    for i, n in enumerate(sizes):
        has = torch.tensor([float((i, h) in held) for h in range(n)])
        out.append(has + rank[start : start + n])
        start += n
    return out


def head_scores(
    criterion: str,
    model: Transformer,
    batches: Sequence[Batch],
    objective: Objective = causal_lm_objective,
    seed: int = 0,
    roles: Roles | None = None,
    role_tiebreak: str = "random",
    max_rows: int = 256,
) -> list[Tensor]:
    """Dispatch to the criterion's scoring function (see the module docstring)."""
    sizes = layer_sizes(model)
    if criterion == "importance":
        return gradient_importance(model, batches, objective)
    if criterion == "ablation":
        return ablation_importance(model, batches, objective, max_rows=max_rows)
    if criterion == "entropy":
        return entropy_scores(model, batches, objective)
    if criterion == "random":
        return random_scores(sizes, seed)
    if criterion == "role":
        if roles is None:
            raise ValueError("criterion 'role' needs roles (a roles provider)")
        if role_tiebreak == "role":
            raise ValueError("role_tiebreak cannot be 'role'")
        tiebreak = head_scores(role_tiebreak, model, batches, objective, seed, max_rows=max_rows)
        return role_scores(roles, sizes, tiebreak)
    raise ValueError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
