"""The seed document's table "What Different Heads Learn", filled in from measured head roles.

The seed names five heads on "the cat that sat on the mat was fluffy". Each row maps to roles of
:mod:`mhaexp.analysis.roles`; a row is reproduced when some head holds one of them, i.e. clears the
role's bar (a syntactic role: 10 points over the best fixed-offset/position baseline; positional: one
offset takes the argmax for 90% of queries). The best such head (largest margin) is shown.

    python -m mhaexp.analysis.seed_roles RUN_DIR [RUN_DIR ...]     # best head per row across runs

Reads only ``<run>/analysis/head_roles.csv``; no torch.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mhaexp.analysis.registry import role_interval
from mhaexp.rundir import ANALYSIS_DIR, HEAD_ROLES_FILE


@dataclass(frozen=True)
class SeedRow:
    label: str
    roles: frozenset[str]  # any of these roles reproduces the row
    example: str = ""  # the seed's own words for the row, on "The cat that sat on the mat was fluffy"

    def matches(self, role: str) -> bool:
        return role in self.roles


SEED_ROWS: tuple[SeedRow, ...] = (
    SeedRow(
        "syntactic: subject-verb",
        frozenset({"syntactic:nsubj"}),
        'HEAD 1 (Syntactic - Subject-Verb): "cat" <-> "was" (subject-verb agreement)',
    ),
    SeedRow(
        "positional: adjacent",
        frozenset({"positional:-1", "positional:1"}),
        "HEAD 2 (Positional - Adjacent): each token -> previous/next token",
    ),
    SeedRow(
        "noun-adjective",
        frozenset({"syntactic:amod:pred", "syntactic:amod"}),
        'HEAD 3 (Semantic - Noun-Adjective): "cat" <-> "fluffy"',
    ),
    SeedRow("coreference", frozenset({"coreference"}), 'HEAD 4 (Coreference): "that" <-> "cat"'),
    SeedRow(
        "prepositional",
        frozenset({"syntactic:pobj", "syntactic:prep"}),
        'HEAD 5 (Prepositional): "sat" <-> "on" <-> "mat" (PP attachment)',
    ),
)


@dataclass(frozen=True)
class Found:
    run: str
    layer: int
    head: int
    role: str
    score: float
    margin: float
    se: float = math.nan


def read_roles(run_dir: Path) -> list[dict[str, str]]:
    """The final roles of a run (``analysis/head_roles.csv``); [] when the run has none."""
    path = Path(run_dir) / ANALYSIS_DIR / HEAD_ROLES_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def fill(runs: Iterable[tuple[str, Sequence[dict[str, str]]]]) -> list[tuple[SeedRow, Found | None]]:
    """Per seed row, the head with the largest margin among the runs' roles that match it."""
    best: dict[str, Found] = {}
    for name, rows in runs:
        for row in rows:
            if not row.get("margin"):
                continue
            for seed in SEED_ROWS:
                if seed.matches(row["role"]):
                    layer, head = int(row["layer"]), int(row["head"])
                    score, margin, se = float(row["score"]), float(row["margin"]), float(row.get("se") or "nan")
                    found = Found(name, layer, head, row["role"], score, margin, se)
                    if seed.label not in best or found.margin > best[seed.label].margin:
                        best[seed.label] = found
    return [(seed, best.get(seed.label)) for seed in SEED_ROWS]


def format_table(filled: Sequence[tuple[SeedRow, Found | None]], show_run: bool = False) -> list[str]:
    """Printable lines: one per seed row, the head that reproduces it or "not found"."""
    n = sum(found is not None for _, found in filled)
    lines = [f'seed table    : "What Different Heads Learn", {n} of {len(filled)} rows reproduced']
    for seed, found in filled:
        if found is None:
            lines.append(f"  {seed.label:<24} not found")
            continue
        where = f"{found.run}: " if show_run else ""
        role = role_interval(found.role, found.score, found.se, found.margin)
        lines.append(f"  {seed.label:<24} {where}L{found.layer}H{found.head} {role}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m mhaexp.analysis.seed_roles RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        raise SystemExit(2)
    missing = [a for a in args if not (Path(a) / ANALYSIS_DIR / HEAD_ROLES_FILE).is_file()]
    if missing:
        hint = "a run directory trained with analysis on (it has analysis/head_roles.csv)"
        print(f"error: run_dir={missing[0]} is invalid: must be {hint}", file=sys.stderr)
        raise SystemExit(2)
    print("\n".join(format_table(fill((a, read_roles(Path(a))) for a in args), show_run=len(args) > 1)))


if __name__ == "__main__":
    main()
