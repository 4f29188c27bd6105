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
    """``conf/pruning/*.yaml`` as a checked object. Its defaults are the one table of defaults: an option's
    YAML states only what it changes (the README's configuration section).

    ``only`` names the kinds a key belongs to: ``pruning=l0 pruning.count=3`` is refused by name.
    """

    kind: str = setting(choice(*KINDS), "none")
    # importance: Michel et al. 2019 eq. 2, E_x |dL/d gate_h|; ablation: loss increase when the head alone
    # is gated to 0 (Michel et al. 2019, Tab. 1); random (seeded); entropy: most diffuse attention first;
    # role: keep heads holding a role (roles from the analysis). Re-ranked at every pruning step.
    criterion: str = setting(choice(*CRITERIA), "importance", only=RANKED)
    # global: one ranking over all heads; per_layer: every layer loses the same share
    scope: str = setting(choice(*SCOPES), "global", only=RANKED)
    # divide scores by their per-layer L2 norm before a global ranking (Michel et al. 2019, Sec. 4.2)
    normalize_by_layer: bool = setting(boolean(), False, only=RANKED)
    min_heads_per_layer: int = setting(positive_int(), 1, only=RANKED)  # no layer drops below this many live heads
    # heads to prune in all; wins over fraction
    count: int | None = setting(optional(non_negative_int()), None, only=RANKED)
    # else this share of all heads, in [0, 1), rounded to the nearest head (gradual: the final sparsity s_f)
    fraction: float | None = setting(optional(number(0.0, 1.0, high_open=True)), None, only=RANKED)
    # training step of the (first) pruning step (0 = before the first step); null = at the end of training
    at_step: int | None = setting(optional(non_negative_int()), None, only=("one_shot", "iterative"))
    # share of ALL heads pruned per iterative step (Michel et al. 2019 use 10%)
    step_fraction: float = setting(number(0.0, 1.0, low_open=True, high_open=True), 0.1, only=["iterative"])
    # training steps between pruning steps; 0 = all steps back to back (no fine-tuning)
    finetune_steps: int = setting(non_negative_int(), 0, only=["iterative"])
    # re-estimate the scores before every step (false: rank once, then follow that order)
    exact: bool = setting(boolean(), True, only=["iterative"])
    # stop below this validation accuracy; the step that crossed it is undone
    quality_floor: float | None = setting(optional(probability()), None, only=["iterative"])
    # quality_floor is a share of the unpruned accuracy (0.9 = keep 90%), else absolute
    floor_relative: bool = setting(boolean(), True, only=["iterative"])
    start_step: int = setting(non_negative_int(), 0, only=["gradual"])  # t0; before it nothing is pruned
    # t1; s_f is reached here (must be <= trainer.max_steps)
    end_step: int | None = setting(optional(positive_int()), None, only=["gradual"])
    every: int = setting(positive_int(), 1, only=["gradual"])  # dt: the target changes only every this many steps
    initial_fraction: float = setting(number(0.0, 1.0, high_open=True), 0.0, only=["gradual"])  # s_i, at t0
    # penalty weight lambda (Voita et al. sweep it to trade heads for quality)
    l0_lambda: float = setting(positive_number(), 0.01, only=["l0"])
    temperature: float = setting(positive_number(), L0_TEMPERATURE, only=["l0"])  # beta
    # (l, r): the sigmoid is stretched to (l, r) and clamped to [0, 1] (Louizos et al. 2018)
    stretch: tuple[float, float] = setting(STRETCH, L0_STRETCH, only=["l0"])
    # initial log alpha; >= log(11) = 2.398 starts every deterministic gate fully open
    log_alpha_init: float = setting(number(), 2.5, only=["l0"])
    # The gates' own learning rate (null: optim.lr). log_alpha starts at 2.5 and a gate closes below about
    # -2.4: at AdamW's step of ~lr per update that takes > 1600 steps at lr 3e-3, longer than a short fine-tune.
    gate_lr: float | None = setting(optional(positive_number()), None, only=["l0"])
    n_batches: int = setting(positive_int(), 4, only=PRUNING)  # held-out batches for rankings and quality
    max_rows: int = setting(positive_int(), 256, only=RANKED)  # ablation: sequences per batched forward
    seed: int = setting(integer(), 0, only=RANKED)  # random criterion and random tie-breaks
    # criterion=role: order within role holders and within the others
    role_tiebreak: str = setting(choice(*(c for c in CRITERIA if c != "role")), "random", only=RANKED)
    # at the end, write <run>/pruned.ckpt with the heads removed (mhaexp.pruning.surgery)
    physical: bool = setting(boolean(), True, only=PRUNING)
    # GQA groups left with unequal sizes: pad (keep removed heads gated 0) | split (copy K/V heads)
    uneven: str = setting(choice(*UNEVEN), "pad", only=PRUNING)

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
