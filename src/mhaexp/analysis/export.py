"""The analysis record in the run directory, ``<run_dir>/analysis/``:

* ``head_metrics.csv``: tidy long table, one row per (step, layer, head, metric, value, se, n), appended
  at every analysis step, metrics in the registry's order (:data:`mhaexp.analysis.registry.METRICS`).
  ``se`` is the value's standard error over the probe sequences and ``n`` the number of sequences it rests
  on (empty for metrics without one: weight-only ``copying``, the chosen ``positional_offset``, the JS/MDS
  map, importance and ablation for now). Per-relation metrics are named ``syntactic_accuracy/<relation>``; relations
  with no instance in the probe set are left out. Rows that are not per head use ``head = -1``
  (per-layer values such as ``gqa_ratio``) or ``layer = head = -1`` (the baselines:
  ``syntactic_baseline/<rel>``, the bar of the role rule, is the larger of ``syntactic_offset_baseline``
  and ``syntactic_position_baseline``; the same three for ``coreference``). NaN values are written as empty cells.
* ``head_roles_history.csv``: columns ``step, layer, head, role, family, score, margin, se``, the roles
  of every head at every analysis step (``unassigned`` with empty score/margin if it has none);
  ``head_roles.csv``: the same for the latest step only (the final roles once training ended).
* ``head_js.csv``: columns ``step, layer, head, other_layer, other_head, js``, the Jensen-Shannon divergence
  between every two heads (Clark et al. 2019, Sec. 6), replaced at each expensive analysis (the last one
  once training ended).
* ``summary.json``: heads per role family (``roles/<family>``, zeros included) at the latest step.
* ``analysis.md``: each head with its roles, and the role grid picture; the PNGs beside it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mhaexp.analysis.collect import HeadMetrics
from mhaexp.analysis.registry import role_interval
from mhaexp.analysis.roles import ROLE_FAMILIES, HeadRole, role_counts
from mhaexp.rundir import (
    ANALYSIS_REPORT_FILE,
    HEAD_JS_FILE,
    HEAD_METRICS_FILE,
    HEAD_ROLES_FILE,
    HEAD_ROLES_HISTORY_FILE,
    SUMMARY_FILE,
)

METRIC_COLUMNS = ("step", "layer", "head", "metric", "value", "se", "n")
JS_COLUMNS = ("step", "layer", "head", "other_layer", "other_head", "js")
ROLE_COLUMNS = ("step", "layer", "head", "role", "family", "score", "margin", "se")


def tidy_rows(step: int, hm: HeadMetrics) -> list[dict[str, Any]]:
    """Every number of ``hm`` as (step, layer, head, metric, value, se, n) rows; pruned-away heads are left
    out. ``se`` and ``n`` are None (empty cells) where the metric has none."""
    rows: list[dict[str, Any]] = []

    def add(layer: int, head: int, metric: str, value: float, se: float | None = None, n: float | None = None) -> None:
        count = None if n is None or math.isnan(n) else int(n)
        row = {"step": step, "layer": layer, "head": head, "metric": metric, "value": value}
        rows.append({**row, "se": se, "n": count})

    names = hm.relation_names
    # .tolist() once per metric: indexing a tensor element by element costs microseconds a value.
    for key, value in hm.metrics.items():
        if key.endswith("_baseline"):
            continue
        grid = value.double().tolist()
        se = hm.se[key].double().tolist() if key in hm.se else None
        n = hm.n[key].double().tolist() if key in hm.n else None
        if value.dim() == 3:
            keep = _present_relations(hm)
            for layer, count in enumerate(hm.n_heads):
                for h in range(count):
                    for r in keep:
                        add(
                            layer,
                            h,
                            f"{key}/{names[r]}",
                            grid[layer][h][r],
                            None if se is None else se[layer][h][r],
                            None if n is None else n[layer][h][r],
                        )
        else:
            for layer, count in enumerate(hm.n_heads):
                for h in range(count):
                    add(
                        layer,
                        h,
                        key,
                        grid[layer][h],
                        None if se is None else se[layer][h],
                        None if n is None else n[layer][h],
                    )
    for key, value in hm.metrics.items():
        if not key.endswith("_baseline"):
            continue
        if value.dim() == 1:
            per_relation = value.double().tolist()
            for r in _present_relations(hm):
                add(-1, -1, f"{key}/{names[r]}", per_relation[r])
        else:
            add(-1, -1, key, float(value))
    for key, value in hm.layer_metrics.items():
        for layer, v in enumerate(value.double().tolist()):
            add(layer, -1, key, v)
    return rows


def _present_relations(hm: HeadMetrics) -> list[int]:
    """Relations with at least one instance in the probe set (their baseline is not NaN)."""
    base = hm.metrics.get("syntactic_baseline")
    if base is None:
        return []
    return [r for r, v in enumerate(base.double().tolist()) if not math.isnan(v) and r < len(hm.relation_names)]


def real_roles(roles: Iterable[HeadRole], n_heads: Sequence[int]) -> list[HeadRole]:
    """Drop the rows classify_heads made for NaN-padded heads a pruned layer does not have."""
    return [r for r in roles if r.head < n_heads[r.layer]]


def role_rows(step: int, roles: Iterable[HeadRole]) -> list[dict[str, Any]]:
    return [
        {
            "step": step,
            "layer": r.layer,
            "head": r.head,
            "role": r.role,
            "family": r.family,
            "score": r.score,
            "margin": r.margin,
            "se": r.se,
        }
        for r in roles
    ]


def all_role_counts(roles: Sequence[HeadRole]) -> dict[str, int]:
    """Heads per role family, every family present (0 for none): the ``roles/<family>`` values."""
    counts = role_counts(roles)
    return {f: int(counts.get(f, 0)) for f in ROLE_FAMILIES}


def _cell(v: Any) -> Any:
    """A CSV cell as pandas writes it: NaN and None empty, floats in their shortest repr."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return v


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], header: bool = True) -> str:
    """``rows`` as CSV text, the cells ``pd.DataFrame(rows).to_csv(index=False)`` writes for our tables
    (ints, floats, strings; NaN empty), without building a DataFrame: at every analysis step this was most
    of the cost of writing the tables."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    if header:
        out.writerow(columns)
    out.writerows([_cell(r.get(c)) for c in columns] for r in rows)
    return buf.getvalue()


def _append_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Append rows with one ``write`` call, header first if the file is new: a kill lands before or after
    the step's rows, never inside them. (No fsync: like the checkpoints, the tables survive the process,
    and a power loss would take the checkpoint they belong to as well.)"""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", encoding="utf-8") as f:
        f.write(csv_text(rows, columns, header=new))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def append_metrics(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    path = out_dir / HEAD_METRICS_FILE
    _append_csv(path, rows, METRIC_COLUMNS)
    return path


def write_roles(out_dir: Path, step: int, roles: Sequence[HeadRole], history: bool = True) -> None:
    """``head_roles.csv`` (replaced: latest step) and, when ``history``, one more step of
    ``head_roles_history.csv``."""
    rows = role_rows(step, roles)
    if history:
        _append_csv(out_dir / HEAD_ROLES_HISTORY_FILE, rows, ROLE_COLUMNS)
    _write_atomic(out_dir / HEAD_ROLES_FILE, csv_text(rows, ROLE_COLUMNS))


def drop_after(out_dir: Path, step: int) -> None:
    """Resuming from a checkpoint at ``step``: rows of later steps describe weights that no longer exist
    (the run went back to ``step``) and would be written again; drop them from the appended tables."""
    for name in (HEAD_METRICS_FILE, HEAD_ROLES_HISTORY_FILE):
        path = out_dir / name
        if path.exists() and path.stat().st_size:
            table = pd.read_csv(path)
            if (table["step"] > step).any():
                _write_atomic(path, table[table["step"] <= step].to_csv(index=False))


def write_js(out_dir: Path, step: int, hm: HeadMetrics) -> None:
    """``head_js.csv`` from the expensive tier's JS matrix (nothing without one)."""
    if hm.js is None:
        return
    heads = hm.head_index
    grid = hm.js.double().tolist()
    rows = [
        {"step": step, "layer": a[0], "head": a[1], "other_layer": b[0], "other_head": b[1], "js": grid[i][j]}
        for i, a in enumerate(heads)
        for j, b in enumerate(heads)
    ]
    _write_atomic(out_dir / HEAD_JS_FILE, csv_text(rows, JS_COLUMNS))


def write_summary(out_dir: Path, step: int, roles: Sequence[HeadRole]) -> dict[str, Any]:
    summary: dict[str, Any] = {f"roles/{k}": v for k, v in all_role_counts(roles).items()}
    summary["analysis_step"] = step
    _write_atomic(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True))
    return summary


def role_text(r: HeadRole) -> str:
    """A held role with its interval and margin (:func:`~mhaexp.analysis.registry.role_interval`)."""
    return r.role if r.role == "unassigned" else role_interval(r.role, r.score, r.se, r.margin)


def write_markdown(
    out_dir: Path, step: int, roles: Sequence[HeadRole], hm: HeadMetrics, images: Mapping[str, Path] | None = None
) -> Path:
    """``analysis.md``: the role grid, role counts and one table row per head with all its roles."""
    images = images or {}
    lines = [f"# Head analysis at step {step}", ""]
    if "role_grid" in images:
        lines += [f"![role grid]({Path(images['role_grid']).name})", ""]
    counts = {k: v for k, v in all_role_counts(roles).items() if v}
    lines += ["Heads per role: " + ", ".join(f"{k} {v}" for k, v in counts.items()), ""]
    if hm.relation_names and hm.syntactic_direction:
        dirs = ", ".join(f"{hm.relation_names[r]} {hm.syntactic_direction[r]}" for r in _present_relations(hm))
        lines += [f"Syntactic accuracy direction per relation: {dirs}.", ""]
    lines += ["| layer | head | roles (score ± standard error (margin over the bar)) |", "|---:|---:|---|"]
    by_head: dict[tuple[int, int], list[HeadRole]] = {}
    for r in roles:
        by_head.setdefault((r.layer, r.head), []).append(r)
    for (layer, head), held in sorted(by_head.items()):
        cell = "; ".join(role_text(r) for r in held)
        lines.append(f"| {layer} | {head} | {cell} |")
    pages = [k for k in images if Path(images[k]).suffix == ".html"]
    others = [k for k in images if k != "role_grid" and k not in pages]
    if pages:
        lines += [""] + [f"Interactive: [{k}]({Path(images[k]).name})" for k in pages]
    if others:
        lines += ["", "## Pictures", ""] + [f"![{k}]({Path(images[k]).name})" for k in others]
    path = out_dir / ANALYSIS_REPORT_FILE
    _write_atomic(path, "\n".join(lines) + "\n")
    return path
