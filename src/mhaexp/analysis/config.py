"""``conf/analysis/*.yaml`` as one checked object (no torch import: the CLI checks whole sweeps with it).

conf/analysis/default.yaml documents every key and holds every default; the dataclass defaults
below serve programmatic use only (the CLI builds with ``complete=True``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mhaexp.config import (
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
    probability,
    setting,
)

DIRECTIONS = ("auto", "predictive", "visible", "dep2head", "head2dep")
# Keys that were replaced, with what to write instead: an override naming one gets this, not "no such key".
REPLACED_KEYS = {
    "probe_batches": "replaced by analysis.probe_sequences (sequences, not batches: probe_batches=N read "
    "N x data.batch_size sequences) and analysis.step_probe_sequences (the per-step tier)",
}
FIGURE_FORMATS = ("png", "svg", "pdf")


@dataclass
class Thresholds:
    """The bars of :func:`mhaexp.analysis.roles.classify_heads`; the YAML cites each one's source."""

    positional: float = setting(probability(), 0.9)
    syntactic_margin: float = setting(probability(), 0.10)
    coreference_margin: float = setting(probability(), 0.10)
    induction: float = setting(probability(), 0.5)
    duplicate: float = setting(probability(), 0.5)
    copying: float = setting(number(-1.0, 1.0), 0.5)  # sum Re(l) / sum |l| lies in [-1, 1]
    sink: float = setting(probability(), 0.3)
    broad: float = setting(probability(), 0.9)
    rare_word: float = setting(probability(), 0.5)
    retrieval: float = setting(probability(), 0.1)
    streaming: float = setting(probability(), 0.9)

    def __post_init__(self) -> None:
        check_fields(self, "analysis.thresholds")


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
    position_baseline: bool = setting(boolean(), True)
    induction_sequences: int = setting(positive_int(), 256)
    js_sequences: int = setting(positive_int(), 16)
    streaming_window: int = setting(positive_int(), 16)
    figure_formats: list[str] = setting(list_of(choice(*FIGURE_FORMATS)), factory=lambda: ["png"])
    seed: int = setting(integer(), 0)
    treebank: str | None = setting(optional(existing_file("CoNLL-U treebank")), None)
    treebank_max_sentences: int | None = setting(optional(positive_int()), None)
    min_arcs: int = setting(positive_int(), 20)
    thresholds: Thresholds = setting(nested(Thresholds), factory=Thresholds)

    def __post_init__(self) -> None:
        if isinstance(self.thresholds, dict):  # programmatic use: AnalysisConfig(thresholds={...})
            self.thresholds = Thresholds(**self.thresholds)
        check_fields(self, "analysis")

    def to_dict(self) -> dict[str, Any]:
        """The plain mapping the metric glue (:mod:`mhaexp.analysis.collect`) reads."""
        return asdict(self)
