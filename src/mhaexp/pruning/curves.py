"""Pruning curves: quality against the fraction of heads pruned (Michel et al. 2019, Fig. 2-3).

A curve is a list of points, each a dict with at least ``fraction_pruned``, ``val_loss`` and
``val_acc`` (the callback adds ``step``, ``heads_pruned`` and ``heads_remaining``). Several curves
(e.g. one per ranking criterion) can be drawn on one figure with :func:`plot_pruning_curves`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mhaexp.heads.evaluation import evaluate, layer_sizes
from mhaexp.nn.model import Transformer
from mhaexp.nn.objectives import Batch, Objective, causal_lm_objective
from mhaexp.pruning.schedules import fraction_to_count, max_prunable
from mhaexp.pruning.step import Ranking, prune_step
from mhaexp.pruning.surgery import masked_heads

CURVE_COLUMNS = ("step", "fraction_pruned", "heads_pruned", "heads_remaining", "val_loss", "val_acc", "criterion")


def plot_pruning_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike[str],
    metric: str = "val_acc",
    title: str = "Pruning curve",
) -> Path:
    """Draw one line per named curve of ``(fraction pruned, metric)`` points and save a PNG.

    Matplotlib's Agg backend is used, so this works without a display (and in a sweep's workers).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    for name, points in curves.items():
        pts = sorted((float(x), float(y)) for x, y in points)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", markersize=3, label=name)
    ax.set_xlabel("fraction of heads pruned")
    ax.set_ylabel(metric)
    ax.set_xlim(-0.02, 1.0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_curve_csv(points: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """``pruning_curve.csv``: one row per point, columns :data:`CURVE_COLUMNS` (missing ones empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CURVE_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for p in points:
            writer.writerow({k: p.get(k, "") for k in CURVE_COLUMNS})
    return path


def read_curve_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read back :func:`write_curve_csv` (numbers as floats)."""
    rows = []
    with Path(path).open() as f:
        for row in csv.DictReader(f):
            rows.append({k: (float(v) if k != "criterion" and v != "" else v) for k, v in row.items()})
    return rows


def curve_xy(points: Sequence[Mapping[str, Any]], metric: str = "val_acc") -> list[tuple[float, float]]:
    """``(fraction_pruned, metric)`` pairs of a curve."""
    return [(float(p["fraction_pruned"]), float(p[metric])) for p in points]


def compute_pruning_curve(
    model: Transformer,
    batches: Sequence[Batch],
    criterion: str = "importance",
    step_fraction: float = 0.1,
    objective: Objective = causal_lm_objective,
    scope: str = "global",
    min_heads_per_layer: int = 1,
    normalize: bool = False,
    exact: bool = True,
    seed: int = 0,
    roles: Any = None,
    eval_batches: Sequence[Batch] | None = None,
) -> list[dict[str, Any]]:
    """Prune ``model`` step by step without fine-tuning and evaluate after each step (Michel et al.
    2019, Fig. 3): ``step_fraction`` of all heads per step, re-ranking each step when ``exact``.

    Heads are ranked on ``batches``; the quality is measured on ``eval_batches`` when given (held-out
    batches the ranking never saw), else on ``batches`` too.

    Each step is :func:`~mhaexp.pruning.step.prune_step`, the step the pruning callback takes.
    ``model``'s gates are restored afterwards. Heads already masked count as pruned from the start.
    """
    sizes = layer_sizes(model)
    total = sum(sizes)
    saved = [layer.head_gate.clone() for layer in model.attention_layers]
    pruned = masked_heads(model)
    limit = max_prunable(sizes, min_heads_per_layer)
    d = max(1, fraction_to_count(step_fraction, total))
    ranking = Ranking(criterion, scope, min_heads_per_layer, normalize, seed, roles)

    def point(loss: float, acc: float, step: int) -> dict[str, Any]:
        n = len(pruned)
        return {
            "step": step,
            "fraction_pruned": n / total,
            "heads_pruned": n,
            "heads_remaining": total - n,
            "val_loss": loss,
            "val_acc": acc,
            "criterion": criterion,
        }

    measured = batches if eval_batches is None else eval_batches
    points = [point(*evaluate(model, measured, objective), 0)]
    scores = None
    try:
        while len(pruned) < limit:
            step = prune_step(
                model,
                batches,
                objective,
                pruned,
                min(limit, len(pruned) + d),
                ranking,
                None if exact else scores,
                eval_batches=measured,
            )
            scores = step.scores
            if not step.new:
                break
            pruned += step.new
            points.append(point(step.val_loss, step.val_acc, len(points)))
    finally:
        for layer, g in zip(model.attention_layers, saved, strict=True):
            layer.head_gate.copy_(g)
    return points
