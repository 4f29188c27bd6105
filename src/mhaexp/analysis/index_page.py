"""``<run>/analysis/index.html``: one page with everything the analysis of a run wrote.

The role grid, the heatmaps, the role timeline and the other pictures; the interactive head view
(embedded, and linked); the relation table when the probe set has dependency arcs; the tables beside
it; the run's config (``<run>/.hydra/config.yaml``). Plain HTML and CSS, only relative links, so the
folder can be copied or served anywhere. Rewritten at every analysis step.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from mhaexp.analysis.collect import HeadMetrics
from mhaexp.analysis.export import all_role_counts
from mhaexp.analysis.roles import HeadRole
from mhaexp.rundir import (
    ANALYSIS_REPORT_FILE,
    HEAD_METRICS_FILE,
    HEAD_ROLES_FILE,
    HEAD_ROLES_HISTORY_FILE,
    SUMMARY_FILE,
    job_config_path,
)

FILE_NAME = "index.html"
# Files of the analysis folder the page links when they exist (see mhaexp.analysis.export).
TABLES = (HEAD_ROLES_FILE, HEAD_ROLES_HISTORY_FILE, HEAD_METRICS_FILE, SUMMARY_FILE, ANALYSIS_REPORT_FILE)
# Picture order on the page; others (attention patterns per layer) follow in name order.
FIRST = ("role_grid", "role_timeline", "heatmaps", "syntactic", "mds")
STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 16px 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; border-bottom: 1px solid #ddd; }
figure { margin: 10px 0 18px 0; } figcaption { font-size: 12px; color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 13px; } td, th { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
iframe { width: 100%; height: 640px; border: 1px solid #ddd; }
pre { background: #f7f7f7; padding: 8px; font-size: 12px; overflow: auto; max-height: 480px; }
.note { font-size: 12px; color: #666; }
"""


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.3f}"


def relation_rows(hm: HeadMetrics, roles: Sequence[HeadRole]) -> list[dict[str, str]]:
    """Per relation with arcs in the probe set: direction, baseline, best head, its accuracy and margin,
    and the heads that hold the role."""
    acc = hm.metrics.get("syntactic_accuracy")
    base = hm.metrics.get("syntactic_baseline")
    if acc is None or base is None:
        return []
    rows = []
    for r, name in enumerate(hm.relation_names):
        if r >= base.shape[0] or bool(torch.isnan(base[r])):
            continue
        a = acc[..., r]
        if bool(torch.isnan(a).all()):
            continue
        flat = int(torch.nan_to_num(a, nan=-math.inf).argmax())
        layer, head = divmod(flat, a.shape[1])
        best = float(a[layer, head])
        holders = [f"L{x.layer}H{x.head}" for x in roles if x.role == f"syntactic:{name}"]
        rows.append(
            {
                "relation": name,
                "direction": hm.syntactic_direction[r] if r < len(hm.syntactic_direction) else "",
                "baseline": _fmt(float(base[r])),
                "best head": f"L{layer}H{head}",
                "accuracy": _fmt(best),
                "margin": _fmt(best - float(base[r])),
                "heads with the role": " ".join(holders) or "none",
            }
        )
    return rows


def _table(rows: Sequence[Mapping[str, str]], numeric: set[str]) -> str:
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if c in numeric else ''}>{html.escape(str(row[c]))}</td>" for c in cols)
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(path: Path, caption: str) -> str:
    """The picture (PNG or SVG; a PDF as a link), with links to its other formats beside it."""
    name, text = html.escape(path.name), html.escape(caption)
    others = sorted(p for p in path.parent.glob(f"{path.stem}.*") if p.suffix in (".svg", ".pdf") and p != path)
    more = " ".join(f'<a href="{html.escape(p.name)}">{p.suffix[1:]}</a>' for p in others)
    body = (
        f'<a href="{name}">{name}</a>'
        if path.suffix == ".pdf"
        else f'<a href="{name}"><img src="{name}" alt="{text}"></a>'
    )
    return f"<figure>{body}<figcaption>{text}{' · also ' + more if more else ''}</figcaption></figure>"


def render(
    out_dir: Path,
    step: int,
    roles: Sequence[HeadRole],
    hm: HeadMetrics,
    images: Mapping[str, Path],
    config_text: str | None = None,
    title: str | None = None,
) -> str:
    """The page (see the module docstring). ``images``: this step's pictures and head view by key."""
    title = title or f"Head analysis: {out_dir.resolve().parent.name}"
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>Analysis at step {step}: {len(hm.head_index)} heads.</p>"]
    counts = {k: v for k, v in all_role_counts(roles).items() if v}
    parts.append("<p>Heads per role: " + html.escape(", ".join(f"{k} {v}" for k, v in counts.items())) + "</p>")

    pictures = {k: Path(p) for k, p in images.items() if Path(p).suffix != ".html" and Path(p).is_file()}
    keys = [k for k in FIRST if k in pictures] + sorted(k for k in pictures if k not in FIRST)
    parts.append("<h2>Pictures</h2>")
    if keys:
        parts += [_figure(pictures[k], k.replace("_", " ")) for k in keys]
    # Pictures are drawn at full analyses only; a periodic one shows what the last full one drew, marked so.
    shown = {p.name for p in pictures.values()}
    earlier = sorted(p for p in out_dir.glob("*.png") if p.name not in shown) if not keys else []
    if earlier:
        parts.append('<p class="note">Drawn at an earlier, full analysis step:</p>')
        parts += [_figure(p, p.stem.replace("_", " ") + " (earlier step)") for p in earlier]
    if not keys and not earlier:
        parts.append(
            '<p class="note">No pictures yet: full analyses draw them (analysis.expensive_every, and the last).</p>'
        )

    view = images.get("head_view")
    if view is not None and Path(view).is_file():
        name = html.escape(Path(view).name)
        parts += [
            "<h2>Head view</h2>",
            f'<p><a href="{name}">Open the head view on its own page</a>.</p>',
            f'<iframe src="{name}" title="head view"></iframe>',
        ]
    rel = relation_rows(hm, roles)
    if rel:
        parts += [
            "<h2>Relations</h2>",
            '<p class="note">Syntactic accuracy per relation: the best head against the baseline a head must beat.</p>',
            _table(rel, {"baseline", "accuracy", "margin"}),
        ]
    tables = [t for t in TABLES if (out_dir / t).is_file()]
    if tables:
        parts += ["<h2>Tables</h2>", "<ul>"] + [f'<li><a href="{t}">{t}</a></li>' for t in tables] + ["</ul>"]
    if config_text is None:
        cfg = job_config_path(out_dir.parent)
        config_text = cfg.read_text(encoding="utf-8") if cfg.is_file() else None
    if config_text:
        parts += ["<h2>Config</h2>", f"<pre>{html.escape(config_text)}</pre>"]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )


def write_index(
    out_dir: Path,
    step: int,
    roles: Sequence[HeadRole],
    hm: HeadMetrics,
    images: Mapping[str, Path],
    config_text: str | None = None,
) -> Path:
    """Write ``out_dir/index.html`` atomically and return its path."""
    path = out_dir / FILE_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(out_dir, step, roles, hm, images, config_text), encoding="utf-8")
    tmp.replace(path)
    return path
