"""Head-role families in display order: shared by the analysis and the comparison report (no torch)."""

from __future__ import annotations

# Display and sort order of role families within one head.
ROLE_FAMILIES: tuple[str, ...] = (
    "positional",
    "previous_token",
    "syntactic",
    "coreference",
    "induction",
    "duplicate",
    "copying",
    "sink",
    "rare_word",
    "broad",
    "retrieval",
    "streaming",
    "unassigned",
)
