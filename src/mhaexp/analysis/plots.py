"""Static pictures of a :class:`~mhaexp.analysis.collect.HeadMetrics`: heatmaps, attention patterns,
the role grid and the MDS map of heads.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot): no global state, no GUI backend,
safe inside a training process; ``savefig`` to PNG renders with Agg. Each function writes one PNG
and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from mhaexp.analysis.collect import HeadMetrics
from mhaexp.analysis.roles import ROLE_FAMILIES, HeadRole

DPI = 90
# Per-head scalar metrics drawn as heatmaps, in this order (absent ones are skipped).
HEATMAP_METRICS: tuple[str, ...] = (
    "positional_frac",
    "prev_token_attn",
    "induction",
    "duplicate",
    "copying",
    "sink",
    "rare_word",
    "coreference",
    "normalized_entropy",
    "confidence",
    "importance",
    "ablation",
    "js_nearest",
)
# One colour per role family (tab20 has enough distinct ones); "unassigned" is light grey.
FAMILY_COLORS: dict[str, str] = {
    "positional": "#1f77b4",
    "previous_token": "#aec7e8",
    "syntactic": "#2ca02c",
    "coreference": "#d62728",
    "induction": "#9467bd",
    "duplicate": "#c5b0d5",
    "copying": "#8c564b",
    "sink": "#7f7f7f",
    "rare_word": "#e377c2",
    "broad": "#bcbd22",
    "retrieval": "#ff7f0e",
    "streaming": "#17becf",
    "unassigned": "#eeeeee",
}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # No bbox_inches="tight" and no constrained layout: each costs a full extra draw, and drawing is
    # what makes pictures the slowest part of an analysis step.
    fig.savefig(path, dpi=DPI)
    return path


def _grid(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def _mosaic(tiles: Sequence[np.ndarray], cols: int, gap: int, top: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Tile equally shaped 2-D arrays into one NaN-separated canvas; returns it and each tile's (row, col)
    origin. One ``imshow`` of a mosaic draws several times faster than one axes per tile."""
    h, w = tiles[0].shape
    rows = math.ceil(len(tiles) / cols)
    canvas = np.full((rows * (h + gap + top), cols * (w + gap)), np.nan)
    origins = []
    for i, tile in enumerate(tiles):
        r0, c0 = (i // cols) * (h + gap + top) + top, (i % cols) * (w + gap)
        canvas[r0 : r0 + h, c0 : c0 + w] = tile
        origins.append((r0, c0))
    return canvas, origins


def _heatmap_figure(maps: list[tuple[str, Tensor]], cols: int, title: str) -> Figure:
    """Small layer x head maps in one mosaic. Each map is scaled to its own [min, max] (written under
    its name, in place of a colorbar): bright = high within that metric."""
    cols = max(1, min(cols, len(maps)))
    L, H = maps[0][1].shape[:2]
    tiles, labels = [], []
    for name, values in maps:
        v = values.numpy().astype(float)
        finite = v[np.isfinite(v)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (math.nan, math.nan)
        tiles.append((v - lo) / (hi - lo) if hi > lo else np.where(np.isfinite(v), 0.5, np.nan))
        labels.append(f"{name}\n[{lo:.2g}, {hi:.2g}]")
    top = 3  # rows of blank space above each tile for its two-line label
    canvas, origins = _mosaic(tiles, cols, gap=1, top=top)
    cell = 0.28
    fig = Figure(figsize=(canvas.shape[1] * cell + 0.6, canvas.shape[0] * cell + 0.6))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.9))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(canvas), cmap=cmap, vmin=0, vmax=1, interpolation="nearest", aspect="equal")
    for (r0, c0), label in zip(origins, labels, strict=True):
        ax.text(c0 - 0.5, r0 - 0.7, label, fontsize=6, va="bottom", ha="left")
    ax.set_axis_off()
    fig.suptitle(f"{title} (each tile: layers down, heads across)", fontsize=8)
    return fig


def metric_heatmaps(hm: HeadMetrics, path: Path, cols: int = 5) -> Path:
    """One layer x head heatmap per scalar metric (NaN cells, i.e. heads a pruned layer lacks, blank)."""
    keys = [k for k in HEATMAP_METRICS if k in hm.metrics]
    return _save(_heatmap_figure([(k, hm.metrics[k]) for k in keys], cols, "per-head metrics"), path)


def syntactic_heatmaps(hm: HeadMetrics, path: Path, cols: int = 5) -> Path | None:
    """Accuracy minus the fixed-offset baseline, one heatmap per relation that has instances."""
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
        maps.append((f"{name} {direction} (base {float(base[r]):.2f})", acc[..., r] - base[r]))
    title = "syntactic accuracy minus fixed-offset baseline"
    return _save(_heatmap_figure(maps, cols, title), path)


def pattern_grid(patterns: Tensor, tokens: Sequence[str], layer: int, path: Path, cols: int = 4) -> Path:
    """A bertviz head-view-like still of one layer: one query x key heatmap per head (rows: queries,
    columns: keys; white = 0, dark blue = 1), token labels along the outer edges of the grid."""
    n_heads, T, _ = patterns.shape
    cols = max(1, min(cols, n_heads))
    canvas, origins = _mosaic([p.numpy() for p in patterns], cols, gap=1, top=1)
    labels = list(tokens)[:T]
    cell = 0.17
    fig = Figure(figsize=(canvas.shape[1] * cell + 1.2, canvas.shape[0] * cell + 1.4))
    ax = fig.add_axes((0.14, 0.16, 0.84, 0.76))
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(canvas), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    for h, (r0, c0) in enumerate(origins):
        ax.text(c0 - 0.5, r0 - 0.6, f"H{h}", fontsize=6, va="bottom")
    rows = math.ceil(n_heads / cols)
    bottom = origins[(rows - 1) * cols][0] + T - 0.5
    # Token labels as plain text along the outer edges: axis ticks would cost a Tick (two lines, two
    # labels) per token per tile, which made this the slowest picture.
    for _, c0 in origins[:cols]:
        for t, label in enumerate(labels):
            ax.text(c0 + t, bottom + 0.4, label, rotation=90, ha="center", va="top", fontsize=5)
    for r0, _ in origins[::cols]:
        for t, label in enumerate(labels):
            ax.text(-0.9, r0 + t, label, ha="right", va="center", fontsize=5)
    ax.set_xlim(-0.5, canvas.shape[1] - 0.5)
    ax.set_ylim(bottom, -0.5)
    ax.set_axis_off()
    fig.suptitle(f"layer {layer}: attention on the probe sentence (row = query, column = key)", fontsize=8)
    return _save(fig, path)


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


def role_grid(roles: Sequence[HeadRole], n_heads: Sequence[int], path: Path, step: int | None = None) -> Path:
    """Layers x heads coloured by each head's primary role (first in ROLE_FAMILIES order), labelled with
    its roles; heads a pruned layer lacks are white."""
    L, H = len(n_heads), max(n_heads)
    families = list(ROLE_FAMILIES)
    cmap = ListedColormap([FAMILY_COLORS[f] for f in families] + ["#ffffff"])
    codes = np.full((L, H), len(families))
    by_head = primary_roles(roles)
    fig = Figure(figsize=(max(4.0, 0.9 * H + 2.6), max(2.0, 0.75 * L + 1.0)))
    fig.subplots_adjust(left=0.08, right=0.78, bottom=0.15, top=0.88)
    ax = fig.add_subplot(1, 1, 1)
    for (layer, h), held in by_head.items():
        if h < n_heads[layer]:
            codes[layer, h] = families.index(held[0].family)
    ax.imshow(codes, cmap=cmap, vmin=-0.5, vmax=len(families) + 0.5, aspect="auto")
    for (layer, h), held in by_head.items():
        if h >= n_heads[layer]:
            continue
        names = list(
            dict.fromkeys(
                short_role(r.role)
                for r in held
                if r.role != "previous_token" or not any(x.role == "positional:-1" for x in held)
            )
        )
        text = "\n".join(n for n in names[:3] if n) + ("\n…" if len(names) > 3 else "")
        ax.text(h, layer, text, ha="center", va="center", fontsize=6)
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(np.arange(-0.5, H), minor=True)
    ax.set_yticks(np.arange(-0.5, L), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    present = [f for f in families if any(r.family == f for r in roles)]
    ax.legend(
        handles=[Patch(color=FAMILY_COLORS[f], label=f) for f in present],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        frameon=False,
    )
    ax.set_title("head roles" + (f" at step {step}" if step is not None else ""), fontsize=9)
    return _save(fig, path)


def mds_map(hm: HeadMetrics, roles: Sequence[HeadRole], path: Path) -> Path | None:
    """Heads placed by classical MDS over sqrt(JS divergence) (Clark et al. 2019, Fig. 6), coloured by
    primary role, next to the JS matrix itself."""
    if hm.mds is None or hm.js is None:
        return None
    by_head = primary_roles(roles)
    index = hm.head_index
    fig = Figure(figsize=(11, 4.8))
    fig.subplots_adjust(left=0.05, right=0.97, bottom=0.08, top=0.92, wspace=0.2)
    ax = fig.add_subplot(1, 2, 1)
    xy = hm.mds.numpy()
    markers = "os^Dv<>ph*"
    colors = [FAMILY_COLORS[by_head[k][0].family if k in by_head else "unassigned"] for k in index]
    layers = np.array([layer for layer, _ in index])
    for layer in sorted(set(layers.tolist())):
        sel = layers == layer
        ax.scatter(
            xy[sel, 0],
            xy[sel, 1],
            c=[c for c, s_ in zip(colors, sel, strict=True) if s_],
            marker=markers[layer % len(markers)],
            edgecolors="black",
            linewidths=0.4,
            s=50,
        )
    for k, (layer, h) in enumerate(index):
        ax.text(xy[k, 0], xy[k, 1], f" {layer}.{h}", fontsize=6, va="bottom")
    present = [f for f in ROLE_FAMILIES if any(r.family == f for r in roles)]
    ax.legend(handles=[Patch(color=FAMILY_COLORS[f], label=f) for f in present], fontsize=6, frameon=False)
    ax.set_title("MDS of heads (sqrt JS); marker = layer, label = layer.head", fontsize=8)
    ax2 = fig.add_subplot(1, 2, 2)
    js = hm.js.numpy()
    ax2.imshow(js, cmap="magma_r", interpolation="nearest")
    ticks = [k for k, (_, h) in enumerate(index) if h == 0]
    ax2.set_xticks(ticks, [f"L{index[k][0]}" for k in ticks], fontsize=7)
    ax2.set_yticks(ticks, [f"L{index[k][0]}" for k in ticks], fontsize=7)
    ax2.set_title(f"JS divergence between heads (nats; white 0, black {js.max():.2f})", fontsize=8)
    return _save(fig, path)


def all_figures(
    hm: HeadMetrics, roles: Sequence[HeadRole], out_dir: Path, max_pictures: int, step: int | None = None
) -> dict[str, Path]:
    """Every picture into ``out_dir``; keys name them for W&B (``analysis/<key>``).

    Attention patterns: one picture per layer (a grid of its heads) for the first ``max_pictures``
    layers.
    """
    out: dict[str, Path | None] = {
        "role_grid": role_grid(roles, hm.n_heads, out_dir / "role_grid.png", step),
        "heatmaps": metric_heatmaps(hm, out_dir / "heatmaps.png"),
        "syntactic": syntactic_heatmaps(hm, out_dir / "syntactic.png"),
        "mds": mds_map(hm, roles, out_dir / "mds.png"),
    }
    for layer, p in enumerate(hm.example_patterns[: max(0, max_pictures)]):
        name = f"patterns_L{layer:02d}"
        out[name] = pattern_grid(p, hm.example_tokens, layer, out_dir / f"{name}.png")
    return {k: v for k, v in out.items() if v is not None}
