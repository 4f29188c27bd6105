"""The report's PNGs: loss and head roles against head counts, role emergence, pruning curves.

Plots use ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot): no global backend is set, so
this works headless and from a notebook alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mhaexp.compare.report.aggregation import ROLE_ORDER, aggregate, role_columns, role_points
from mhaexp.compare.runs import ROLE_PREFIX

DPI = 110


def _log2_heads_axis(ax: object, values: Sequence[float]) -> None:
    ticks = sorted({int(v) for v in values if pd.notna(v) and v > 0})
    if len(ticks) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


_TITLES = {"best_val_loss": "best val loss vs n_heads", "val/loss": "final val loss vs n_heads"}
# Roles often share a count; a small horizontal dodge and own marker per role keep every line visible.
_MARKERS = "osD^vP*Xhp<>"


def _dodge(x: pd.Index, i: int, n: int) -> np.ndarray:
    return np.asarray(x, dtype=float) * 2 ** ((i - (n - 1) / 2) * 0.025)


def plot_loss_vs_heads(
    agg: pd.DataFrame, runs: pd.DataFrame, metric: str, path: Path, axes: Sequence[str] = ()
) -> Path | None:
    """Metric (mean ± std over seeds) vs n_heads, a line per series, a point per configuration; val loss beside."""
    if agg.empty or agg["mean"].isna().all():
        return None
    panels: list[tuple[str, pd.DataFrame]] = [(metric, agg)]
    final = "val/loss"
    if metric != final and final in runs.columns and runs.loc[runs["status"] == "ok", final].notna().any():
        panels.append((final, aggregate(runs, final, axes)))
    n_series = agg["series"].nunique()
    if agg["n_heads"].nunique() == 1 and n_series > 1:
        return _plot_loss_by_series(panels, path)
    # Series labels name every other differing key: a legend below the panels, a line per series.
    legend_h = 0.25 * n_series if n_series > 1 else 0.0
    fig = Figure(figsize=(5.5 * len(panels), 4.2 + legend_h), layout="constrained")
    for i, (name, data) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for series, part in data.groupby("series", sort=False):
            part = part.sort_values("n_heads", kind="stable")
            ax.errorbar(part["n_heads"], part["mean"], yerr=part["std"].fillna(0), marker="o", capsize=3, label=series)
        _log2_heads_axis(ax, data["n_heads"])
        ax.set_xlabel("n_heads (log scale)")
        ax.set_ylabel(f"{name} (mean ± std over seeds)")
        ax.set_title(_TITLES.get(name, f"{name} vs n_heads"))
        ax.grid(alpha=0.3)
    if n_series > 1:
        fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize="small")
    fig.savefig(path, dpi=DPI)
    return path


def _plot_loss_by_series(panels: list[tuple[str, pd.DataFrame]], path: Path) -> Path:
    # One head count: against n_heads every series would sit on one x, hiding each other. A row per
    # series instead, its label written once, horizontally, on the shared y axis.
    labels = list(dict.fromkeys(panels[0][1]["series"]))
    heads = _fmt_heads(panels[0][1]["n_heads"].iloc[0])
    fig = Figure(
        figsize=(4.5 * len(panels) + 0.07 * max(map(len, labels)), 1.6 + 0.35 * len(labels)), layout="constrained"
    )
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (name, data) in zip(axes, panels, strict=True):
        by = data.set_index("series").reindex(labels)
        ax.errorbar(by["mean"], range(len(labels)), xerr=by["std"].fillna(0), fmt="o", capsize=3)
        ax.set_xlabel(f"{name} (mean ± std over seeds)")
        ax.set_title(f"{_TITLES.get(name, name).removesuffix(' vs n_heads')}, {heads} heads", fontsize="medium")
        ax.grid(alpha=0.3)
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].set_ylim(len(labels) - 0.5, -0.5)  # first configuration on top, as in the table
    fig.savefig(path, dpi=DPI)
    return path


def _fmt_heads(value: object) -> str:
    return "?" if pd.isna(value) else str(int(value))


def plot_roles_vs_heads(runs: pd.DataFrame, path: Path, axes: Sequence[str] = ()) -> Path | None:
    """Heads per role (mean ± std over seeds) against n_heads and n_kv_heads: a panel per series, a line per role.

    A panel is one value of every axis but the x axis's own key, so no point averages configurations.
    """
    roles = role_columns(runs)
    if not roles or (runs["status"] == "ok").sum() == 0:
        return None
    panels: list[tuple[str, str, pd.DataFrame]] = []
    for by in ("n_heads", "n_kv_heads"):
        points = role_points(runs, axes, by)
        if by == "n_kv_heads" and points["n_kv_heads"].nunique() < 2:
            continue  # one K/V head count: the panel would repeat n_heads' points
        panels += [(by, str(series), part) for series, part in points.groupby("series", sort=False)]
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.9 * rows), layout="constrained")
    for i, (by, series, part) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        part = part.sort_values(by, kind="stable")
        for j, col in enumerate(roles):
            ax.errorbar(
                _dodge(pd.Index(part[by]), j, len(roles)),
                part[f"{col}:mean"],
                yerr=part[f"{col}:std"].fillna(0),
                marker=_MARKERS[j % len(_MARKERS)],
                capsize=3,
                label=col.removeprefix(ROLE_PREFIX),
            )
        _log2_heads_axis(ax, part[by])
        ax.set_xlabel(f"{by} (log scale)")
        ax.set_ylabel("heads with the role (all layers)")
        ax.set_title(f"head roles vs {by}" + ("" if series == "all runs" else f"\n{series}"), fontsize="small")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize="small")
    fig.savefig(path, dpi=DPI)
    return path


def plot_role_emergence(role_history: pd.DataFrame, path: Path, cols: int = 4) -> Path | None:
    """Per run, heads per role vs training step: when each role appears."""
    if role_history.empty:
        return None
    runs = list(dict.fromkeys(role_history["run"]))
    present = set(role_history["role"])
    roles = [r for r in ROLE_ORDER if r in present] + sorted(present - set(ROLE_ORDER))
    colors = {r: f"C{i % 10}" for i, r in enumerate(roles)}
    cols = min(cols, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax, run in zip(axes.flat, runs, strict=False):
        part = role_history[role_history["run"] == run]
        # A role absent at a step had 0 heads then, not an unknown count.
        table = part.pivot_table(index="step", columns="role", values="heads", aggfunc="sum", fill_value=0)
        for role in roles:
            if role in table:
                ax.plot(table.index, table[role], marker=".", color=colors[role], label=role)
        ax.set_title(run, fontsize="small")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(runs) :]:
        ax.set_axis_off()
    axes[0][0].set_ylabel("heads")
    handles = [ax for ax in axes.flat if ax.lines]
    if handles:
        lines = {line.get_label(): line for ax in handles for line in ax.lines}
        fig.legend(
            [lines[r] for r in roles if r in lines],
            [r for r in roles if r in lines],
            loc="outside lower center",
            ncols=min(len(lines), 6),
            fontsize="small",
        )
    fig.suptitle("role emergence over training (heads per role)")
    fig.savefig(path, dpi=DPI)
    return path


def plot_pruning(pruning: pd.DataFrame, path: Path) -> Path | None:
    """Quality vs fraction of heads pruned, a line per run × criterion."""
    if pruning.empty:
        return None
    quality = ["val_loss"] + (["val_acc"] if pruning["val_acc"].notna().any() else [])
    fig = Figure(figsize=(5.5 * len(quality), 4.2), layout="constrained")
    for i, col in enumerate(quality):
        ax = fig.add_subplot(1, len(quality), i + 1)
        for (run, criterion), part in pruning.groupby(["run", "criterion"], sort=False):
            part = part.sort_values("frac_pruned")
            ax.plot(part["frac_pruned"], part[col], marker="o", label=f"{run} · {criterion}")
        ax.set_xlabel("fraction of heads pruned")
        ax.set_ylabel(col)
        ax.set_title(f"pruning: {col} vs fraction pruned")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize="x-small")
    fig.savefig(path, dpi=DPI)
    return path
