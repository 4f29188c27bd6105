"""``python -m mhaexp.tools.probe_stability ckpt=PATH``: how stable each per-head metric is at a probe size.

Usage::

    python -m mhaexp.tools.probe_stability ckpt=runs/<run>/checkpoints/last.ckpt
    python -m mhaexp.tools.probe_stability ckpt=... sizes=64,256,512 pairs=2 out=stability.csv js_sequences=64

For each probe size ``n`` in ``sizes`` the checkpoint's run data (``<run>/.hydra/config.yaml``, its saved
tokenizer) gives ``2 n pairs`` probe sequences; pair ``k`` is the disjoint probes ``[2kn, (2k+1)n)`` and
``[(2k+1)n, (2k+2)n)``, their random repeated sequences (the induction metrics) drawn with the seeds
``seed + 2k`` and ``seed + 2k + 1``. Both get the full analysis (both tiers, as at the end of a run and in
``mhaexp-analyze``), and every per-head metric (one per relation for syntactic accuracy) is compared
between them by the Spearman rank correlation over the heads (``scipy.stats.spearmanr``): 1 means the
second probe ranks the heads as the first does. The MDS coordinates are left out: an embedding is
defined only up to rotation and reflection, so its axes do not compare between two probes.

Prints one row per metric and size (``spearman`` the smallest over the pairs, ``constant`` when a probe
gives every head one value, ``undefined`` when the metric is NaN on the model), and writes them to
``out`` (CSV) when given. Any other ``key=value`` sets a key of ``conf/analysis/default.yaml``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mhaexp.errors import ConfigError, key_value_main

PROG = "python -m mhaexp.tools.probe_stability"
OWN_KEYS = ("ckpt", "sizes", "pairs", "out")
DEFAULT_SIZES = (64, 128, 256)
LEFT_OUT = ("mds_x", "mds_y")  # coordinates of an embedding, defined up to rotation: no rank to compare


@dataclass(frozen=True)
class StabilityRow:
    """One metric at one probe size: the rank agreement of the heads between disjoint probes."""

    metric: str
    n: int  # sequences per probe
    heads: int  # heads compared (real and finite on both probes)
    spearman: float  # the smallest over the pairs; NaN when constant or undefined
    pairs: int  # pairs whose probes hold the metric (a relation with arcs in some only)
    note: str  # "", "constant" or "undefined"
    arcs: int | None = None  # syntactic accuracy: the fewer gold arcs of the two probes


def per_head(rows: Sequence[dict[str, Any]]) -> dict[str, dict[tuple[int, int], float]]:
    """The per-head values of :func:`~mhaexp.analysis.export.tidy_rows` by metric, then (layer, head)."""
    out: dict[str, dict[tuple[int, int], float]] = {}
    for r in rows:
        if r["head"] >= 0 and r["metric"] not in LEFT_OUT:
            out.setdefault(r["metric"], {})[(r["layer"], r["head"])] = float(r["value"])
    return out


def agreement(a: dict[tuple[int, int], float], b: dict[tuple[int, int], float]) -> tuple[float, int, str]:
    """(Spearman over the heads finite in both, their number, note) of one metric on two probes."""
    from scipy.stats import spearmanr

    heads = [k for k in a if k in b and math.isfinite(a[k]) and math.isfinite(b[k])]
    if len(heads) < 3:
        return math.nan, len(heads), "undefined"
    x, y = [a[k] for k in heads], [b[k] for k in heads]
    if len(set(x)) == 1 or len(set(y)) == 1:
        return math.nan, len(heads), "constant"
    return float(spearmanr(x, y).statistic), len(heads), ""


def stability(model: Any, probe: Any, settings: Any, sizes: Sequence[int], pairs: int = 1) -> list[StabilityRow]:
    """The rows of the module docstring for ``model`` on the first ``2 max(sizes) pairs`` sequences of ``probe``
    (a :class:`~mhaexp.analysis.collect.ProbeData`; ``settings`` an ``AnalysisConfig``)."""
    import torch

    from mhaexp.analysis.collect import compute_head_metrics
    from mhaexp.analysis.export import tidy_rows
    from mhaexp.analysis.treebank_scores import arc_counts

    # The probe's batches come from one loader, padded to one width: one table of rows to slice.
    batch = {c: torch.cat([b[c] for b in probe.batches]) for c in probe.batches[0]}
    out = []
    for n in sizes:
        per_pair: list[dict[str, tuple[float, int, str, int | None]]] = []
        for k in range(pairs):
            values, arcs = [], []
            for part in (2 * k, 2 * k + 1):
                sub = replace(probe, batches=[{c: v[part * n : (part + 1) * n] for c, v in batch.items()}], cache={})
                cfg = {**settings.to_dict(), "seed": settings.seed + part}
                hm = compute_head_metrics(model, sub, cfg, expensive=True)
                values.append(per_head(tidy_rows(0, hm)))
                arcs.append(arc_counts(sub.batches, sub.relations) if sub.has_syntax else {})
            result = {}
            for metric in values[0]:
                rho, heads, note = agreement(values[0][metric], values[1].get(metric, {}))
                rel = metric.partition("/")[2] if metric.startswith("syntactic_accuracy/") else None
                result[metric] = (rho, heads, note, min(a.get(rel, 0) for a in arcs) if rel else None)
            per_pair.append(result)
        # A relation may have arcs in one pair's probes only: each metric over the pairs that score it.
        for metric in dict.fromkeys(m for p in per_pair for m in p):
            got = [p[metric] for p in per_pair if metric in p]
            rhos = [g[0] for g in got if not math.isnan(g[0])]
            note = next((g[2] for g in got if g[2]), "") if len(rhos) < len(got) else ""
            arcs_seen = [g[3] for g in got if g[3] is not None]
            out.append(
                StabilityRow(
                    metric,
                    n,
                    min(g[1] for g in got),
                    min(rhos) if rhos and not note else math.nan,
                    len(got),
                    note,
                    min(arcs_seen) if arcs_seen else None,
                )
            )
    return out


def format_table(rows: Sequence[StabilityRow]) -> list[str]:
    lines = [f"{'metric':<34} {'n':>5} {'heads':>5} {'arcs':>6} {'spearman':>9}"]
    for r in rows:
        rho = r.note or f"{r.spearman:.3f}"
        arcs = "" if r.arcs is None else str(r.arcs)
        lines.append(f"{r.metric:<34} {r.n:>5} {r.heads:>5} {arcs:>6} {rho:>9}")
    return lines


def write_csv(path: Path, rows: Sequence[StabilityRow]) -> None:
    fields = list(StabilityRow.__dataclass_fields__)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: getattr(r, k) for k in fields})


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError("sizes", text, "comma-separated positive sequence counts, e.g. sizes=64,128,256")
    return sizes


def run(argv: list[str]) -> str:
    """Do what ``argv`` asks; return the lines to print."""
    from omegaconf import OmegaConf, open_dict

    from mhaexp.analysis.collect import objective_for, probe_from_datamodule
    from mhaexp.analysis.config import AnalysisConfig
    from mhaexp.config import CONF_DIR, build, instantiate_plain
    from mhaexp.rundir import ANALYSIS_DIR
    from mhaexp.training.module import load_module
    from mhaexp.training.run_data import run_data_node

    own: dict[str, str] = {}
    overrides: list[str] = []
    for word in argv:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ConfigError("argument", word, f"write key=value (keys {', '.join(OWN_KEYS)} or analysis keys)")
        if key in OWN_KEYS:
            own[key] = value
        else:
            overrides.append(word)
    if not own.get("ckpt"):
        raise ConfigError("ckpt", None, "required: the checkpoint to measure (ckpt=<run>/checkpoints/last.ckpt)")
    sizes = _sizes(own.get("sizes", ",".join(map(str, DEFAULT_SIZES))))
    pairs_text = own.get("pairs", "1")
    if not pairs_text.isdigit() or int(pairs_text) < 1:
        raise ConfigError("pairs", pairs_text, "a positive number of disjoint probe pairs, e.g. pairs=2")
    pairs = int(pairs_text)
    ckpt = Path(own["ckpt"])
    module = load_module(ckpt, "ckpt")
    data = run_data_node(ckpt)
    if data is None:
        raise ConfigError("ckpt", str(ckpt), "a checkpoint in a run directory (<run>/checkpoints/x.ckpt): its data")
    raw = OmegaConf.merge(OmegaConf.load(CONF_DIR / ANALYSIS_DIR / "default.yaml"), OmegaConf.from_dotlist(overrides))
    settings = build(AnalysisConfig, raw, "analysis", complete=True)
    need = 2 * max(sizes) * pairs
    with open_dict(data):
        data.n_probe = need
        data.n_val = max(int(data.n_val), need)  # a text probe is the first validation windows
    datamodule = instantiate_plain(data)
    datamodule.prepare_data()
    probe = probe_from_datamodule(datamodule, need, objective_for(module))
    if probe.n_sequences < need:
        have = f"the data's probe set holds {probe.n_sequences} sequences, fewer than 2 x {max(sizes)} x {pairs} pairs"
        raise ConfigError("sizes", ",".join(map(str, sizes)), have)
    rows = stability(module.model, probe, settings, sizes, pairs)
    if own.get("out"):
        write_csv(Path(own["out"]), rows)
    return "\n".join(
        [
            f"{ckpt}: per-head rank agreement (Spearman over heads) between two disjoint probes of n sequences, "
            f"{pairs} pair(s), the smallest shown",
            *format_table(rows),
            *([f"wrote {own['out']}"] if own.get("out") else []),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    key_value_main(PROG, __doc__, run, argv)


if __name__ == "__main__":
    main()
