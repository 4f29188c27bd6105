"""From the runs table to what a report shows: one row per configuration, its label, the gains per doubling of heads."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mhaexp.analysis.role_families import ROLE_FAMILIES
from mhaexp.compare.runs import ROLE_PREFIX, SHAPE_COLUMNS, SHAPE_KEYS, format_value

ROLE_ORDER = ROLE_FAMILIES  # roles not listed there follow alphabetically
# A configuration label (legend entry, panel title) longer than this turns every label into a short name.
LABEL_MAX_CHARS = 40


def role_columns(runs: pd.DataFrame) -> list[str]:
    """``roles/*`` columns that some finished run has heads in, in display order."""
    ok = runs[runs["status"] == "ok"]
    present = [
        c for c in runs.columns if c.startswith(ROLE_PREFIX) and pd.to_numeric(ok[c], errors="coerce").gt(0).any()
    ]

    def rank(col: str) -> tuple[int, str]:
        role = col.removeprefix(ROLE_PREFIX)
        return (ROLE_ORDER.index(role), "") if role in ROLE_ORDER else (len(ROLE_ORDER), role)

    return sorted(present, key=rank)


def aggregate(runs: pd.DataFrame, metric: str, axes: Sequence[str]) -> pd.DataFrame:
    """One row per configuration (``config_id``) over its finished runs: run count, metric mean/std, sizes, roles.

    A configuration is one value of every config axis (``RunSet.axes``), so rows never mix runs that differ
    in anything but their seed. The axis, shape and label columns are carried over from the runs.
    """
    ok = runs[runs["status"] == "ok"].copy()
    roles = role_columns(runs)
    value_cols = [c for c in (metric, "params/total", "kv_cache_bytes_per_token", *roles) if c in ok.columns]
    for col in value_cols:
        ok[col] = pd.to_numeric(ok[col], errors="coerce")
    grouped = ok.groupby("config_id", sort=True)
    out = grouped.size().rename("runs").to_frame()
    carried = list(dict.fromkeys(["config", *SHAPE_COLUMNS, *axes]))
    # Equal within a configuration by construction (they are config values or derived from them).
    out = out.join(grouped[carried].first())
    if metric in ok.columns:
        # Sample std (ddof=1): the spread over seeds, NaN for a single seed.
        out["mean"] = grouped[metric].mean()
        out["std"] = grouped[metric].std(ddof=1)
    else:
        out["mean"] = out["std"] = np.nan
    for col in value_cols[1:]:
        out[col] = grouped[col].mean()
    out = out.reset_index()
    out["series"] = series_labels(out, axes, "n_heads", naming(runs, axes))
    return out


def short_name(i: int) -> str:
    """The ``i``-th configuration name: A..Z, then AA, AB, ... (spreadsheet columns)."""
    name = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        name = chr(ord("A") + r) + name
    return name


@dataclass(frozen=True)
class Naming:
    """What labels a configuration in legends, panel titles and tables: its values of every axis but the head shape.

    While each label stays within ``LABEL_MAX_CHARS`` it is that ``key=value`` text itself; past it, every
    configuration gets a short name (A, B, ...) and :meth:`key_table` says once what each name stands for,
    so legends and titles of runs that differ in many keys stay one word wide.
    """

    keys: tuple[str, ...]
    names: dict[tuple[str, ...], str]
    short: bool

    def of(self, row: pd.Series) -> str:
        return self.names[tuple(format_value(row[k]) for k in self.keys)]

    def key_table(self) -> pd.DataFrame:
        """A row per key the names stand for, a column per name: each differing key listed once."""
        return pd.DataFrame({"key": list(self.keys), **{name: list(values) for values, name in self.names.items()}})


def naming(runs: pd.DataFrame, axes: Sequence[str]) -> Naming:
    """The labels of the finished runs' configurations, named in ``config_id`` order (see :class:`Naming`)."""
    keys = tuple(a for a in axes if a not in SHAPE_KEYS)
    ok = runs[runs["status"] == "ok"].sort_values("config_id", kind="stable")
    values = list(dict.fromkeys(tuple(format_value(v) for v in row) for row in ok[list(keys)].itertuples(index=False)))
    texts = [", ".join(f"{k}={v}" for k, v in zip(keys, vals, strict=True)) for vals in values]
    if all(len(t) <= LABEL_MAX_CHARS for t in texts):
        return Naming(keys, dict(zip(values, texts, strict=True)), short=False)
    return Naming(keys, {vals: short_name(i) for i, vals in enumerate(values)}, short=True)


def series_labels(frame: pd.DataFrame, axes: Sequence[str], x: str, names: Naming) -> list[str]:
    """A line of a plot against shape column ``x``: one per value of every other axis ("all runs" if none).

    Within a series only ``x``'s own config key differs, so each point is one configuration. The label is
    every other axis as ``key=value`` in axis order or, with short names (:class:`Naming`), the name and
    then any other head-shape key that differs.
    """
    other = [a for a in axes if SHAPE_KEYS.get(a) != x]
    if names.short:
        other = [a for a in other if a not in names.keys]
    labels = []
    for _, row in frame.iterrows():
        parts = [names.of(row)] if names.short else []
        parts += [f"{a}={format_value(row[a])}" for a in other]
        labels.append(", ".join(parts) or "all runs")
    return labels


def shown_axes(agg: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """The axes a table shows as columns of their own: all but those its shape columns already tell apart.

    ``model.n_heads`` is the ``n_heads`` column; ``model.head_dim`` (null or a number) is the resolved
    ``head_dim`` column only where every distinct raw value gives a distinct resolved one.
    """
    shown = []
    for axis in axes:
        col = SHAPE_KEYS.get(axis)
        if col is not None and col in agg:
            raw = agg[axis].map(format_value)
            pairs = set(zip(raw, agg[col].map(format_value), strict=True))
            if len(pairs) == raw.nunique() == len({c for _, c in pairs}):
                continue
        shown.append(axis)
    return shown


def marginal_gains(agg: pd.DataFrame) -> pd.DataFrame:
    """Per series, the metric change from each head count to the next, and per doubling of heads.

    Δ per doubling = Δ / log2(n_next / n_prev): a flat tail of ~0 is the "diminishing returns" point.
    """
    rows = []
    for series, part in agg.groupby("series", sort=False):
        # One configuration per head count within a series (series_labels): nothing is averaged here.
        by_heads = part.dropna(subset=["n_heads"]).sort_values("n_heads", kind="stable")
        prev_h = prev_v = None
        for h, v in zip(by_heads["n_heads"], by_heads["mean"], strict=True):
            delta = per_doubling = np.nan
            if prev_h is not None and prev_h > 0 and h > prev_h:
                delta = v - prev_v
                per_doubling = delta / math.log2(h / prev_h)
            rows.append({"series": series, "n_heads": int(h), "mean": v, "delta": delta, "per_doubling": per_doubling})
            prev_h, prev_v = h, v
    return pd.DataFrame(rows, columns=["series", "n_heads", "mean", "delta", "per_doubling"])


def role_points(runs: pd.DataFrame, axes: Sequence[str], by: str) -> pd.DataFrame:
    """Heads per role against shape column ``by``: one point per configuration (mean ± std over its seeds).

    Columns ``series`` (the other axes, :func:`series_labels`), ``by``, ``config_id`` and, per role,
    ``(role, "mean")`` / ``(role, "std")``.
    """
    roles = role_columns(runs)
    ok = runs[runs["status"] == "ok"]
    frame = ok[roles].apply(pd.to_numeric, errors="coerce").assign(config_id=ok["config_id"])
    stats = frame.groupby("config_id", sort=True).agg(["mean", "std"])
    carried = ok.groupby("config_id", sort=True)[list(dict.fromkeys([by, *axes]))].first()
    points = carried.join(stats.set_axis([f"{c}:{k}" for c, k in stats.columns], axis=1)).reset_index()
    points.insert(0, "series", series_labels(points, axes, by, naming(runs, axes)))
    return points
