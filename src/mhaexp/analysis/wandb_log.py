"""The analysis in W&B: per-head scalars, pictures, the role table and role counts.

Keys (all logged in one ``WandbLogger.log_metrics`` call per analysis step, so they share one history
row with ``trainer/global_step``, the x-axis Lightning defines for every key):

* ``heads/L{layer:02d}H{head:02d}/{metric}``: per-head scalars (zero-padded to two digits so that keys
  sort in layer/head order up to 100 layers and heads), ``metric`` as in ``head_metrics.csv``
  (``syntactic_accuracy/nsubj``...), and ``heads/L{layer:02d}H{head:02d}/{metric}_se``, its standard error
  over probe sequences, for the metrics that have one (not weight-only ones such as ``copying``);
* ``layers/L{layer:02d}/{metric}``: per-layer values (GQA group diversity);
* ``baselines/{metric}``: the fixed-offset baselines;
* ``roles/<family>``: heads per role family, zeros included;
* ``analysis/<picture>``: ``wandb.Image`` (role grid, heatmaps, attention patterns, MDS);
* ``analysis/head_view``: ``wandb.Html``, the interactive head view (:mod:`mhaexp.analysis.head_view`);
* ``analysis/head_roles``: ``wandb.Table`` with columns layer, head, roles, scores, ses (the scores' standard
  errors, as in ``head_roles.csv``), margins.

The values are the rows of :func:`mhaexp.analysis.export.tidy_rows`, so W&B and ``head_metrics.csv``
hold the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from mhaexp.analysis.roles import HeadRole

TABLE_COLUMNS = ["layer", "head", "roles", "scores", "ses", "margins"]


def find_wandb(trainer: pl.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def wandb_key(row: Mapping[str, Any]) -> str:
    layer, head, metric = int(row["layer"]), int(row["head"]), str(row["metric"])
    if layer < 0:
        return f"baselines/{metric}"
    if head < 0:
        return f"layers/L{layer:02d}/{metric}"
    return f"heads/L{layer:02d}H{head:02d}/{metric}"


def scalars(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """W&B keys for tidy rows, with ``<key>_se`` for the rows that have a standard error; NaN values
    (undefined metrics, or a standard error over fewer than 2 sequences) are left out rather than charted."""
    out: dict[str, float] = {}
    for r in rows:
        key = wandb_key(r)
        if not math.isnan(float(r["value"])):
            out[key] = float(r["value"])
        se = r.get("se")
        if se is not None and not math.isnan(float(se)):
            out[f"{key}_se"] = float(se)
    return out


def roles_table(roles: Sequence[HeadRole]) -> Any:
    """One row per head: its roles, scores, their standard errors and margins as comma-separated text."""
    import wandb

    by_head: dict[tuple[int, int], list[HeadRole]] = {}
    for r in roles:
        by_head.setdefault((r.layer, r.head), []).append(r)
    data = []
    for (layer, head), held in sorted(by_head.items()):
        data.append(
            [
                layer,
                head,
                ", ".join(r.role for r in held),
                ", ".join("" if math.isnan(r.score) else f"{r.score:.3f}" for r in held),
                # 3 significant digits, not decimals: an SE of 2e-4 must not print as 0.000 (exact)
                ", ".join("" if math.isnan(r.se) else f"{r.se:.3g}" for r in held),
                ", ".join("" if math.isnan(r.margin) else f"{r.margin:.3f}" for r in held),
            ]
        )
    return wandb.Table(columns=TABLE_COLUMNS, data=data)


def log_analysis(
    logger: WandbLogger,
    step: int,
    rows: Sequence[Mapping[str, Any]],
    roles: Sequence[HeadRole],
    counts: Mapping[str, int],
    images: Mapping[str, Path] | None = None,
) -> None:
    """Everything of one analysis step as one history row at ``trainer/global_step = step``."""
    import wandb

    payload: dict[str, Any] = scalars(rows)
    payload.update({f"roles/{k}": int(v) for k, v in counts.items()})
    payload["analysis/head_roles"] = roles_table(roles)
    for key, path in (images or {}).items():
        suffix = Path(path).suffix
        if suffix == ".html":  # the head view; inject=False: no stylesheet link to fetch
            payload[f"analysis/{key}"] = wandb.Html(Path(path).read_text(encoding="utf-8"), inject=False)
        elif suffix == ".png":  # figure_formats without png: the svg/pdf files stay in the run directory
            payload[f"analysis/{key}"] = wandb.Image(str(path), caption=f"step {step}")
    # log_metrics, not experiment.log(step=...): Lightning owns W&B's step and charts against
    # trainer/global_step, which log_metrics adds to the row.
    logger.log_metrics(payload, step=step)


def log_summary(logger: WandbLogger, counts: Mapping[str, int]) -> None:
    logger.experiment.summary.update({f"roles/{k}": int(v) for k, v in counts.items()})
