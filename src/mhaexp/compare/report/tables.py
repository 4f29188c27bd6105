"""The report's tables as display strings, and their rendering as aligned text, Markdown or HTML."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from mhaexp.compare.report.aggregation import Naming, shown_axes
from mhaexp.compare.runs import ROLE_PREFIX, SHAPE_COLUMNS, format_value


def _fmt_int(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def _fmt_float(value: object, digits: int = 4, signed: bool = False) -> str:
    if value is None or pd.isna(value):
        return "-"
    return f"{float(value):{'+' if signed else ''}.{digits}f}"


def _fmt_count(value: object) -> str:
    # Role counts are means over seeds: whole numbers stay whole, halves show one decimal.
    if value is None or pd.isna(value):
        return "-"
    return f"{round(float(value), 1):g}"


def config_table(agg: pd.DataFrame, metric: str, axes: Sequence[str] = (), names: Naming | None = None) -> pd.DataFrame:
    """The aggregate as display strings, one column per header: shape, then the differing config keys.

    With short ``names`` one ``name`` column stands for the keys they name (:meth:`Naming.key_table`).
    """
    roles = [c for c in agg.columns if c.startswith(ROLE_PREFIX)]
    columns: dict[str, object] = {
        "n_heads": agg["n_heads"].map(_fmt_int),
        "n_kv_heads": agg["n_kv_heads"].map(_fmt_int),
        "head_dim": agg["head_dim"].map(_fmt_int),
        "d_model": agg["d_model"].map(_fmt_int),
        "pruning": agg["pruning"].astype(str),
    }
    named = names.keys if names is not None and names.short else ()
    if named:
        columns["name"] = [names.of(row) for _, row in agg.iterrows()]
    for axis in shown_axes(agg, axes):
        if axis not in named:
            columns[axis] = agg[axis].map(format_value)
    columns.update(
        {
            "runs": agg["runs"].map(_fmt_int),
            f"{metric} (mean ± std)": [
                f"{_fmt_float(m)} ± {'n/a' if pd.isna(s) else _fmt_float(s)}"
                for m, s in zip(agg["mean"], agg["std"], strict=True)
            ],
            "params": agg["params/total"].map(_fmt_int) if "params/total" in agg else "-",
            "KV bytes/token": agg["kv_cache_bytes_per_token"].map(_fmt_int)
            if "kv_cache_bytes_per_token" in agg
            else "-",
        }
    )
    table = pd.DataFrame(columns)
    for col in roles:
        table[col.removeprefix(ROLE_PREFIX)] = agg[col].map(_fmt_count)
    return table


def configurations_frame(agg: pd.DataFrame, metric: str, axes: Sequence[str]) -> pd.DataFrame:
    """``configurations.csv``: the aggregate with raw numbers, every axis as a column."""
    roles = [c for c in agg.columns if c.startswith(ROLE_PREFIX)]
    cols = ["config_id", "config", *SHAPE_COLUMNS, *[a for a in axes if a not in SHAPE_COLUMNS], "runs"]
    frame = agg[[*dict.fromkeys(cols), "mean", "std"]].rename(
        columns={"mean": f"{metric}_mean", "std": f"{metric}_std"}
    )
    extra = [c for c in ("params/total", "kv_cache_bytes_per_token", *roles) if c in agg]
    return pd.concat([frame, agg[extra]], axis=1)


def gains_table(gains: pd.DataFrame, metric: str) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "series": gains["series"],
            "n_heads": gains["n_heads"].map(_fmt_int),
            metric: gains["mean"].map(_fmt_float),
            "Δ vs previous": gains["delta"].map(lambda v: _fmt_float(v, signed=True)),
            "Δ per doubling": gains["per_doubling"].map(lambda v: _fmt_float(v, signed=True)),
        }
    )
    if gains["series"].nunique() <= 1:
        table = table.drop(columns="series")
    return table


def failed_table(runs: pd.DataFrame) -> pd.DataFrame:
    bad = runs[runs["status"] != "ok"]
    label = bad["overrides"] if "overrides" in bad else pd.Series([None] * len(bad), index=bad.index)
    return pd.DataFrame(
        {
            "run": bad["run"].astype(str),
            "status": bad["status"].astype(str),
            "n_heads": bad["n_heads"].map(_fmt_int),
            "seed": bad["seed"].map(_fmt_int),
            "config": bad["config"].fillna("").astype(str).replace("", "-"),
            "overrides": label.fillna("").astype(str),
            "error": bad["error"].fillna("").astype(str),
        }
    )


def to_text(table: pd.DataFrame, indent: str = "", left_all: bool = False) -> str:
    """Aligned plain-text columns; text columns (every column with ``left_all``) left-aligned, numbers right."""
    headers = list(table.columns)
    cells = [[str(v) for v in row] for row in table.itertuples(index=False)]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    # Text columns, and the config keys (dotted: model.pos) whose values may be text.
    text = ("series", "name", "key", "pruning", "run", "status", "config", "overrides", "error")
    left = {i for i, h in enumerate(headers) if left_all or h in text or "." in h}

    def line(values: Sequence[str]) -> str:
        out = [v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))]
        return (indent + "  ".join(out)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def to_markdown(table: pd.DataFrame) -> str:
    def esc(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(map(esc, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(map(esc, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def to_html(table: pd.DataFrame) -> str:
    return table.to_html(index=False, escape=True, border=0, classes="compare")


def status_line(runs: pd.DataFrame) -> str:
    counts = runs["status"].value_counts()
    parts = [f"{int(counts[s])} {s}" for s in ("ok", "failed", "invalid") if s in counts]
    return f"{len(runs)} runs ({', '.join(parts)})"
