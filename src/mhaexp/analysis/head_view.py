"""The interactive head view: one self-contained HTML file per analysis step, ``<run>/analysis/head_view.html``.

bertviz's head view (Vig 2019), written for this project: the tokens in two columns (queries left,
keys right), one line per (head, query, key) whose attention weight reaches :data:`THRESHOLD`,
its opacity the weight. A layer selector; one button per head in the head's colour (click: show or
hide it), labelled with the head's roles ("L1H2 syntactic:nsubj 1.00") and grouped by the KV head it
reads under GQA (query head ``h`` reads KV head ``h // (n_heads // n_kv_heads)``). Hovering a left
token keeps only its outgoing lines and lists where it looks; hovering a right token keeps the lines
into it. Long inputs scroll (one fixed-height row per token).

No network: ``head_view.js`` and ``head_view.css`` (package data beside this module) are inlined, and
the data is embedded as JSON, weights as integers in thousandths so that the file stays small.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from mhaexp.analysis.roles import HeadRole
from mhaexp.nn.shapes import kv_head_of

FILE_NAME = "head_view.html"
# Weights below this are not drawn: at 256 tokens an unthresholded layer would be 65k lines per head.
THRESHOLD = 0.05
# Weights are stored as integers in 1/SCALE; a line is drawn when its stored weight >= THRESHOLD * SCALE.
SCALE = 1000


def head_label(layer: int, head: int, roles: Sequence[HeadRole]) -> str:
    """``"L1H2 syntactic:nsubj 1.00, sink 0.41"``: the head and each role it holds with its score."""
    held = [r for r in roles if r.layer == layer and r.head == head and r.role != "unassigned"]
    parts = [r.role if math.isnan(r.score) else f"{r.role} {r.score:.2f}" for r in held]
    return f"L{layer}H{head} " + (", ".join(parts) if parts else "unassigned")


def quantize(pattern: Tensor | np.ndarray) -> np.ndarray:
    """Weights as the integers (thousandths) the page stores."""
    return np.rint(np.asarray(pattern, dtype=np.float64) * SCALE).astype(np.int64)


def line_count(pattern: Tensor | np.ndarray, threshold: float = THRESHOLD) -> int:
    """Lines the page draws for one head's (or a layer's) pattern: stored weights at or above the threshold."""
    return int((quantize(pattern) >= round(threshold * SCALE)).sum())


def view_data(
    patterns: Sequence[Tensor],
    tokens: Sequence[str],
    roles: Sequence[HeadRole],
    n_kv_heads: Sequence[int],
    causal: bool,
    title: str,
    threshold: float = THRESHOLD,
) -> dict[str, Any]:
    """The JSON the page embeds. ``patterns``: per layer ``(H_l, T, T)`` (rows: queries), one sequence."""
    T = len(tokens)
    cut = round(threshold * SCALE)
    layers = []
    for layer, p in enumerate(patterns):
        n_heads = p.shape[0]
        if p.shape[1:] != (T, T):
            raise ValueError(f"layer {layer}: pattern shape {tuple(p.shape)} does not match {T} tokens")
        q = quantize(p.detach().cpu() if isinstance(p, Tensor) else p)
        heads = []
        for h in range(n_heads):
            qs, ks = np.nonzero(q[h] >= cut)
            links = np.stack([qs, ks, q[h][qs, ks]], axis=1).reshape(-1).tolist()
            heads.append(
                {
                    "label": head_label(layer, h, roles),
                    "kv": kv_head_of(h, n_heads, int(n_kv_heads[layer])),
                    "links": links,
                }
            )
        layers.append({"n_kv_heads": int(n_kv_heads[layer]), "heads": heads})
    return {
        "title": title,
        "causal": bool(causal),
        "threshold": threshold,
        "scale": SCALE,
        "tokens": list(tokens),
        "layers": layers,
    }


def _asset(name: str) -> str:
    return resources.files("mhaexp.analysis").joinpath(name).read_text(encoding="utf-8")


def render(data: dict[str, Any]) -> str:
    """The whole page as one string."""
    # "<" escaped inside the JSON: a token such as "</script>" must not end the data block.
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(data['title'])}</title>\n<style>\n{_asset('head_view.css')}</style>\n</head>\n<body>\n"
        '<div id="hv-root"></div>\n'
        f'<script type="application/json" id="hv-data">{payload}</script>\n'
        f"<script>\n{_asset('head_view.js')}</script>\n</body>\n</html>\n"
    )


def write_head_view(path: Path, data: dict[str, Any]) -> Path:
    """Write the page atomically (a reader never sees half a file) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(data), encoding="utf-8")
    tmp.replace(path)
    return path


def model_heads(model: Any) -> tuple[list[int], bool]:
    """(KV heads per layer, causal) of a :class:`~mhaexp.nn.model.Transformer`."""
    return [int(a.n_kv_heads) for a in model.attention_layers], bool(model.cfg.causal)


def head_view_for(
    model: Any,
    patterns: Sequence[Tensor],
    tokens: Sequence[str],
    roles: Sequence[HeadRole],
    path: Path,
    title: str,
) -> Path:
    """The page for ``model``'s ``patterns`` on one sequence of ``tokens``, written to ``path``."""
    n_kv, causal = model_heads(model)
    return write_head_view(path, view_data(patterns, tokens, roles, n_kv, causal, title))
