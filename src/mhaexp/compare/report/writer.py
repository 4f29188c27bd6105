"""The report of a :class:`~mhaexp.compare.runs.RunSet`: what the CLI prints, and ``report.md|html`` with its data."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mhaexp.compare.report.aggregation import Naming, aggregate, marginal_gains, naming
from mhaexp.compare.report.plots import plot_loss_vs_heads, plot_pruning, plot_role_emergence, plot_roles_vs_heads
from mhaexp.compare.report.tables import (
    config_table,
    configurations_frame,
    failed_table,
    gains_table,
    status_line,
    to_html,
    to_markdown,
    to_text,
)
from mhaexp.compare.runs import RunSet


def doubling_gains(agg: pd.DataFrame) -> pd.DataFrame | None:
    """The marginal gains, or None when no series has two head counts: a doubling needs two to compare."""
    gains = marginal_gains(agg)
    return gains if gains["delta"].notna().any() else None


def terminal_summary(runset: RunSet, metric: str) -> str:
    """What the CLI prints: configurations (and their names' keys), marginal gains, failed runs."""
    agg = aggregate(runset.runs, metric, runset.axes)
    names = naming(runset.runs, runset.axes)
    lines = [status_line(runset.runs), "", "configurations (finished runs, aggregated over seeds):"]
    lines.append(to_text(config_table(agg, metric, runset.axes, names), "  ") if len(agg) else "  (no finished runs)")
    if names.short:
        lines += [
            "",
            "configuration names (the config keys the runs differ in):",
            to_text(names.key_table(), "  ", left_all=True),
        ]
    gains = doubling_gains(agg)
    if gains is not None:
        lines += [
            "",
            f"marginal gain per doubling of heads ({metric}, mean over seeds):",
            to_text(gains_table(gains, metric), "  "),
        ]
    failed = failed_table(runset.runs)
    if len(failed):
        lines += ["", "failed / invalid runs:", to_text(failed.drop(columns="overrides"), "  ")]
    return "\n".join(lines)


@dataclass
class Report:
    path: Path
    plots: list[Path]
    data: list[Path]


_PLOT_TEXT = {
    "loss_vs_heads.png": (
        "Validation loss vs number of heads",
        "Mean ± std over seeds; with several head counts the x axis is log-2, so equal steps are doublings of heads.",
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

    names = naming(runs, runset.axes)
    gains = doubling_gains(agg)
    failed = failed_table(runs)
    loss_plot = [p for p in plots if p.name == "loss_vs_heads.png"]
    sections: list[tuple[str, str, pd.DataFrame | None, list[Path]]] = [
        (
            "Configurations",
            f"One row per configuration: {_axes_note(runset.axes, names)}. Finished runs aggregated over seeds; "
            f"{metric} is mean ± sample std.",
            config_table(agg, metric, runset.axes, names),
            [],
        ),
        (
            "Configuration names",
            "What each name in the tables, legends and panel titles stands for: its value of each config key "
            "the runs differ in (head-shape keys have columns of their own).",
            names.key_table() if names.short else None,
            [],
        ),
        # Per doubling needs two head counts in a series; with fewer, the loss plot stands on its own.
        (
            "Marginal gain per doubling of heads",
            f"Change of mean {metric} from each head count to the next; per doubling = Δ / log2(ratio). "
            "Values near 0 mark diminishing returns.",
            gains_table(gains, metric) if gains is not None else None,
            loss_plot if gains is not None else [],
        ),
        ("Validation loss", "", None, loss_plot if gains is None else []),
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


def _axes_note(axes: Sequence[str], names: Naming) -> str:
    if not axes:
        return "no config key differs across these runs but the seed"
    if names.short:
        shown = [f"`{a}`" for a in axes if a not in names.keys]
        return (
            f"the runs differ (besides the seed) in {len(axes)} config keys, {len(names.keys)} of them named by "
            "`name` (see Configuration names)" + (f"; {', '.join(shown)} shown as columns" if shown else "")
        )
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
