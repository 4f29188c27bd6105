"""Reading what a run wrote, for verdicts: per-head metric series, logged scalars, the summary."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import yaml

from mhaexp.rundir import ANALYSIS_DIR, HEAD_JS_FILE, HEAD_METRICS_FILE, HEAD_ROLES_FILE, METRICS_FILE, SUMMARY_FILE

Series = dict[int, dict[tuple[int, int], float]]  # {step: {(layer, head): value}}


def head_metrics(run_dir: Path, prefix: str) -> dict[str, Series]:
    """Every metric of ``analysis/head_metrics.csv`` whose name starts with ``prefix``, as a series each."""
    out: dict[str, Series] = defaultdict(lambda: defaultdict(dict))
    with (Path(run_dir) / ANALYSIS_DIR / HEAD_METRICS_FILE).open() as f:
        for r in csv.DictReader(f):
            if r["metric"].startswith(prefix):
                out[r["metric"]][int(r["step"])][(int(r["layer"]), int(r["head"]))] = float(r["value"])
    return {m: dict(sorted(series.items())) for m, series in out.items()}


def head_metric(run_dir: Path, metric: str) -> Series:
    """``{step: {(layer, head): value}}`` of one per-head metric from ``analysis/head_metrics.csv``."""
    return head_metrics(run_dir, metric).get(metric, {})


def head_metric_with_se(run_dir: Path, metric: str) -> dict[int, dict[tuple[int, int], tuple[float, float]]]:
    """``{step: {(layer, head): (value, se)}}`` of one metric, steps in order (NaN where the table has none)."""
    rows: dict[int, dict[tuple[int, int], tuple[float, float]]] = defaultdict(dict)
    with (Path(run_dir) / ANALYSIS_DIR / HEAD_METRICS_FILE).open() as f:
        for r in csv.DictReader(f):
            if r["metric"] == metric:
                value = float(r["value"]) if r["value"] else math.nan
                rows[int(r["step"])][(int(r["layer"]), int(r["head"]))] = (value, float(r["se"] or "nan"))
    return dict(sorted(rows.items()))


def head_metric_stats(run_dir: Path, metric: str) -> dict[tuple[int, int], tuple[float, float]]:
    """``{(layer, head): (value, se)}`` of one metric at its last step (se NaN where the table has none)."""
    rows = head_metric_with_se(run_dir, metric)
    return rows[max(rows)] if rows else {}


def head_js(run_dir: Path) -> tuple[list[tuple[int, int]], list[list[float]]]:
    """The heads in layer order and the JS divergence between every two (``analysis/head_js.csv``)."""
    pairs: dict[tuple[tuple[int, int], tuple[int, int]], float] = {}
    with (Path(run_dir) / ANALYSIS_DIR / HEAD_JS_FILE).open() as f:
        for r in csv.DictReader(f):
            a, b = (int(r["layer"]), int(r["head"])), (int(r["other_layer"]), int(r["other_head"]))
            pairs[(a, b)] = float(r["js"])
    heads = sorted({a for a, _ in pairs})
    return heads, [[pairs[(a, b)] for b in heads] for a in heads]


def head_metric_max(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """``[(step, max over heads)]``: the best head's value at each analysis step (NaNs ignored)."""
    series = []
    for step, heads in head_metric(run_dir, metric).items():
        finite = [v for v in heads.values() if math.isfinite(v)]
        series.append((step, max(finite) if finite else math.nan))
    return series


def head_metric_mean_se(run_dir: Path, metric: str) -> list[tuple[int, float, float]]:
    """``[(step, mean over heads, se)]`` (heads without a finite value left out). ``se`` is the mean of the heads'
    standard errors: an upper bound on the standard error of their mean, whatever the correlation between
    heads measured on the same sequences (the standard deviation of a sum is at most the sum of theirs)."""
    series = []
    for step, heads in head_metric_with_se(run_dir, metric).items():
        finite = [(v, se) for v, se in heads.values() if math.isfinite(v)]
        if finite:
            series.append((step, sum(v for v, _ in finite) / len(finite), sum(se for _, se in finite) / len(finite)))
    return series


def role_bar(run_dir: Path, key: str) -> float:
    """``analysis.thresholds.<key>`` of the run's own composed config (``.hydra/config.yaml``): the bar its
    roles were assigned with, whatever the YAML says today (one home for every threshold: the config)."""
    cfg = yaml.safe_load((Path(run_dir) / ".hydra" / "config.yaml").read_text(encoding="utf-8"))
    try:
        return float(cfg["analysis"]["thresholds"][key])
    except (KeyError, TypeError):
        raise KeyError(f"{run_dir}: its .hydra/config.yaml has no analysis.thresholds.{key}") from None


def scalar(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """``[(step, value)]`` of one logged scalar from ``metrics.csv`` (rows where it was logged)."""
    rows = []
    with (Path(run_dir) / METRICS_FILE).open() as f:
        for r in csv.DictReader(f):
            v = r.get(key)
            if v not in (None, ""):
                rows.append((int(r["step"]), float(v)))
    return rows


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())


def final_roles(run_dir: Path) -> dict[tuple[int, int], set[str]]:
    """``{(layer, head): roles}`` at the last analysis step (``analysis/head_roles.csv``)."""
    out: dict[tuple[int, int], set[str]] = defaultdict(set)
    with (Path(run_dir) / ANALYSIS_DIR / HEAD_ROLES_FILE).open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    last = max(int(r["step"]) for r in rows)
    for r in rows:
        if int(r["step"]) == last:
            out[(int(r["layer"]), int(r["head"]))].add(r["role"])
    return dict(out)


def rise_window(series: list[tuple[int, float]], low: float = 0.1, high: float = 0.9) -> tuple[int, int] | None:
    """(first step at ``low`` of the climb, first step at ``high``): the span in which ``series`` climbs from
    its first value to its peak (``low``/``high`` are shares of that climb). None when it never climbs."""
    finite = [(s, v) for s, v in series if math.isfinite(v)]
    if len(finite) < 2:
        return None
    start, end = finite[0][1], max(v for _, v in finite)
    if end <= start:
        return None
    at = lambda share: next(s for s, v in finite if v >= start + share * (end - start))  # noqa: E731
    return at(low), at(high)
