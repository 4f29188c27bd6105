"""Per-head analysis: pattern metrics, weight metrics, head similarity and role classification.

All metric functions are pure and return one score per head; see :mod:`mhaexp.analysis.metrics` for
the shared conventions (shapes, masks, causal vs bidirectional).
"""

from mhaexp.analysis.metrics import (
    antecedent_accuracy,
    confidence,
    dependency_accuracy,
    duplicate_matching_score,
    duplicate_token_score,
    entropy,
    induction_score,
    is_causal,
    normalize_by_layer,
    normalized_entropy,
    offset_baseline,
    positional_heads,
    prefix_matching_score,
    previous_token_score,
    rare_token_score,
    relative_position_profile,
    sink_rate,
    sink_score,
    syntactic_heads,
)
from mhaexp.analysis.roles import HeadRole, classify_heads, role_counts, roles_table
from mhaexp.analysis.similarity import gqa_group_diversity, js_divergence_matrix, mds_embedding
from mhaexp.analysis.weights import copying_score

__all__ = [
    "HeadRole",
    "antecedent_accuracy",
    "classify_heads",
    "confidence",
    "copying_score",
    "dependency_accuracy",
    "duplicate_matching_score",
    "duplicate_token_score",
    "entropy",
    "gqa_group_diversity",
    "induction_score",
    "is_causal",
    "js_divergence_matrix",
    "mds_embedding",
    "normalize_by_layer",
    "normalized_entropy",
    "offset_baseline",
    "positional_heads",
    "prefix_matching_score",
    "previous_token_score",
    "rare_token_score",
    "relative_position_profile",
    "role_counts",
    "roles_table",
    "sink_rate",
    "sink_score",
    "syntactic_heads",
]
