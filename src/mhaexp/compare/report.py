"""Tables and plots of a :class:`~mhaexp.compare.runs.RunSet`: terminal text, Markdown or HTML, PNGs.

Plots use ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot): no global backend is set, so
this works headless and from a notebook alike.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mhaexp.analysis.role_families import ROLE_FAMILIES
from mhaexp.compare.runs import ROLE_PREFIX, SHAPE_COLUMNS, SHAPE_KEYS, RunSet, format_value

ROLE_ORDER = ROLE_FAMILIES  # roles not listed there follow alphabetically
DPI = 110


# --------------------------------------------------------------------------- aggregation


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
    out["series"] = series_labels(out, axes, "n_heads")
    return out


def series_labels(agg: pd.DataFrame, axes: Sequence[str], x: str) -> list[str]:
    """A line of a plot against shape column ``x``: one per value of every other axis ("all runs" if none).

    Within a series only ``x``'s own config key differs, so each point is one configuration.
    """
    other = [a for a in axes if SHAPE_KEYS.get(a) != x]
    if not other:
        return ["all runs"] * len(agg)
    return [", ".join(f"{a}={format_value(row[a])}" for a in other) for _, row in agg.iterrows()]


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


# --------------------------------------------------------------------------- formatting


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


def config_table(agg: pd.DataFrame, metric: str, axes: Sequence[str] = ()) -> pd.DataFrame:
    """The aggregate as display strings, one column per header: shape, then the differing config keys."""
    roles = [c for c in agg.columns if c.startswith(ROLE_PREFIX)]
    columns: dict[str, object] = {
        "n_heads": agg["n_heads"].map(_fmt_int),
        "n_kv_heads": agg["n_kv_heads"].map(_fmt_int),
        "head_dim": agg["head_dim"].map(_fmt_int),
        "d_model": agg["d_model"].map(_fmt_int),
        "pruning": agg["pruning"].astype(str),
    }
    for axis in shown_axes(agg, axes):
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


def to_text(table: pd.DataFrame, indent: str = "") -> str:
    """Aligned plain-text columns; text columns left-aligned, numbers right-aligned."""
    headers = list(table.columns)
    cells = [[str(v) for v in row] for row in table.itertuples(index=False)]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    # Text columns, and the config keys (dotted: model.pos) whose values may be text.
    text = ("series", "pruning", "run", "status", "config", "overrides", "error")
    left = {i for i, h in enumerate(headers) if h in text or "." in h}

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


def terminal_summary(runset: RunSet, metric: str) -> str:
    """What the CLI prints: configurations, marginal gains, failed runs."""
    agg = aggregate(runset.runs, metric, runset.axes)
    lines = [status_line(runset.runs), "", "configurations (finished runs, aggregated over seeds):"]
    lines.append(to_text(config_table(agg, metric, runset.axes), "  ") if len(agg) else "  (no finished runs)")
    gains = marginal_gains(agg)
    if gains["delta"].notna().any():
        lines += [
            "",
            f"marginal gain per doubling of heads ({metric}, mean over seeds):",
            to_text(gains_table(gains, metric), "  "),
        ]
    failed = failed_table(runset.runs)
    if len(failed):
        lines += ["", "failed / invalid runs:", to_text(failed.drop(columns="overrides"), "  ")]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


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
    points.insert(0, "series", series_labels(points, axes, by))
    return points


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


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    path: Path
    plots: list[Path]
    data: list[Path]


_PLOT_TEXT = {
    "loss_vs_heads.png": (
        "Validation loss vs number of heads",
        "Mean ± std over seeds; log-2 x axis, so equal steps are doublings of heads.",
    ),
    "roles_vs_heads.png": ("Heads per role vs n_heads and n_kv_heads", "Mean ± std over finished runs."),
    "role_emergence.png": ("Role emergence over training", "Heads per role at each analysed step, per run."),
    "pruning_curves.png": ("Pruning curves", "Quality vs fraction of heads pruned, per run and criterion."),
}


def write_report(
    runset: RunSet, out_dir: Path, metric: str = "best_val_loss", fmt: str = "md", source: str = ""
) -> Report:
    """Write plots, ``runs.csv``/``role_history.csv``/``pruning.csv`` and ``report.md|html`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = runset.runs
    agg = aggregate(runs, metric, runset.axes)
    plots = [
        p
        for p in (
            plot_loss_vs_heads(agg, runs, metric, out_dir / "loss_vs_heads.png", runset.axes),
            plot_roles_vs_heads(runs, out_dir / "roles_vs_heads.png", runset.axes),
            plot_role_emergence(runset.role_history, out_dir / "role_emergence.png"),
            plot_pruning(runset.pruning, out_dir / "pruning_curves.png"),
        )
        if p is not None
    ]
    data = [out_dir / "configurations.csv", out_dir / "runs.csv", out_dir / "role_history.csv"]
    configurations_frame(agg, metric, runset.axes).to_csv(data[0], index=False)
    runs.to_csv(data[1], index=False)
    runset.role_history.to_csv(data[2], index=False)
    if not runset.pruning.empty:
        data.append(out_dir / "pruning.csv")
        runset.pruning.to_csv(data[-1], index=False)

    gains = marginal_gains(agg)
    failed = failed_table(runs)
    sections: list[tuple[str, str, pd.DataFrame | None, list[Path]]] = [
        (
            "Configurations",
            f"One row per configuration: {_axes_note(runset.axes)}. Finished runs aggregated over seeds; "
            f"{metric} is mean ± sample std.",
            config_table(agg, metric, runset.axes),
            [],
        ),
        (
            "Marginal gain per doubling of heads",
            f"Change of mean {metric} from each head count to the next; per doubling = Δ / log2(ratio). "
            "Values near 0 mark diminishing returns.",
            gains_table(gains, metric) if gains["delta"].notna().any() else None,
            [p for p in plots if p.name == "loss_vs_heads.png"],
        ),
        ("Head roles", "", None, [p for p in plots if p.name in ("roles_vs_heads.png", "role_emergence.png")]),
        ("Pruning", "", None, [p for p in plots if p.name == "pruning_curves.png"]),
        ("Failed and invalid runs", "", failed if len(failed) else None, []),
    ]
    header = f"{status_line(runs)} from {source}" if source else status_line(runs)
    data_note = "Data: " + ", ".join(p.name for p in data)
    render = _render_html if fmt == "html" else _render_md
    path = out_dir / f"report.{'html' if fmt == 'html' else 'md'}"
    path.write_text(render(header, sections, runset.warnings, data_note))
    return Report(path, plots, data)


def _axes_note(axes: Sequence[str]) -> str:
    if not axes:
        return "no config key differs across these runs but the seed"
    return "the runs differ (besides the seed) in " + ", ".join(f"`{a}`" for a in axes)


def _render_md(header: str, sections: list, warnings: list[str], data_note: str) -> str:
    out = ["# mhaexp-compare report", "", header, ""]
    for title, text, table, images in sections:
        if table is None and not images:
            continue
        out += [f"## {title}", ""]
        if text:
            out += [text, ""]
        if table is not None:
            out += [to_markdown(table), ""]
        for img in images:
            alt, caption = _PLOT_TEXT[img.name]
            out += [f"![{alt}]({img.name})", "", f"*{caption}*", ""]
    if warnings:
        out += ["## Skipped", "", *[f"- {w}" for w in warnings], ""]
    out += [data_note, ""]
    return "\n".join(out)


def _render_html(header: str, sections: list, warnings: list[str], data_note: str) -> str:
    out = [
        "<!doctype html>",
        "<html><head><meta charset='utf-8'><title>mhaexp-compare report</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "table.compare{border-collapse:collapse}table.compare td,table.compare th{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}</style></head><body>",
        "<h1>mhaexp-compare report</h1>",
        f"<p>{html.escape(header)}</p>",
    ]
    for title, text, table, images in sections:
        if table is None and not images:
            continue
        out.append(f"<h2>{html.escape(title)}</h2>")
        if text:
            out.append(f"<p>{html.escape(text)}</p>")
        if table is not None:
            out.append(to_html(table))
        for img in images:
            alt, caption = _PLOT_TEXT[img.name]
            out.append(
                f"<figure><img src='{html.escape(img.name)}' alt='{html.escape(alt)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    if warnings:
        out.append("<h2>Skipped</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul>")
    out += [f"<p>{html.escape(data_note)}</p>", "</body></html>", ""]
    return "\n".join(out)
