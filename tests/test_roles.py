"""Head-role classifier: planted heads get exactly the roles they were built for."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from mhaexp.analysis import HeadRole, classify_heads, role_counts, roles_table
from mhaexp.heads import (
    copying_score,
    dependency_accuracy,
    duplicate_matching_score,
    normalized_entropy,
    offset_baseline,
    positional_heads,
    prefix_matching_score,
    rare_token_score,
    sink_score,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "analysis"
THRESHOLDS = yaml.safe_load((CONF / "default.yaml").read_text())["thresholds"]


def test_config_files() -> None:
    default = yaml.safe_load((CONF / "default.yaml").read_text())
    assert default["enabled"] is True
    assert (default["every_n_steps"], default["max_pictures"]) == (100, 8)
    # The per-step tier reads a part of the end-of-run probe; a treebank is read whole unless capped.
    assert default["step_probe_sequences"] < default["probe_sequences"] and default["treebank_max_sentences"] is None
    assert THRESHOLDS == {
        "positional": 0.9,
        "syntactic_margin": 0.10,
        "coreference_margin": 0.10,
        "induction": 0.5,
        "duplicate": 0.5,
        "copying": 0.5,
        "sink": 0.3,
        "broad": 0.9,
        "rare_word": 0.5,
        "retrieval": 0.1,
        "streaming": 0.9,
    }
    assert yaml.safe_load((CONF / "off.yaml").read_text()) == {"defaults": ["default", "_self_"], "enabled": False}


# ------------------------------------------------------------------------------------------------
# Classification rules on metric values given directly
# ------------------------------------------------------------------------------------------------


def test_rules_margins_and_unassigned() -> None:
    nan = float("nan")
    metrics = {
        "positional_frac": torch.tensor([[0.95, 0.9, 0.5]]),  # 0.9 reaches the 0.9 bar
        "positional_offset": torch.tensor([[-1, 2, -1]]),
        "syntactic_accuracy": torch.tensor([[[0.25, 0.9], [0.5, nan], [0.15, 0.3]]]),
        "syntactic_baseline": torch.tensor([0.1, 0.85]),
        "coreference": torch.tensor([[0.0, 0.7, 0.0]]),
        "coreference_baseline": torch.tensor(0.55),
        "prefix_matching": torch.tensor([[nan, 0.0, 0.0]]),
        "sink": torch.tensor([[0.3, 0.31, 0.0]]),  # strictly above eps only
        "copying": torch.tensor([[0.5, -0.9, 0.0]]),
    }
    roles = classify_heads(metrics, THRESHOLDS, relation_names=["det", "nsubj"])
    by_head: dict[int, list[str]] = {}
    for r in roles:
        by_head.setdefault(r.head, []).append(r.role)
    assert by_head == {
        0: ["positional:-1", "previous_token", "syntactic:det", "copying"],
        1: ["positional:2", "syntactic:det", "coreference", "sink"],
        2: ["unassigned"],
    }
    get = {(r.head, r.role): r for r in roles}
    assert get[0, "positional:-1"].score == pytest.approx(0.95)
    assert get[0, "positional:-1"].margin == pytest.approx(0.05)
    assert get[0, "syntactic:det"].margin == pytest.approx(0.15)  # accuracy - baseline
    assert get[1, "coreference"].margin == pytest.approx(0.15)
    assert get[1, "sink"].margin == pytest.approx(0.01)
    assert math.isnan(get[2, "unassigned"].score)
    assert role_counts(roles) == {
        "positional": 2,
        "previous_token": 1,
        "syntactic": 2,
        "coreference": 1,
        "copying": 1,
        "sink": 1,
        "unassigned": 1,
    }
    rows = roles_table(roles)
    assert rows[0] == {"layer": 0, "head": 0, "role": "positional:-1", "score": get[0, "positional:-1"].score,
                       "margin": get[0, "positional:-1"].margin, "se": 0.0}  # fmt: skip


def test_missing_threshold_or_baseline_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="induction"):
        classify_heads({"prefix_matching": torch.ones(1, 2)}, {})
    # A raw accuracy is not a syntactic role: the baseline is required.
    with pytest.raises(KeyError, match="syntactic_baseline"):
        classify_heads({"syntactic_accuracy": torch.ones(1, 2, 3)}, THRESHOLDS)


# ------------------------------------------------------------------------------------------------
# End to end: planted attention patterns -> metrics -> roles
# ------------------------------------------------------------------------------------------------

N = 8
T = 2 * N + 1
TOKENS = torch.tensor([[0] + list(range(11, 11 + N)) * 2])  # BOS, r_1..r_8, r_1..r_8
TOKEN_FREQ = torch.arange(30, dtype=torch.float32)  # token 11 (positions 1 and 9) is the rarest
# Relation 0 ("nsubj"): 3->2, 5->3, 8->5, 12->10, 15->12, 16->15; relation 1 ("obj"): 6->4, 14->13.
DEP_HEADS = torch.full((1, T), -1)
DEP_RELS = torch.full((1, T), -1)
for dep, gov, rel in [(3, 2, 0), (5, 3, 0), (8, 5, 0), (12, 10, 0), (15, 12, 0), (16, 15, 0), (6, 4, 1), (14, 13, 1)]:
    DEP_HEADS[0, dep], DEP_RELS[0, dep] = gov, rel


def planted_layer(rows_per_head: list[list[list[float]] | list[int]]) -> torch.Tensor:
    """(1, H, T, T) from per-head rows: a list of key indices (one-hot) or a full (T, T) matrix."""
    heads = []
    for rows in rows_per_head:
        if isinstance(rows[0], int):
            A = torch.zeros(T, T)
            A[torch.arange(T), torch.tensor(rows)] = 1.0
        else:
            A = torch.tensor(rows)
        heads.append(A)
    return torch.stack(heads)[None]


SELF = list(range(T))
PREV = [max(q - 1, 0) for q in range(T)]
INDUCTION_SELF = SELF[: N + 1] + [i + 1 for i in range(1, N + 1)]  # first half attends to itself
INDUCTION_BOS = [0] * (N + 1) + [i + 1 for i in range(1, N + 1)]  # first half dumps on BOS
DUPLICATE = SELF[: N + 1] + list(range(1, N + 1))
SINK = [0] * T
RARE = [0] + [1] * (T - 1)
SYNTACTIC = [int(DEP_HEADS[0, q]) if DEP_RELS[0, q] == 0 else q for q in range(T)]
UNIFORM = (torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]).tolist()

LAYERS = [
    planted_layer([PREV, INDUCTION_SELF, DUPLICATE, SINK]),
    planted_layer([UNIFORM, RARE, SYNTACTIC, INDUCTION_BOS]),
]
COPYING_SIGN = [[-1, 1, -1, -1], [-1, -1, -1, 1]]  # the two induction heads copy, the rest suppress

EXPECTED = {
    (0, 0): ["positional:-1", "previous_token"],
    (0, 1): ["induction", "copying"],
    (0, 2): ["duplicate"],
    (0, 3): ["sink"],
    (1, 0): ["broad"],
    (1, 1): ["rare_word"],
    (1, 2): ["syntactic:nsubj"],
    # Attending to BOS while nothing matches also makes it a sink head (9 of 17 queries on BOS).
    (1, 3): ["induction", "copying", "sink"],
}


def planted_copying(signs: list[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    V, d, hd = 30, 8, 2
    W_E = torch.randn(V, d, generator=g)
    R = torch.randn(len(signs), d, hd, generator=g)
    W_O = torch.stack([s * R[h].T for h, s in enumerate(signs)])
    return copying_score(W_E, W_E.T, R, W_O)


def layer_metrics(attn: torch.Tensor) -> dict[str, torch.Tensor]:
    _, offset, frac = positional_heads(attn, max_offset=3, threshold=0.9)
    return {
        "positional_frac": frac,
        "positional_offset": offset,
        "syntactic_accuracy": dependency_accuracy(attn, DEP_HEADS, DEP_RELS, 2),
        "prefix_matching": prefix_matching_score(attn, TOKENS),
        "duplicate_matching": duplicate_matching_score(attn, TOKENS),
        "sink": sink_score(attn),
        "rare_word": rare_token_score(attn, TOKENS, TOKEN_FREQ),
        "normalized_entropy": normalized_entropy(attn),
    }


def test_planted_heads_get_exactly_their_roles() -> None:
    per_layer = [layer_metrics(A) for A in LAYERS]
    metrics = {key: torch.stack([m[key] for m in per_layer]) for key in per_layer[0]}
    metrics["copying"] = torch.stack([planted_copying(signs) for signs in COPYING_SIGN])
    metrics["syntactic_baseline"], _ = offset_baseline(DEP_HEADS, DEP_RELS, 2, max_offset=3, causal=True)
    assert metrics["syntactic_baseline"].tolist() == pytest.approx([1 / 3, 1 / 2])

    roles = classify_heads(metrics, THRESHOLDS, relation_names=["nsubj", "obj"])
    got: dict[tuple[int, int], list[str]] = {}
    for r in roles:
        got.setdefault((r.layer, r.head), []).append(r.role)
    assert got == EXPECTED
    assert all(isinstance(r, HeadRole) and (r.margin >= 0) for r in roles)
    assert role_counts(roles) == {
        "positional": 1,
        "previous_token": 1,
        "syntactic": 1,
        "induction": 2,
        "duplicate": 1,
        "copying": 2,
        "sink": 2,
        "rare_word": 1,
        "broad": 1,
    }
