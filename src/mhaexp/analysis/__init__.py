"""Per-head analysis during training: probe collection, roles, exports, plots, W&B logging, the callback.

The measures themselves live in :mod:`mhaexp.heads`; this package runs the model on probe data,
feeds them, classifies roles and writes what it found.
"""

from mhaexp.analysis.roles import HeadRole, classify_heads, role_counts, roles_table

__all__ = ["HeadRole", "classify_heads", "role_counts", "roles_table"]
