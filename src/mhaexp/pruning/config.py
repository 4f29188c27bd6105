"""The pruning config (``conf/pruning/*.yaml``) as a checked object, and its check against the model.

Nothing here imports torch, so ``mhaexp-train`` can check every job of a sweep with :class:`PruningConfig`
and :func:`validate_pruning` cheaply. What each kind does is its schedule's (:mod:`mhaexp.pruning.schedules`,
whose registry gives the ranked kinds) or the L0 gates' (:mod:`mhaexp.pruning.l0`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mhaexp.config import (
    Check,
    boolean,
    build,
    check_fields,
    choice,
    integer,
    non_negative_int,
    number,
    optional,
    positive_int,
    positive_number,
    probability,
    setting,
)
from mhaexp.errors import ConfigError
from mhaexp.pruning.schedules import CRITERIA, SCHEDULES, SCOPES, fraction_to_count, max_prunable

if TYPE_CHECKING:  # torch stays unimported: the CLI validates whole sweeps with this module
    from mhaexp.nn.config import ModelConfig

UNEVEN = ("pad", "split")
# Voita et al. 2019, Sec. 6.1, after Louizos et al. 2018: beta = 1/3, stretch (l, r) = (-0.1, 1.1).
L0_TEMPERATURE = 1.0 / 3.0
L0_STRETCH = (-0.1, 1.1)

# ---------------------------------------------------------------------------------------------
# the config (conf/pruning/*.yaml) and its validation
# ---------------------------------------------------------------------------------------------

RANKED = tuple(SCHEDULES)  # the kinds that rank heads and prune a target count
KINDS = ("none", *RANKED, "l0")
PRUNING = (*RANKED, "l0")
# How init_from's K/V heads become fewer (Ainslie et al. 2023 mean-pool them); read by mhaexp.pruning.surgery.
GQA_INITS = ("mean", "first", "random")
STRETCH = Check(
    lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_num(x) for x in v) and v[0] < 0 and v[1] > 1,
    "must be [l, r] with l < 0 and r > 1, e.g. [-0.1, 1.1]",
    [0.1, 1.1],
)


@dataclass
class PruningConfig:
    """``conf/pruning/*.yaml`` as a checked object; the YAML files document every key.

    ``only`` names the kinds a key belongs to: ``pruning=l0 pruning.count=3`` is refused by name.
    """

    kind: str = setting(choice(*KINDS), "none")
    criterion: str = setting(choice(*CRITERIA), "importance", only=RANKED)
    scope: str = setting(choice(*SCOPES), "global", only=RANKED)
    normalize_by_layer: bool = setting(boolean(), False, only=RANKED)
    min_heads_per_layer: int = setting(positive_int(), 1, only=RANKED)
    # heads to prune in all; wins over fraction
    count: int | None = setting(optional(non_negative_int()), None, only=RANKED)
    fraction: float | None = setting(optional(number(0.0, 1.0, high_open=True)), None, only=RANKED)
    # first pruning step; null = end of training
    at_step: int | None = setting(optional(non_negative_int()), None, only=("one_shot", "iterative"))
    step_fraction: float = setting(number(0.0, 1.0, low_open=True, high_open=True), 0.1, only=["iterative"])
    finetune_steps: int = setting(non_negative_int(), 0, only=["iterative"])
    exact: bool = setting(boolean(), True, only=["iterative"])
    quality_floor: float | None = setting(optional(probability()), None, only=["iterative"])
    floor_relative: bool = setting(boolean(), True, only=["iterative"])
    start_step: int = setting(non_negative_int(), 0, only=["gradual"])  # t0
    end_step: int | None = setting(optional(positive_int()), None, only=["gradual"])  # t1
    every: int = setting(positive_int(), 1, only=["gradual"])  # dt
    initial_fraction: float = setting(number(0.0, 1.0, high_open=True), 0.0, only=["gradual"])  # s_i
    l0_lambda: float = setting(positive_number(), 0.01, only=["l0"])
    temperature: float = setting(positive_number(), L0_TEMPERATURE, only=["l0"])
    stretch: tuple[float, float] = setting(STRETCH, L0_STRETCH, only=["l0"])
    log_alpha_init: float = setting(number(), 2.5, only=["l0"])
    gate_lr: float | None = setting(optional(positive_number()), None, only=["l0"])
    n_batches: int = setting(positive_int(), 4, only=PRUNING)  # held-out batches for rankings and quality
    max_rows: int = setting(positive_int(), 256, only=RANKED)  # ablation: sequences per batched forward
    seed: int = setting(integer(), 0, only=RANKED)  # random criterion and random tie-breaks
    role_tiebreak: str = setting(choice(*(c for c in CRITERIA if c != "role")), "random", only=RANKED)
    physical: bool = setting(boolean(), True, only=PRUNING)  # write pruned.ckpt with the heads removed at the end
    uneven: str = setting(choice(*UNEVEN), "pad", only=PRUNING)  # GQA groups left unequal: pad or split

    def __post_init__(self) -> None:
        check_fields(self, "pruning")
        self.stretch = (float(self.stretch[0]), float(self.stretch[1]))

    def target_count(self, total: int) -> int:
        """Heads pruned in all at the end of a one_shot / iterative / gradual schedule."""
        if self.count is not None:
            return int(self.count)
        return fraction_to_count(float(self.fraction or 0.0), total)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def validate_pruning(
    pruning_cfg: PruningConfig | Mapping[str, Any] | None, model_cfg: ModelConfig, max_steps: int
) -> PruningConfig:
    """Check the pruning config against the model and ``trainer.max_steps``; one ConfigError line per problem.

    Each field's own domain is checked when the PruningConfig is built; this adds what needs the model
    or the schedule's length. ``mhaexp.training.config.RunConfig`` calls it once per job.
    """
    cfg = pruning_cfg if isinstance(pruning_cfg, PruningConfig) else build(PruningConfig, pruning_cfg or {}, "pruning")
    kind = cfg.kind
    if kind == "none":
        return cfg

    def need(name: str, ok: bool, valid: str) -> None:
        if not ok:
            raise ConfigError(f"pruning.{name}", getattr(cfg, name), valid)

    sizes = [model_cfg.heads_in_layer(i)[0] for i in range(model_cfg.n_layers)]
    total = sum(sizes)
    need(
        "min_heads_per_layer",
        cfg.min_heads_per_layer <= min(sizes),
        f"must be an integer from 1 to {min(sizes)} (the smallest layer's head count)",
    )

    if kind == "l0":
        for name in ("count", "fraction", "at_step"):
            need(name, getattr(cfg, name) is None, "must be null for kind=l0 (the penalty decides how many heads go)")
        return cfg

    # one_shot / iterative / gradual: how many heads in all
    if cfg.count is None and cfg.fraction is None:
        raise ConfigError("pruning.count", None, f"kind={kind} needs pruning.count (heads) or pruning.fraction")
    if cfg.count is not None:
        need("count", cfg.count <= total, f"cannot prune more heads than the model has ({total}: {sizes} per layer)")
    target = cfg.target_count(total)
    prunable = max_prunable(sizes, cfg.min_heads_per_layer)
    if target > prunable:
        what = f"count={cfg.count}" if cfg.count is not None else f"fraction={cfg.fraction} of {total} = {target}"
        raise ConfigError(
            "pruning.min_heads_per_layer",
            cfg.min_heads_per_layer,
            f"impossible for the target ({what} heads): keeping it in each layer of {sizes} leaves "
            f"only {prunable} prunable",
        )
    SCHEDULES[kind].validate(cfg, total, target, max_steps, need)
    return cfg
