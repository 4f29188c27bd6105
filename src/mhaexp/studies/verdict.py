"""Claims and verdicts: what a study checks, the number it measured, and whether the claim holds.

A verdict is ``True`` (holds), ``False`` (does not hold), ``None`` (inconclusive, with the reason in ``why``)
or :data:`UNTESTABLE` (no outcome of this design could decide it: a bar no share can clear at this head
count, a relation the data fixes to one offset; ``why`` says which). An untestable claim is never reported
as false. Every decision rule lives here, so each study states its criteria with the same words:

* :func:`at_least` / :func:`at_most`: a measure against a fixed bar. Every seed must clear the bar for
  ``True`` and every seed must miss it for ``False``; seeds that disagree give ``None``.
* :func:`greater`: one measure above another. ``True`` only when every seed of ``a`` lies above every seed
  of ``b`` (the two seed ranges do not overlap), ``False`` when every seed of ``a`` lies at or below every
  seed of ``b``; a difference inside the seed spread is ``None``, and so is a single seed, whose spread is
  unknown.
* :func:`paired_greater`: a difference measured within each seed (the same model, two treatments). ``True``
  when every seed's difference is above zero by more than its error bar, ``False`` when every seed's is below
  zero by more than its error bar, ``None`` otherwise.
* :func:`significant_in_every_seed`: a test run within each seed (a permutation test, a signed-rank test
  over paired draws). ``True`` when every seed's p-value is below ``alpha`` with the effect in the claimed
  direction, ``False`` when no seed's is, ``None`` when seeds disagree.
* :func:`untestable`: the design cannot decide the claim; decided before any number is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

UNTESTABLE = "untestable"
Verdict = bool | None | str  # str: only UNTESTABLE


@dataclass(frozen=True)
class Measure:
    """One quantity measured once per seed (NaN where a seed could not measure it)."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float] | float) -> Measure:
        if isinstance(values, int | float):
            values = [values]
        return cls(tuple(float(v) for v in values))

    @property
    def finite(self) -> list[float]:
        return [v for v in self.values if math.isfinite(v)]

    @property
    def n(self) -> int:
        return len(self.finite)

    @property
    def mean(self) -> float:
        f = self.finite
        return sum(f) / len(f) if f else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (NaN with fewer than two)."""
        f = self.finite
        if len(f) < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in f) / (len(f) - 1))

    def __str__(self) -> str:
        if not self.n:
            return "n/a"
        if self.n == 1:
            return f"{self.mean:.4g}"
        return f"{self.mean:.4g} ± {self.std:.2g} (n={self.n})"

    def to_json(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {"mean": num(self.mean), "std": num(self.std), "n": self.n, "values": [num(v) for v in self.values]}


@dataclass
class Claim:
    """One entry of ``verdict.json``: ``{claim, source, metric, ours, criterion, holds, runs}`` and more."""

    claim: str  # one sentence, as the paper makes it
    source: str  # paper, section / table / figure
    metric: str  # what we measured, in words
    ours: Measure | dict[str, Measure]
    criterion: str  # the rule, stated before the numbers
    holds: Verdict
    criterion_source: str = ""  # where in the paper the criterion comes from (section, table, figure)
    why: str = ""  # why it is inconclusive or does not hold, or what the reader should know
    paper: str = ""  # the paper's own figure, for the report
    runs: list[str] = field(default_factory=list)  # run directories it was read from, relative to the study
    plot: str | None = None  # a figure in the study directory that shows it

    def to_json(self) -> dict[str, Any]:
        ours = {k: m.to_json() for k, m in self.ours.items()} if isinstance(self.ours, dict) else self.ours.to_json()
        return {
            "claim": self.claim,
            "source": self.source,
            "metric": self.metric,
            "ours": ours,
            "criterion": self.criterion,
            "criterion_source": self.criterion_source,
            "holds": self.holds,
            "why": self.why,
            "paper": self.paper,
            "runs": list(self.runs),
            "plot": self.plot,
        }


def decided(verdict: tuple[Verdict, str]) -> dict[str, Any]:
    """``Claim(..., **decided(at_least(m, 0.5)))``: a decision rule's (verdict, why) as Claim's fields."""
    return {"holds": verdict[0], "why": verdict[1]}


VERDICT_WORDS: dict[Verdict, str] = {
    True: "holds",
    False: "does not hold",
    None: "inconclusive",
    UNTESTABLE: "untestable",
}


def verdict_word(holds: Verdict) -> str:
    return VERDICT_WORDS[holds]


def decidable(claims: Iterable[Claim]) -> list[Claim]:
    """The claims the design could decide (the share that holds is counted over these)."""
    return [c for c in claims if c.holds != UNTESTABLE]


def untestable(why: str) -> tuple[Verdict, str]:
    """A claim this design cannot decide, with the reason (stated from the design, not from the numbers)."""
    return UNTESTABLE, why


def _against_bar(m: Measure, passes: Sequence[bool], bar_text: str) -> tuple[Verdict, str]:
    if not m.n:
        return None, "not measured: no seed produced a value"
    if all(passes):
        return True, ""
    if not any(passes):
        return False, f"every seed misses {bar_text} ({m})"
    return None, f"seeds disagree about {bar_text}: {', '.join(f'{v:.4g}' for v in m.finite)}"


def at_least(m: Measure, bar: float) -> tuple[Verdict, str]:
    """Holds when every seed's value is ``>= bar``."""
    return _against_bar(m, [v >= bar for v in m.finite], f">= {bar:g}")


def at_most(m: Measure, bar: float) -> tuple[Verdict, str]:
    """Holds when every seed's value is ``<= bar``."""
    return _against_bar(m, [v <= bar for v in m.finite], f"<= {bar:g}")


def greater(a: Measure, b: Measure) -> tuple[Verdict, str]:
    """Holds when every seed of ``a`` exceeds every seed of ``b``; inside the seed spread is inconclusive."""
    if a.n < 2 or b.n < 2:
        return None, f"needs at least 2 seeds on each side to tell a difference from seed noise (have {a.n}, {b.n})"
    if min(a.finite) > max(b.finite):
        return True, ""
    if max(a.finite) <= min(b.finite):
        return False, f"the other way round, beyond the seed spread ({a} vs {b})"
    return None, f"the difference lies inside the seed spread ({a} vs {b})"


def paired_greater(diff: Measure, se: Measure | None = None, z: float = 2.0) -> tuple[Verdict, str]:
    """Per-seed paired differences ``a - b``: every seed above ``z`` error bars holds, every seed below fails.

    ``se`` gives each seed's standard error of its difference (from the error bars of the metrics, or from
    repeated draws within the seed); without it the sign alone decides. A single seed is enough for a paired
    rule only with its error bar: without one, its spread is unknown.
    """
    if not diff.n:
        return None, "not measured: no seed produced a value"
    bars = [0.0] * len(diff.values) if se is None else [z * s for s in se.values]
    pairs = [(d, b) for d, b in zip(diff.values, bars, strict=True) if math.isfinite(d)]
    if not all(math.isfinite(b) for _, b in pairs):  # a seed without its bar would be decided on the others
        return None, f"a seed's difference has no error bar ({diff}; se {se})"
    if se is None and len(pairs) < 2:
        return None, f"a paired difference without an error bar needs at least 2 seeds (have {len(pairs)})"
    if all(d > b for d, b in pairs):
        return True, ""
    if all(d < -b for d, b in pairs):
        return False, f"every seed's paired difference is below zero ({diff})"
    margin = f" by more than {z:g} standard errors" if se is not None else ""
    return None, f"not every seed's paired difference is above zero{margin} ({diff})"


def significant_in_every_seed(p: Measure, effect: Measure, alpha: float = 0.05) -> tuple[Verdict, str]:
    """A test within each seed: ``p`` its p-values, ``effect`` the signed effect (> 0: the claimed direction)."""
    pairs = [(pv, e) for pv, e in zip(p.values, effect.values, strict=True) if math.isfinite(pv)]
    if not pairs:
        return None, "not measured: no seed produced a p-value"
    sig = [pv < alpha and e > 0 for pv, e in pairs]
    ps = ", ".join(f"{pv:.3g}" for pv, _ in pairs)
    if all(sig):
        return True, f"p = {ps} (< {alpha:g} in every seed)"
    if not any(sig):
        return False, f"no seed shows it at p < {alpha:g} in the claimed direction (p = {ps}; effect {effect})"
    return None, f"seeds disagree: p = {ps} (alpha {alpha:g}; effect {effect})"


def all_hold(parts: Sequence[tuple[Verdict, str]]) -> tuple[Verdict, str]:
    """A claim made of parts in order (preconditions first): the first part that is not true decides."""
    for verdict, why in parts:
        if verdict is not True:
            return verdict, why
    return True, "; ".join(w for _, w in parts if w)


def every(parts: Sequence[tuple[Verdict, str]]) -> tuple[Verdict, str]:
    """A claim that is the conjunction of its parts (no preconditions among them): one part that fails
    fails the claim, whatever the others say; else an undecided part leaves it undecided. With
    :func:`all_hold` a part undecided before a failed one would report the claim as inconclusive."""
    for failed in (False, None):
        hits = [why for verdict, why in parts if verdict is failed]
        if hits:
            return failed, "; ".join(w for w in hits if w)
    return all_hold(parts)  # the rest are true or untestable: the first untestable part says why
