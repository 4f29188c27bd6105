"""The one table of per-head metrics and head roles: everything else reads it.

* The analysis loop (:func:`mhaexp.analysis.collect.compute_head_metrics`) runs every :class:`Metric`
  with a ``sums`` function on each chunk of probe patterns, in this order, and finishes its sums into
  value, standard error over sequences and ``n`` (:meth:`mhaexp.heads.patterns.Ratio.stats`).
* ``head_metrics.csv`` and W&B (:mod:`mhaexp.analysis.export`, :mod:`mhaexp.analysis.wandb_log`) write
  the metrics in this order, with ``se`` and ``n`` where :attr:`Metric.se` says the metric has them.
* The heatmaps (:mod:`mhaexp.analysis.plots`) draw each metric with a ``scale``, on that scale, with
  ``units`` under its colour bar.
* :func:`mhaexp.analysis.roles.classify_heads` applies each :class:`Role`; its ``bar`` is a key of
  ``analysis.thresholds`` (:class:`mhaexp.analysis.config.Thresholds` is built from these keys, the
  values live in ``conf/analysis/default.yaml`` only); the role families and their colours come from here.

Adding a metric is one ``*_sums`` function (in :mod:`mhaexp.heads`) and one :class:`Metric` entry; adding a
role is one :class:`Role` entry and its bar in the YAML (see the README, "Adding a metric").

No torch import: the CLI's config check reads the roles' bars through :mod:`mhaexp.analysis.config`.
``sums`` names its function as ``"module.function"`` under :mod:`mhaexp`, imported on first use.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Tier = Literal["cheap", "expensive"]


@dataclass(frozen=True)
class Metric:
    """One per-head metric.

    ``sums``: the streaming function, ``"heads.patterns.sink_sums"`` (under :mod:`mhaexp`) or a callable,
    called on every chunk of probe patterns with the inputs named in ``needs`` (positionally) and
    returning a :class:`~mhaexp.heads.patterns.Ratio` (or something ``pick`` selects one from: metrics
    sharing one pass over the patterns name the same function). ``None``: computed outside the pattern
    loop (weights, gradients, ablation, the JS divergence), by :mod:`mhaexp.analysis.collect`.

    ``needs``: attributes of :class:`mhaexp.analysis.collect.ChunkInputs` (``chunk``, ``words``,
    ``tokens``, ``token_freq``, ``max_offset``, ``streaming_window``, ``needle``, ``answer``,
    ``generated``, ``syntax_targets``, ``syntax_directions``, ``coref``, the token-class key masks
    ``cls_keys``, ``sep_keys``, ``punct_keys``) or ``thresholds.<key>``; a
    metric whose input the probe lacks (None) is not computed.
    ``on``: ``probe`` (the probe sequences) or ``repeats`` (BOS + x + x random sequences, or the probe
    itself when it is repeated already).
    ``finish``: ``"module.function"`` turning the summed ``(value, se, n)`` per layer into the outputs
    (``positional_frac`` -> its best offset too); default: the metric itself.
    ``scale``: the heatmap's colour range (None at an end: the range seen so far); ``None``: no heatmap.
    ``se``: whether the metric has a standard error over probe sequences (not weight-only metrics).
    """

    name: str
    sums: str | Callable[..., Any] | None
    needs: tuple[str, ...] = ("chunk",)
    tier: Tier = "cheap"
    scale: tuple[float | None, float | None] | None = (0.0, 1.0)
    units: str = ""
    source: str = ""
    on: Literal["probe", "repeats"] = "probe"
    pick: str | int | None = None
    finish: str | None = None
    se: bool = True
    diverging: bool = False

    def function(self) -> Callable[..., Any]:
        """``sums`` as a callable."""
        return resolve(self.sums)


@dataclass(frozen=True)
class Role:
    """One head role: a head holds it when ``metric`` clears ``bar`` (a key of ``analysis.thresholds``) at
    the lower end of its interval, value - 2 SE (:data:`SE_MULTIPLE`).

    ``direction``: ``at_least`` (lower end >= bar), ``above`` (lower end > bar, Gu et al.'s sink rule) or
    ``margin`` (lower end - ``baseline`` >= bar: accuracy over a baseline metric). ``name_by``: roles
    named per offset (``positional:-1``) or relation (``syntactic:nsubj``); ``offset``: only heads whose
    ``positional_offset`` is this (``previous_token``). ``bar_range``: the valid values of the bar.
    """

    family: str
    metric: str
    bar: str
    direction: Literal["at_least", "above", "margin"]
    colour: str
    source: str
    baseline: str | None = None
    name_by: Literal["offset", "relation"] | None = None
    offset: int | None = None
    bar_range: tuple[float, float] = (0.0, 1.0)


# A role needs its bar cleared by the score minus this many standard errors (about a one-sided 97.7% bound).
SE_MULTIPLE = 2.0

_P = "heads.patterns."

METRICS: list[Metric] = [
    Metric(
        "positional_frac",
        _P + "relative_position_sums",
        ("chunk", "max_offset"),
        pick=0,
        finish="analysis.collect.best_offset_stats",
        units="share of queries at the head's offset",
        source="Voita et al. 2019, Sec. 5.1",
    ),
    Metric("positional_offset", None, scale=None, se=False, source="Voita et al. 2019, Sec. 5.1"),
    Metric(
        "normalized_entropy",
        _P + "normalized_entropy_sums",
        units="entropy / log(visible keys)",
        source="Clark et al. 2019, Sec. 3.3",
    ),
    Metric("entropy", _P + "entropy_sums", scale=None, source="Clark et al. 2019, Sec. 3.3"),
    Metric("confidence", _P + "confidence_sums", units="mean max attention weight", source="Voita et al. 2019, Sec. 4"),
    Metric(
        "prev_token_attn",
        _P + "previous_token_sums",
        units="attention weight on the previous token",
        source="TransformerLens detect_head previous_token_head",
    ),
    Metric("sink", _P + "sink_sums", units="attention weight on the first token", source="Gu et al. 2024, Sec. 3"),
    Metric(
        "attn_cls",
        _P + "token_class_sums",
        ("chunk", "cls_keys"),
        scale=None,
        units="attention weight on BOS / [CLS]",
        source="Clark et al. 2019, Sec. 3.2, Fig. 2",
    ),
    Metric(
        "attn_sep",
        _P + "token_class_sums",
        ("chunk", "sep_keys"),
        units="attention weight on EOS / [SEP] tokens",
        source="Clark et al. 2019, Sec. 3.2, Fig. 2",
    ),
    Metric(
        "attn_punct",
        _P + "token_class_sums",
        ("chunk", "punct_keys"),
        scale=None,
        units="attention weight on periods and commas",
        source="Clark et al. 2019, Sec. 3.2, Fig. 2",
    ),
    Metric(
        "sink_rate", _P + "sink_rate_sums", ("chunk", "thresholds.sink"), scale=None, source="Gu et al. 2024, Sec. 3"
    ),
    Metric(
        "rare_word",
        _P + "rare_token_sums",
        ("chunk", "tokens", "token_freq"),
        units="share of queries on the rarest token",
        source="Voita et al. 2019, Sec. 5.3",
    ),
    Metric(
        "streaming",
        "heads.longctx.streaming_sums",
        ("chunk", "streaming_window"),
        scale=None,
        source="Xiao et al. 2025 (DuoAttention)",
    ),
    Metric(
        "retrieval",
        "heads.longctx.retrieval_sums",
        ("chunk", "tokens", "needle", "answer", "generated"),
        scale=None,
        source="Wu et al. 2024, Sec. 2",
    ),
    Metric(
        "syntactic_accuracy",
        _P + "relation_sums",
        ("words", "syntax_targets", "syntax_directions"),
        scale=None,  # one heatmap per relation, against its baseline (plots.syntactic_heatmaps)
        source="Clark et al. 2019, Sec. 4.2; Voita et al. 2019, Sec. 5.2",
    ),
    Metric(
        "coreference",
        _P + "antecedent_sums",
        ("words", "coref"),
        units="antecedent accuracy",
        source="Clark et al. 2019, Sec. 4.3",
    ),
    Metric(
        "induction",
        _P + "repeat_sums",
        ("chunk", "tokens"),
        on="repeats",
        pick="induction",
        units="induction score (TransformerLens ratio)",
        source="Olsson et al. 2022; TransformerLens detect_head induction_head",
    ),
    Metric(
        "duplicate",
        _P + "repeat_sums",
        ("chunk", "tokens"),
        on="repeats",
        pick="duplicate",
        units="duplicate-token score",
        source="TransformerLens detect_head duplicate_token_head",
    ),
    Metric(
        "prefix_matching",
        _P + "repeat_sums",
        ("chunk", "tokens"),
        on="repeats",
        pick="prefix_matching",
        scale=None,
        source="Olsson et al. 2022, Sec. 2",
    ),
    Metric(
        "duplicate_matching",
        _P + "repeat_sums",
        ("chunk", "tokens"),
        on="repeats",
        pick="duplicate_matching",
        scale=None,
        source="TransformerLens duplicate_token_head targets, Olsson et al.'s averaging",
    ),
    Metric(
        "copying",
        None,
        scale=(-1.0, 1.0),
        units="copying: sum Re(lambda) / sum |lambda|",
        source="Elhage et al. 2021",
        se=False,
        diverging=True,
    ),
    Metric("importance", None, scale=(0.0, None), units="E|dL/dgate| (nats)", source="Michel et al. 2019, eq. 2"),
    Metric("group_importance", None, scale=None, source="Michel et al. 2019, eq. 2, per KV group"),
    Metric(
        "ablation",
        None,
        tier="expensive",
        scale=(None, None),
        units="loss change without the head (nats)",
        source="Michel et al. 2019, Sec. 3.2",
        diverging=True,
    ),
    Metric(
        "js_nearest",
        None,
        tier="expensive",
        scale=(0.0, 0.6931471805599453),  # JS divergence lies in [0, ln 2]
        units="JS divergence to the nearest head (nats)",
        source="Clark et al. 2019, Sec. 6",
        se=False,
    ),
    Metric("mds_x", None, tier="expensive", scale=None, se=False, source="Clark et al. 2019, Sec. 6"),
    Metric("mds_y", None, tier="expensive", scale=None, se=False, source="Clark et al. 2019, Sec. 6"),
    Metric("group_ablation", None, tier="expensive", scale=None, source="Michel et al. 2019, Sec. 3.2, per KV group"),
]

ROLES: list[Role] = [
    Role(
        "positional",
        "positional_frac",
        "positional",
        "at_least",
        "#1f77b4",
        "Voita et al. 2019, Sec. 5.1",
        name_by="offset",
    ),
    Role(
        "previous_token",
        "positional_frac",
        "positional",
        "at_least",
        "#aec7e8",
        "Voita et al. 2019, Sec. 5.1",
        offset=-1,
    ),
    Role(
        "syntactic",
        "syntactic_accuracy",
        "syntactic_margin",
        "margin",
        "#2ca02c",
        "Voita et al. 2019, Sec. 5.2",
        baseline="syntactic_baseline",
        name_by="relation",
    ),
    Role(
        "coreference",
        "coreference",
        "coreference_margin",
        "margin",
        "#d62728",
        "Clark et al. 2019, Sec. 4.3",
        baseline="coreference_baseline",
    ),
    # Olsson et al.'s score, over the queries that have an earlier copy: the TransformerLens ratios
    # (``induction``, ``duplicate``) divide by every query and stay below 0.5 even for perfect heads.
    Role("induction", "prefix_matching", "induction", "at_least", "#9467bd", "Olsson et al. 2022, Sec. 2"),
    Role("duplicate", "duplicate_matching", "duplicate", "at_least", "#c5b0d5", "TransformerLens duplicate_token_head"),
    Role("copying", "copying", "copying", "at_least", "#8c564b", "Elhage et al. 2021", bar_range=(-1.0, 1.0)),
    Role("sink", "sink", "sink", "above", "#7f7f7f", "Gu et al. 2024, Sec. 3"),
    Role("rare_word", "rare_word", "rare_word", "at_least", "#e377c2", "Voita et al. 2019, Sec. 5.3"),
    Role("broad", "normalized_entropy", "broad", "at_least", "#bcbd22", "Clark et al. 2019, Sec. 3.3"),
    Role("retrieval", "retrieval", "retrieval", "at_least", "#ff7f0e", "Wu et al. 2024, Sec. 2"),
    Role("streaming", "streaming", "streaming", "at_least", "#17becf", "Xiao et al. 2025 (DuoAttention)"),
]

UNASSIGNED = "unassigned"
UNASSIGNED_COLOUR = "#eeeeee"


def metric(name: str) -> Metric:
    """The registered metric ``name``."""
    for m in METRICS:
        if m.name == name:
            return m
    raise KeyError(f"no metric {name!r} in mhaexp.analysis.registry.METRICS")


def metric_order() -> list[str]:
    """Metric names in table order (head_metrics.csv, W&B)."""
    return [m.name for m in METRICS]


def heatmap_metrics() -> list[Metric]:
    """The metrics drawn as heatmaps (those with a ``scale``), in registry order."""
    return [m for m in METRICS if m.scale is not None]


def role_families() -> tuple[str, ...]:
    """Role families in display order, ``unassigned`` last."""
    return (*dict.fromkeys(r.family for r in ROLES), UNASSIGNED)


def family_colours() -> dict[str, str]:
    return {**{r.family: r.colour for r in ROLES}, UNASSIGNED: UNASSIGNED_COLOUR}


def bars() -> dict[str, tuple[float, float]]:
    """Threshold keys (``analysis.thresholds``) in role order, each with its valid range."""
    return {r.bar: r.bar_range for r in ROLES}


def role_interval(role: str, score: float, se: float, margin: float) -> str:
    """``syntactic:nsubj 0.98 ± 0.02 (+0.64)``: a held role, its score ± standard error (no ± without one:
    weight-only metrics, or tables written before the standard errors) and its margin over the bar."""
    err = "" if math.isnan(se) or se == 0 else f" ± {se:.2f}"
    return f"{role} {score:.2f}{err} ({margin:+.2f})"


def resolve(ref: str | Callable[..., Any] | None) -> Callable[..., Any]:
    """``"heads.patterns.sink_sums"`` (under :mod:`mhaexp`) -> the function; callables pass through."""
    if ref is None:
        raise ValueError("this metric has no streaming function: it is computed by mhaexp.analysis.collect")
    if callable(ref):
        return ref
    module, _, name = ref.rpartition(".")
    return getattr(importlib.import_module(f"mhaexp.{module}"), name)
