"""Static pictures of a :class:`~mhaexp.analysis.collect.HeadMetrics`: heatmaps, attention patterns,
the role grid, the role timeline and the MDS map of heads.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot): no global state, no GUI backend,
safe inside a training process. Each function writes its figure once per format of
``analysis.figure_formats`` (png, svg, pdf) and returns the PNG's path (else the first format's).
Every colour has a colour bar (name and units) or a legend; every layer x head map has layer and
head ticks (labelled on the outer maps of a grid of them, whose ticks line up); each heatmap metric has
one colour scale at every step (:attr:`mhaexp.analysis.registry.Metric.scale`).

Cost: the pictures are the end-of-run analysis's largest part, so every figure is drawn on one
:class:`~mhaexp.analysis.canvas.Canvas` (the drawing engine: no axes, labels and panels blitted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from torch import Tensor

from mhaexp.analysis.canvas import Canvas
from mhaexp.analysis.collect import HeadMetrics
from mhaexp.analysis.config import FIGURE_FORMATS
from mhaexp.analysis.registry import family_colours, heatmap_metrics
from mhaexp.analysis.roles import ROLE_FAMILIES, HeadRole
from mhaexp.rundir import HEAD_METRICS_FILE, HEAD_ROLES_HISTORY_FILE

# One colour per role family (from the role registry); "unassigned" is light grey.
FAMILY_COLORS: dict[str, str] = family_colours()


def check_formats(formats: str | Sequence[str] | None) -> list[str]:
    """``analysis.figure_formats`` as a list; ConfigError naming the valid ones for anything else."""
    from mhaexp.errors import ConfigError

    items = [formats] if isinstance(formats, str) else list(formats or [])
    bad = [f for f in items if f not in FIGURE_FORMATS]
    if not items or bad:
        raise ConfigError("analysis.figure_formats", items, f"a non-empty list of {', '.join(FIGURE_FORMATS)}")
    return list(dict.fromkeys(items))


def _grid(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def metric_scale(name: str, values: np.ndarray, seen: tuple[float, float] | None = None) -> tuple[float, float]:
    """The colour range of metric ``name``: fixed where the metric is bounded, else the range of ``seen``
    (all steps so far) widened by ``values``; symmetric around 0 for signed metrics."""
    entry = next((m for m in heatmap_metrics() if m.name == name), None)
    lo, hi = entry.scale if entry is not None and entry.scale is not None else (None, None)
    finite = values[np.isfinite(values)]
    pool = np.concatenate([finite, np.asarray(seen if seen else [], dtype=float)])
    if lo is None:
        lo = float(pool.min()) if pool.size else 0.0
    if hi is None:
        hi = float(pool.max()) if pool.size else 1.0
    if entry is not None and entry.diverging:
        m = max(abs(lo), abs(hi), 1e-12)
        lo, hi = -m, m
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _heatmap_figure(
    maps: Sequence[tuple[str, np.ndarray, tuple[float, float], str, bool]],
    cols: int,
    title: str,
    shared_bar: bool = False,
) -> Canvas:
    """One layer x head heatmap per entry ``(title, values (L, H), (vmin, vmax), colour-bar label,
    diverging)`` with layer/head ticks, and a colour bar each under it (``shared_bar``: one for all on the
    right, when every entry is the same metric on the same scale); NaN cells (heads a pruned layer lacks)
    blank."""
    rows, cols = _grid(len(maps), cols)
    L, H = maps[0][1].shape[:2]
    cell = 0.2
    img_w, img_h = H * cell, L * cell
    title_h = 0.13 * max(m[0].count("\n") + 1 for m in maps) + 0.06
    left = 0.42  # layer ticks and the "layer" label
    bar_w = max(img_w, 1.3)
    tile_w = left + max(img_w, bar_w, 1.7) + 0.25
    below = 0.3 + (0 if shared_bar else 0.42)  # head ticks and label; the colour bar, its ticks and label
    tile_h = title_h + img_h + below + 0.12
    width, height = cols * tile_w + 0.2 + (1.1 if shared_bar else 0.0), rows * tile_h + 0.4
    canvas = Canvas(width, height)
    seq = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    div = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")
    for i, (name, values, (lo, hi), label, diverging) in enumerate(maps):
        r, c = divmod(i, cols)
        x0, y0 = 0.1 + c * tile_w, 0.4 + r * tile_h
        box = (x0 + left, y0 + title_h, img_w, img_h)
        cmap = div if diverging else seq
        canvas.image(values, box, cmap=cmap, vmin=lo, vmax=hi)
        canvas.text(box[0] + img_w / 2, y0 + title_h - 0.04, name, 8, ha="center", va="bottom")
        # Every map has its tick marks; the labels sit on the outer maps of the grid (matplotlib's
        # label_outer), whose ticks are aligned with every other map's: each label is a drawn text.
        outer_x, outer_y = i + cols >= len(maps), c == 0
        canvas.cell_ticks(box, "bottom", H, [str(h) for h in range(H)] if outer_x else None, 6)
        canvas.cell_ticks(box, "left", L, [str(layer) for layer in range(L)] if outer_y else None, 6)
        bottom = box[1] + img_h
        if outer_x:
            canvas.text(box[0] + img_w / 2, bottom + 0.15, "head", 6, ha="center", va="top")
        if outer_y:
            canvas.text(x0 + 0.1, box[1] + img_h / 2, "layer", 6, ha="center", va="center", rotation=90)
        if not shared_bar:
            bar = (box[0], bottom + 0.31, bar_w, 0.07)
            canvas.colorbar(bar, cmap, lo, hi, [lo, (lo + hi) / 2, hi], label, 6)
    if shared_bar and maps:
        lo, hi = maps[0][2]
        cmap = div if maps[0][4] else seq
        ticks = list(np.linspace(lo, hi, 9))
        canvas.colorbar((width - 1.0, 0.2 * height, 0.12, 0.6 * height), cmap, lo, hi, ticks, maps[0][3], 7, "{:.2f}")
    canvas.text(width / 2, 0.12, title, 9, ha="center", va="top")
    return canvas


def history_ranges(out_dir: Path | None) -> dict[str, tuple[float, float]]:
    """(min, max) per metric over every step of ``out_dir``'s :data:`~mhaexp.rundir.HEAD_METRICS_FILE`
    (per-head rows only)."""
    path = None if out_dir is None else out_dir / HEAD_METRICS_FILE
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return {}
    import pandas as pd

    table = pd.read_csv(path, usecols=["head", "metric", "value"])
    table = table[(table["head"] >= 0) & table["metric"].isin([m.name for m in heatmap_metrics()])].dropna()
    g = table.groupby("metric")["value"]
    lo, hi = g.min(), g.max()
    return {m: (float(lo[m]), float(hi[m])) for m in lo.index}


def heatmap_panels(
    hm: HeadMetrics, seen: dict[str, tuple[float, float]] | None = None
) -> list[tuple[str, np.ndarray, tuple[float, float], str, bool]]:
    """The panels of :func:`metric_heatmaps`: ``(name, values (L, H), colour range, colour-bar label,
    diverging)`` for each metric with a scale in the registry (:func:`mhaexp.analysis.registry.heatmap_metrics`,
    in its order) that ``hm`` holds; ``seen``: the ranges so far of the unbounded ones."""
    seen = seen or {}
    panels = []
    for m in (m for m in heatmap_metrics() if m.name in hm.metrics):
        v = hm.metrics[m.name].numpy().astype(float)
        panels.append((m.name, v, metric_scale(m.name, v, seen.get(m.name)), m.units or m.name, m.diverging))
    return panels


def metric_heatmaps(
    hm: HeadMetrics, path: Path, cols: int = 5, formats: Sequence[str] = ("png",), out_dir: Path | None = None
) -> Path:
    """One layer x head heatmap per metric of :func:`heatmap_panels`, each on its fixed scale (unbounded ones
    on their range over every step of ``out_dir``'s :data:`~mhaexp.rundir.HEAD_METRICS_FILE`), its units under
    the colour bar."""
    return _heatmap_figure(heatmap_panels(hm, history_ranges(out_dir)), cols, "per-head metrics").save(path, formats)


def syntactic_heatmaps(hm: HeadMetrics, path: Path, cols: int = 5, formats: Sequence[str] = ("png",)) -> Path | None:
    """Accuracy minus the baseline a syntactic role must beat, one heatmap per relation that has
    instances, all on one fixed scale [-1, 1] (red: better than the baseline)."""
    if "syntactic_accuracy" not in hm.metrics:
        return None
    acc, base = hm.metrics["syntactic_accuracy"], hm.metrics["syntactic_baseline"]
    present = [r for r in range(acc.shape[-1]) if not bool(torch.isnan(base[r]))]
    if not present:
        return None
    maps = []
    for r in present:
        name = hm.relation_names[r] if r < len(hm.relation_names) else str(r)
        direction = hm.syntactic_direction[r] if r < len(hm.syntactic_direction) else ""
        values = (acc[..., r] - base[r]).numpy().astype(float)
        title = f"{name} {direction}\n(baseline {float(base[r]):.2f})"
        maps.append((title, values, (-1.0, 1.0), "accuracy - baseline", True))
    return _heatmap_figure(maps, cols, "syntactic accuracy minus baseline", shared_bar=True).save(path, formats)


def pattern_grid(
    patterns: Tensor, tokens: Sequence[str], layer: int, path: Path, cols: int = 4, formats: Sequence[str] = ("png",)
) -> Path:
    """A still of one layer: one query x key heatmap per head (rows: queries, columns: keys), token
    labels on the outer tiles at a readable size, one colour bar (attention weight, 0 to 1)."""
    n_heads, T, _ = patterns.shape
    rows, cols = _grid(n_heads, cols)
    labels = list(tokens)[:T]
    # 0.13 in per token fits a 7 pt label; the margins hold the longest label.
    fs = 7 if T <= 64 else 5
    cell, label_in = 0.13, 0.075 * max((len(t) for t in labels), default=1) * fs / 7 + 0.3
    tile = max(1.2, cell * T)
    gap_x, gap_y = 0.15, 0.35
    width = label_in + cols * (tile + gap_x) + 0.8
    height = 0.5 + rows * (tile + gap_y) + label_in
    canvas = Canvas(width, height)
    cmap = matplotlib.colormaps["Blues"]
    for h in range(n_heads):
        r, c = divmod(h, cols)
        box = (label_in + c * (tile + gap_x), 0.5 + r * (tile + gap_y), tile, tile)
        canvas.image(patterns[h].numpy(), box, cmap=cmap, vmin=0, vmax=1)
        canvas.text(box[0] + tile / 2, box[1] - 0.03, f"L{layer}H{h}", 8, ha="center", va="bottom")
        # Tick marks and labels only on the outer tiles: the tokens are the same on every tile.
        if c == 0:
            canvas.cell_ticks(box, "left", T, labels, fs)
        if h + cols >= n_heads:
            canvas.cell_ticks(box, "bottom", T, labels, fs, rotation=90)
    bar = (width - 0.55, 0.25 * height, 0.12, 0.5 * height)
    canvas.colorbar(bar, cmap, 0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "attention weight", 6, "{:.1f}")
    title = f"layer {layer}: attention on the probe sentence (row = query, column = key)"
    canvas.text(width / 2, 0.12, title, 9, ha="center", va="top")
    return canvas.save(path, formats)


def primary_roles(roles: Sequence[HeadRole]) -> dict[tuple[int, int], list[HeadRole]]:
    """Roles per head in classify_heads' order (the first is the primary one)."""
    out: dict[tuple[int, int], list[HeadRole]] = {}
    for r in roles:
        out.setdefault((r.layer, r.head), []).append(r)
    return out


def short_role(role: str) -> str:
    """Cell label: ``syntactic:nsubj`` -> ``nsubj``, ``positional:-1`` -> ``pos-1``."""
    family, _, detail = role.partition(":")
    if family == "syntactic":
        return detail
    if family == "positional":
        return f"pos{int(detail):+d}" if detail else "pos"
    return {
        "previous_token": "prev",
        "coreference": "coref",
        "induction": "induct",
        "duplicate": "dup",
        "copying": "copy",
        "rare_word": "rare",
        "unassigned": "",
    }.get(family, family)


def role_grid(
    roles: Sequence[HeadRole],
    n_heads: Sequence[int],
    path: Path,
    step: int | None = None,
    formats: Sequence[str] = ("png",),
) -> Path:
    """Layers x heads coloured by each head's primary role (first in ROLE_FAMILIES order), labelled with
    its roles; heads a pruned layer lacks are white."""
    L, H = len(n_heads), max(n_heads)
    families = list(ROLE_FAMILIES)
    cmap = ListedColormap([FAMILY_COLORS[f] for f in families] + ["#ffffff"])
    codes = np.full((L, H), len(families))
    by_head = primary_roles(roles)
    width, height = max(4.0, 0.9 * H + 2.6), max(2.0, 0.75 * L + 1.0)
    canvas = Canvas(width, height)
    box = (0.08 * width, 0.12 * height, 0.70 * width, 0.73 * height)
    x0, y0, w, h = box
    for (layer, head), held in by_head.items():
        if head < n_heads[layer]:
            codes[layer, head] = families.index(held[0].family)
    canvas.image(codes, box, cmap=cmap, vmin=-0.5, vmax=len(families) + 0.5)
    for (layer, head), held in by_head.items():
        if head >= n_heads[layer]:
            continue
        names = list(
            dict.fromkeys(
                short_role(r.role)
                for r in held
                if r.role != "previous_token" or not any(x.role == "positional:-1" for x in held)
            )
        )
        lines = [n for n in names[:3] if n] + (["…"] if len(names) > 3 else [])
        canvas.lines_text(x0 + (head + 0.5) * w / H, y0 + (layer + 0.5) * h / L, lines, 6)
    canvas.cell_ticks(box, "bottom", H, [str(i) for i in range(H)], 10)
    canvas.cell_ticks(box, "left", L, [str(i) for i in range(L)], 10)
    canvas.text(x0 + w / 2, y0 + h + 0.25, "head", 10, ha="center", va="top")
    canvas.text(x0 - 0.35, y0 + h / 2, "layer", 10, ha="center", va="center", rotation=90)
    canvas.cell_grid(box, L, H, "white", 1.5)
    present = [f for f in families if any(r.family == f for r in roles)]
    canvas.legend(x0 + w + 0.1, y0, [(FAMILY_COLORS[f], f) for f in present], 7)
    title = "head roles" + (f" at step {step}" if step is not None else "")
    canvas.text(x0 + w / 2, y0 - 0.08, title, 9, ha="center", va="bottom")
    return canvas.save(path, formats)


MDS_SIZE = (12.0, 4.8)  # inches
MDS_PANEL = (0.85, 0.45, 4.2, 3.9)  # the scatter's box in the MDS figure: x, y from the top-left, w, h (inches)
MDS_PAD = 0.08  # share of the points' range left free on each side of the scatter


def _nice_ticks(lo: float, hi: float, n: int = 5) -> tuple[list[float], str]:
    """Round tick values inside [lo, hi] (matplotlib's MaxNLocator, as an axes picks them) and the format
    that shows their step's decimals."""
    from matplotlib.ticker import MaxNLocator

    values = [float(v) for v in MaxNLocator(nbins=n).tick_values(lo, hi) if lo <= v <= hi]
    step = values[1] - values[0] if len(values) > 1 else 1.0
    return values, f"{{:.{max(0, -math.floor(math.log10(step)))}f}}"


def _padded(values: np.ndarray, pad: float = MDS_PAD) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    span = (hi - lo) or max(abs(lo), 1.0)
    return lo - pad * span, hi + pad * span


def mds_map(hm: HeadMetrics, roles: Sequence[HeadRole], path: Path, formats: Sequence[str] = ("png",)) -> Path | None:
    """Heads placed by classical MDS over sqrt(JS divergence) (Clark et al. 2019, Fig. 6), coloured by
    primary role, next to the JS matrix itself."""
    if hm.mds is None or hm.js is None:
        return None
    by_head = primary_roles(roles)
    index = hm.head_index
    canvas = Canvas(*MDS_SIZE)
    # The scatter: data mapped to inches in the panel by hand (no axes of its own, like the JS matrix).
    panel = MDS_PANEL
    px, py, pw, ph = panel
    xy = hm.mds.numpy()
    (x0, x1), (y0, y1) = _padded(xy[:, 0]), _padded(xy[:, 1])
    inch_x = px + (xy[:, 0] - x0) / (x1 - x0) * pw
    inch_y = py + ph - (xy[:, 1] - y0) / (y1 - y0) * ph  # canvas y grows downwards
    canvas.frame(panel)
    for side, (lo, hi) in (("bottom", (x0, x1)), ("left", (y0, y1))):
        values, fmt = _nice_ticks(lo, hi)
        canvas.ticks(panel, side, [(v - lo) / (hi - lo) for v in values], [fmt.format(v) for v in values], 7)
    markers = "os^Dv<>ph*"
    colors = np.array([FAMILY_COLORS[by_head[k][0].family if k in by_head else "unassigned"] for k in index])
    layers = np.array([layer for layer, _ in index])
    for layer in sorted(set(layers.tolist())):
        sel = layers == layer
        canvas.scatter(
            inch_x[sel],
            inch_y[sel],
            list(colors[sel]),
            markers[layer % len(markers)],
            50,
            edgecolors="black",
            linewidths=0.4,
        )
    for k, (layer, h) in enumerate(index):
        canvas.text(float(inch_x[k]), float(inch_y[k]), f" {layer}.{h}", 6, va="bottom")
    present = [f for f in ROLE_FAMILIES if any(r.family == f for r in roles)]
    canvas.legend(px + pw + 0.12, py, [(FAMILY_COLORS[f], f) for f in present], 6)
    title = "MDS of heads (sqrt JS); marker = layer, label = layer.head"
    canvas.text(px + pw / 2, py - 0.05, title, 8, ha="center", va="bottom")
    canvas.text(px + pw / 2, py + ph + 0.22, "MDS 1 (sqrt nats)", 7, ha="center", va="top")
    canvas.text(px - 0.55, py + ph / 2, "MDS 2 (sqrt nats)", 7, ha="center", va="center", rotation=90)
    js = hm.js.numpy()
    # Scaled to this step's largest value (the bar gives the numbers): on the fixed [0, ln 2] an
    # untrained model's heads, all within ~0.01 nats of each other, would be one flat colour.
    hi = float(js.max()) if js.size and float(js.max()) > 0 else 1.0
    box = (7.0, 0.45, 3.9, 3.9)
    canvas.image(js, box, cmap="magma_r", vmin=0, vmax=hi)
    starts = [k for k, (_, h) in enumerate(index) if h == 0]
    names = [f"L{index[k][0]}" for k in starts]
    canvas.cell_ticks(box, "bottom", len(index), names, 7, at=starts)
    canvas.cell_ticks(box, "left", len(index), names, 7, at=starts)
    canvas.text(box[0] + box[2] / 2, box[1] + box[3] + 0.2, "head (by layer)", 7, ha="center", va="top")
    canvas.text(box[0] - 0.35, box[1] + box[3] / 2, "head (by layer)", 7, ha="center", va="center", rotation=90)
    canvas.text(box[0] + box[2] / 2, box[1] - 0.05, "JS divergence between heads", 8, ha="center", va="bottom")
    bar = (box[0] + box[2] + 0.15, box[1], 0.12, box[3])
    canvas.colorbar(bar, "magma_r", 0.0, hi, list(np.linspace(0.0, hi, 6)), "JS divergence (nats)", 7)
    return canvas.save(path, formats)


def role_timeline(history: Any, n_heads: Sequence[int], path: Path, formats: Sequence[str] = ("png",)) -> Path | None:
    """Specialization as it happens: one small panel per head (layers down, heads across), role
    families up its side, analysis steps along the bottom; a cell is filled in the family's colour
    at every step the head held a role of that family. ``history``: ``head_roles_history.csv`` as a
    DataFrame. None with fewer than one step."""
    if history is None or len(history) == 0:
        return None
    held = history[history["family"] != "unassigned"]
    steps = sorted(int(s) for s in history["step"].unique())
    families = [f for f in ROLE_FAMILIES if f != "unassigned" and f in set(held["family"])] or ["broad"]
    L, H = len(n_heads), max(n_heads)
    S, F = len(steps), len(families)
    panel_w, panel_h = max(1.3, 0.08 * S + 0.6), max(0.9, 0.13 * F + 0.5)
    width, height = H * panel_w + 1.6, L * panel_h + 1.0
    canvas = Canvas(width, height)
    col = {s: i for i, s in enumerate(steps)}
    row = {f: i for i, f in enumerate(families)}
    cmap = ListedColormap(["#ffffff"] + [FAMILY_COLORS[f] for f in families])
    grids = {}
    for r in held.itertuples():
        grid = grids.setdefault((int(r.layer), int(r.head)), np.zeros((F, S)))
        if r.family in row:
            grid[row[r.family], col[int(r.step)]] = row[r.family] + 1
    ticks = sorted({0, S - 1, *range(0, S, max(1, S // 4))})
    img_w, img_h = panel_w - 0.2, panel_h - 0.35
    for layer in range(L):
        for h in range(n_heads[layer]):
            box = (1.2 + h * panel_w, 0.45 + layer * panel_h + 0.2, img_w, img_h)
            grid = grids.get((layer, h), np.zeros((F, S)))
            canvas.image(grid, box, cmap=cmap, vmin=-0.5, vmax=F + 0.5)
            canvas.cell_grid(box, F, S)
            canvas.text(box[0] + img_w / 2, box[1] - 0.03, f"L{layer}H{h}", 7, ha="center", va="bottom")
            canvas.cell_ticks(box, "left", F, families if h == 0 else None, 6)
            labels = [str(steps[t]) for t in ticks] if layer == L - 1 else None
            canvas.cell_ticks(box, "bottom", S, labels, 6, at=ticks)
    canvas.text(width / 2, height - 0.12, "analysis step", 8, ha="center", va="bottom")
    title = "role timeline: the role families each head held at each analysis step"
    canvas.text(width / 2, 0.1, title, 9, ha="center", va="top")
    return canvas.save(path, formats)


def all_figures(
    hm: HeadMetrics,
    roles: Sequence[HeadRole],
    out_dir: Path,
    max_pictures: int,
    step: int | None = None,
    formats: Sequence[str] = ("png",),
) -> dict[str, Path]:
    """Every picture into ``out_dir``, in each of ``formats``; keys name them for W&B
    (``analysis/<key>``), values are the PNGs (else the first format).

    Attention patterns: one picture per layer (a grid of its heads) for the first ``max_pictures``
    layers. The role timeline reads ``head_roles_history.csv`` (this step included).
    """
    history_csv = out_dir / HEAD_ROLES_HISTORY_FILE
    history = None
    if history_csv.is_file() and history_csv.stat().st_size:
        import pandas as pd

        history = pd.read_csv(history_csv)
    out: dict[str, Path | None] = {
        "role_grid": role_grid(roles, hm.n_heads, out_dir / "role_grid.png", step, formats),
        "role_timeline": role_timeline(history, hm.n_heads, out_dir / "role_timeline.png", formats),
        "heatmaps": metric_heatmaps(hm, out_dir / "heatmaps.png", formats=formats, out_dir=out_dir),
        "syntactic": syntactic_heatmaps(hm, out_dir / "syntactic.png", formats=formats),
        "mds": mds_map(hm, roles, out_dir / "mds.png", formats),
    }
    for layer, p in enumerate(hm.example_patterns[: max(0, max_pictures)]):
        name = f"patterns_L{layer:02d}"
        out[name] = pattern_grid(p, hm.example_tokens, layer, out_dir / f"{name}.png", formats=formats)
    return {k: v for k, v in out.items() if v is not None}
