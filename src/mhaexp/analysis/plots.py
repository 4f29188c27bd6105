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
    "positional_frac", "prev_token_attn", "induction", "duplicate", "copying", "sink", "rare_word",
    "coreference", "normalized_entropy", "confidence", "importance", "ablation", "js_nearest",
)
# One colour per role family (tab20 has enough distinct ones); "unassigned" is light grey.
FAMILY_COLORS: dict[str, str] = {
    "positional": "#1f77b4", "previous_token": "#aec7e8", "syntactic": "#2ca02c", "coreference": "#d62728",
    "induction": "#9467bd", "duplicate": "#c5b0d5", "copying": "#8c564b", "sink": "#7f7f7f",
    "rare_word": "#e377c2", "broad": "#bcbd22", "unassigned": "#eeeeee",
}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _grid(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def _heatmap(ax, values: Tensor, title: str) -> None:  # noqa: ANN001 (matplotlib Axes)
    data = np.ma.masked_invalid(values.numpy())
    im = ax.imshow(data, aspect="auto", cmap="viridis")
    L, H = values.shape
    ax.set_title(title, fontsize=8)
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.tick_params(labelsize=6)
    ax.set_xlabel("head", fontsize=7)
    ax.set_ylabel("layer", fontsize=7)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)


def metric_heatmaps(hm: HeadMetrics, path: Path, cols: int = 4) -> Path:
    """One layer x head heatmap per scalar metric (NaN cells, i.e. pruned heads, left blank)."""
    keys = [k for k in HEATMAP_METRICS if k in hm.metrics]
    rows, cols = _grid(len(keys), cols)
    L, H = hm.metrics[keys[0]].shape[:2]
    fig = Figure(figsize=(cols * max(2.6, 0.35 * H + 1), rows * max(1.8, 0.35 * L + 1.2)), layout="constrained")
    for i, key in enumerate(keys):
        _heatmap(fig.add_subplot(rows, cols, i + 1), hm.metrics[key], key)
    return _save(fig, path)


def syntactic_heatmaps(hm: HeadMetrics, path: Path, cols: int = 4) -> Path | None:
    """Accuracy minus the fixed-offset baseline, one heatmap per relation that has instances."""
    if "syntactic_accuracy" not in hm.metrics:
        return None
    acc, base = hm.metrics["syntactic_accuracy"], hm.metrics["syntactic_baseline"]
    present = [r for r in range(acc.shape[-1]) if not bool(torch.isnan(base[r]))]
    if not present:
        return None
    rows, cols = _grid(len(present), cols)
    L, H = acc.shape[:2]
    fig = Figure(figsize=(cols * max(2.6, 0.35 * H + 1), rows * max(1.8, 0.35 * L + 1.2)), layout="constrained")
    for i, r in enumerate(present):
        name = hm.relation_names[r] if r < len(hm.relation_names) else str(r)
        direction = hm.syntactic_direction[r] if r < len(hm.syntactic_direction) else ""
        title = f"{name} ({direction}) gain, base {float(base[r]):.2f}"
        _heatmap(fig.add_subplot(rows, cols, i + 1), acc[..., r] - base[r], title)
    return _save(fig, path)


def pattern_grid(patterns: Tensor, tokens: Sequence[str], layer: int, path: Path, cols: int = 4) -> Path:
    """A bertviz head-view-like still of one layer: one small query x key heatmap per head, token labels
    on both axes (rows: queries, columns: keys)."""
    n_heads, T, _ = patterns.shape
    rows, cols = _grid(n_heads, cols)
    side = max(2.2, 0.18 * T + 0.8)
    fig = Figure(figsize=(cols * side, rows * side), layout="constrained")
    labels = list(tokens)[:T]
    for h in range(n_heads):
        ax = fig.add_subplot(rows, cols, h + 1)
        ax.imshow(patterns[h].numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_title(f"L{layer} H{h}", fontsize=8)
        ax.set_xticks(range(T))
        ax.set_yticks(range(T))
        ax.set_xticklabels(labels, rotation=90, fontsize=5)
        ax.set_yticklabels(labels, fontsize=5)
    fig.suptitle(f"layer {layer}: attention on the probe sentence (row = query, column = key)", fontsize=9)
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
    return {"previous_token": "prev", "coreference": "coref", "induction": "induct", "duplicate": "dup",
            "copying": "copy", "rare_word": "rare", "unassigned": ""}.get(family, family)


def role_grid(roles: Sequence[HeadRole], n_heads: Sequence[int], path: Path, step: int | None = None) -> Path:
    """Layers x heads coloured by each head's primary role (first in ROLE_FAMILIES order), labelled with
    its roles; heads a pruned layer lacks are white."""
    L, H = len(n_heads), max(n_heads)
    families = list(ROLE_FAMILIES)
    cmap = ListedColormap([FAMILY_COLORS[f] for f in families] + ["#ffffff"])
    codes = np.full((L, H), len(families))
    by_head = primary_roles(roles)
    fig = Figure(figsize=(max(4.0, 1.05 * H + 2.5), max(2.0, 0.8 * L + 1.2)), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for (layer, h), held in by_head.items():
        if h < n_heads[layer]:
            codes[layer, h] = families.index(held[0].family)
    ax.imshow(codes, cmap=cmap, vmin=-0.5, vmax=len(families) + 0.5, aspect="auto")
    for (layer, h), held in by_head.items():
        if h >= n_heads[layer]:
            continue
        names = list(dict.fromkeys(short_role(r.role) for r in held if r.role != "previous_token"
                                   or not any(x.role == "positional:-1" for x in held)))
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
    ax.legend(handles=[Patch(color=FAMILY_COLORS[f], label=f) for f in present], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    ax.set_title("head roles" + (f" at step {step}" if step is not None else ""), fontsize=9)
    return _save(fig, path)


def mds_map(hm: HeadMetrics, roles: Sequence[HeadRole], path: Path) -> Path | None:
    """Heads placed by classical MDS over sqrt(JS divergence) (Clark et al. 2019, Fig. 6), coloured by
    primary role, next to the JS matrix itself."""
    if hm.mds is None or hm.js is None:
        return None
    by_head = primary_roles(roles)
    index = hm.head_index
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    xy = hm.mds.numpy()
    markers = "os^Dv<>ph*"
    for k, (layer, h) in enumerate(index):
        held = by_head.get((layer, h))
        family = held[0].family if held else "unassigned"
        ax.scatter(xy[k, 0], xy[k, 1], color=FAMILY_COLORS[family], marker=markers[layer % len(markers)],
                   edgecolors="black", linewidths=0.4, s=50)
        ax.annotate(f"{layer}.{h}", (xy[k, 0], xy[k, 1]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    present = [f for f in ROLE_FAMILIES if any(r.family == f for r in roles)]
    ax.legend(handles=[Patch(color=FAMILY_COLORS[f], label=f) for f in present], fontsize=6, frameon=False)
    ax.set_title("MDS of heads (sqrt JS); marker = layer, label = layer.head", fontsize=8)
    ax2 = fig.add_subplot(1, 2, 2)
    im = ax2.imshow(hm.js.numpy(), cmap="magma_r")
    ticks = [k for k, (_, h) in enumerate(index) if h == 0]
    ax2.set_xticks(ticks, [f"L{index[k][0]}" for k in ticks], fontsize=7)
    ax2.set_yticks(ticks, [f"L{index[k][0]}" for k in ticks], fontsize=7)
    ax2.set_title("JS divergence between heads (nats)", fontsize=8)
    fig.colorbar(im, ax=ax2, fraction=0.046, pad=0.02)
    return _save(fig, path)


def all_figures(hm: HeadMetrics, roles: Sequence[HeadRole], out_dir: Path, max_pictures: int,
                step: int | None = None) -> dict[str, Path]:
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
