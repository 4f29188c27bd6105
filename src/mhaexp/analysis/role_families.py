"""Head-role families in display order: shared by the analysis and the comparison report (no torch).

The families are those of the role registry (:data:`mhaexp.analysis.registry.ROLES`), ``unassigned`` last.
"""

from __future__ import annotations

from mhaexp.analysis.registry import role_families

# Display and sort order of role families within one head.
ROLE_FAMILIES: tuple[str, ...] = role_families()
