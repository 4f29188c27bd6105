"""``conf/analysis/*.yaml`` as one checked object (no torch import: the CLI checks whole sweeps with it).

conf/analysis/default.yaml documents every key and holds every default; the dataclass defaults
below serve programmatic use only (the CLI builds with ``complete=True``). The role thresholds' defaults
are read from the YAML itself (:func:`yaml_thresholds`).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, make_dataclass
from typing import Any

import yaml

from mhaexp.analysis.registry import bars
from mhaexp.config import (
    CONF_DIR,
    boolean,
    check_fields,
    choice,
    existing_file,
    integer,
    list_of,
    nested,
    non_negative_int,
    number,
    optional,
    positive_int,
    setting,
)

DIRECTIONS = ("auto", "predictive", "visible", "dep2head", "head2dep", "transposed")
ARC_KEYS = ("all", "words")
# Keys that were replaced, with what to write instead: an override naming one gets this, not "no such key".
REPLACED_KEYS = {
    "probe_batches": "replaced by analysis.probe_sequences (sequences, not batches: probe_batches=N read "
    "N x data.batch_size sequences) and analysis.step_probe_sequences (the per-step tier)",
}
FIGURE_FORMATS = ("png", "svg", "pdf")


def _thresholds_post_init(self: Any) -> None:
    check_fields(self, "analysis.thresholds")


def yaml_thresholds() -> dict[str, float]:
    """``analysis.thresholds`` of conf/analysis/default.yaml: the one home of every role bar's value."""
    return yaml.safe_load((CONF_DIR / "analysis" / "default.yaml").read_text(encoding="utf-8"))["thresholds"]


# The bars of :func:`mhaexp.analysis.roles.classify_heads`: one field per bar of the role registry
# (:data:`mhaexp.analysis.registry.ROLES`). Their defaults (programmatic use; the CLI composes the YAML)
# are read from conf/analysis/default.yaml, which cites each one's source: no second table of values.
_DEFAULTS = yaml_thresholds()
Thresholds = make_dataclass(
    "Thresholds",
    [(bar, float, setting(number(lo, hi), _DEFAULTS.get(bar, MISSING))) for bar, (lo, hi) in bars().items()],
    namespace={"__post_init__": _thresholds_post_init, "__module__": __name__},
)


@dataclass
class AnalysisConfig:
    """What the analysis callback computes and how often (see conf/analysis/default.yaml)."""

    enabled: bool = setting(boolean(), True)
    every_n_steps: int = setting(positive_int(), 100)
    max_pictures: int = setting(non_negative_int(), 8)
    probe_sequences: int = setting(positive_int(), 512)
    step_probe_sequences: int = setting(positive_int(), 64)
    max_offset: int = setting(positive_int(), 3)
    expensive_every: int = setting(non_negative_int(), 0)
    at_start: bool = setting(boolean(), True)
    direction: str = setting(choice(*DIRECTIONS), "auto")
    arc_keys: str = setting(choice(*ARC_KEYS), "all")
    position_baseline: bool = setting(boolean(), True)
    induction_sequences: int = setting(positive_int(), 256)
    js_sequences: int = setting(positive_int(), 16)
    streaming_window: int = setting(positive_int(), 16)
    massive_ratio: float = setting(number(1.0, low_open=True), 1000.0)
    figure_formats: list[str] = setting(list_of(choice(*FIGURE_FORMATS)), factory=lambda: ["png"])
    seed: int = setting(integer(), 0)
    treebank: str | None = setting(optional(existing_file("CoNLL-U treebank")), None)
    treebank_max_sentences: int | None = setting(optional(positive_int()), None)
    min_arcs: int = setting(positive_int(), 20)
    thresholds: Any = setting(nested(Thresholds), factory=Thresholds)

    def __post_init__(self) -> None:
        if isinstance(self.thresholds, dict):  # programmatic use: AnalysisConfig(thresholds={...})
            self.thresholds = Thresholds(**self.thresholds)
        check_fields(self, "analysis")

    def to_dict(self) -> dict[str, Any]:
        """The plain mapping the metric glue (:mod:`mhaexp.analysis.collect`) reads."""
        return asdict(self)
