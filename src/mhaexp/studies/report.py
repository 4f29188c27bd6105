"""``verdict.json`` and ``report.md`` of a study, written from its claims (never by hand)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mhaexp.studies.runner import REPORT_FILE, VERDICT_FILE, Budget, budget_dict
from mhaexp.studies.verdict import UNTESTABLE, Claim, Measure, decidable, verdict_word


def verdict_document(
    study: str,
    title: str,
    claims: Sequence[Claim],
    budget: Budget,
    stage_seconds: dict[str, float],
    runtime_s: float | None,
) -> dict[str, Any]:
    return {
        "study": study,
        "title": title,
        "budget": budget_dict(budget),
        "runtime_s": runtime_s,
        "stage_seconds": dict(stage_seconds),
        "claims": [c.to_json() for c in claims],
    }


def _ours(c: Claim) -> str:
    if isinstance(c.ours, Measure):
        return str(c.ours)
    return "; ".join(f"{k}: {m}" for k, m in c.ours.items())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report_markdown(doc: dict[str, Any], claims: Sequence[Claim], notes: Sequence[str] = ()) -> str:
    b = doc["budget"]
    lines = [
        f"# {doc['title']}",
        "",
        f"Study `{doc['study']}`: {len(claims)} claims, "
        f"{sum(c.holds is True for c in claims)} hold, {sum(c.holds is False for c in claims)} do not, "
        f"{sum(c.holds is None for c in claims)} inconclusive, {sum(c.holds == UNTESTABLE for c in claims)} "
        f"untestable ({sum(c.holds is True for c in decidable(claims))} of {len(decidable(claims))} testable hold). "
        f"Budget: steps={b['steps'] or 'default'}, "
        f"seeds={b['seeds'] or 'default'}, smoke={b['smoke']}, jobs at once={b['n_jobs']}"
        + (f", overrides: `{' '.join(b['extra'])}`" if b["extra"] else "")
        + (f". Ran in {doc['runtime_s'] / 60:.1f} min." if doc["runtime_s"] is not None else "."),
        "",
        "| claim | paper | ours | criterion | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in claims:
        lines.append(
            f"| {_cell(c.claim)} | {_cell(c.paper or '—')} | {_cell(_ours(c))} | {_cell(c.criterion)} "
            f"| **{verdict_word(c.holds)}** |"
        )
    for i, c in enumerate(claims, 1):
        lines += ["", f"## {i}. {c.claim}", "", f"*Source:* {c.source}.", ""]
        criterion = c.criterion + (f" (from {c.criterion_source})" if c.criterion_source else "")
        lines += [f"- **Metric:** {c.metric}", f"- **Ours:** {_ours(c)}", f"- **Criterion:** {criterion}"]
        if c.paper:
            lines.append(f"- **Paper:** {c.paper}")
        lines.append(f"- **Verdict:** {verdict_word(c.holds)}" + (f". {c.why}" if c.why else ""))
        if c.runs:
            lines.append(f"- **Runs:** {', '.join(f'`{r}`' for r in c.runs)}")
        if c.plot:
            lines += ["", f"![{c.metric}]({c.plot})"]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def write_report(out: Path, doc: dict[str, Any], claims: Sequence[Claim], notes: Sequence[str] = ()) -> None:
    """Both files, each written whole and renamed into place."""
    for name, text in (
        (VERDICT_FILE, json.dumps(doc, indent=2) + "\n"),
        (REPORT_FILE, report_markdown(doc, claims, notes)),
    ):
        tmp = Path(out) / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, Path(out) / name)


@contextmanager
def figure(path: Path, size: tuple[float, float] = (5, 3.2), ncols: int = 1) -> Iterator[Any]:
    """``with figure(ctx.out / "x.png") as (fig, ax):`` draw; the PNG is written when the block ends."""
    import matplotlib

    matplotlib.use("Agg")  # no display: studies run headless
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=size)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
