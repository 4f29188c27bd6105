"""Pure per-head measures: pattern metrics, weight metrics, similarity between heads, importance.

Every function takes tensors (or a model and batches) and returns one score per head; none trains or
logs. See :mod:`mhaexp.heads.patterns` for the shared conventions (shapes, masks, causal vs bidirectional).
"""

from mhaexp.heads.importance import normalize_by_layer
from mhaexp.heads.patterns import (
    antecedent_accuracy,
    confidence,
    dependency_accuracy,
    duplicate_matching_score,
    duplicate_token_score,
    entropy,
    induction_score,
    is_causal,
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
from mhaexp.heads.similarity import gqa_group_diversity, js_divergence_matrix, mds_embedding
from mhaexp.heads.weights import copying_score

__all__ = [
    "antecedent_accuracy",
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
    "sink_rate",
    "sink_score",
    "syntactic_heads",
]
