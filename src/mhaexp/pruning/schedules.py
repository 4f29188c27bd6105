"""When to prune how many heads, and which: pure step math; and the pruning config, checked.

Nothing here imports torch at module level (scores may be tensors or lists), so
``mhaexp-train`` can check every job of a sweep with :class:`PruningConfig` and :func:`validate_pruning` cheaply.

Heads are named ``(layer, head)``. Every schedule is stated as a *target count* of pruned heads
that never decreases over training; the callback prunes the lowest-scoring live heads until the
model reaches it. Counts come from fractions by rounding to the nearest head
(:func:`fraction_to_count`).

* one-shot: 0 before ``at_step``, ``K`` from then on.
* iterative (Michel et al. 2019, "Are Sixteen Heads Really Better than One?", Sec. 4.2 / Fig. 3):
  ``K_i = min(K, i * d)`` after the i-th pruning step, ``d = round(step_fraction * H)`` heads per
  step, steps ``finetune_steps`` apart starting at ``at_step``.
* gradual (Zhu & Gupta 2017, "To prune, or not to prune", eq. 1):
  ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3`` for ``t in {t0, t0 + dt, ..., t0 + n dt}``;
  the sparsity rises fast at first and flattens towards ``s_f`` at ``t1 = t0 + n dt``.

``min_heads_per_layer`` (>= 1) is a floor every selection respects; ``scope`` is ``global`` (one
ranking over all heads) or ``per_layer`` (every layer loses the same share of its heads, its
lowest-scoring ones).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
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

if TYPE_CHECKING:  # torch stays unimported: the CLI validates whole sweeps with this module
    from torch import Tensor

    from mhaexp.nn.config import ModelConfig

Head = tuple[int, int]
SCOPES = ("global", "per_layer")
CRITERIA = ("importance", "ablation", "random", "entropy", "role")
UNEVEN = ("pad", "split")
# Voita et al. 2019, Sec. 6.1, after Louizos et al. 2018: beta = 1/3, stretch (l, r) = (-0.1, 1.1).
L0_TEMPERATURE = 1.0 / 3.0
L0_STRETCH = (-0.1, 1.1)


def fraction_to_count(fraction: float, total: int) -> int:
    """Heads pruned for a fraction of ``total``: the nearest whole number (halves round up)."""
    return int(math.floor(fraction * total + 0.5))


def max_prunable(layer_sizes: Sequence[int], min_heads_per_layer: int) -> int:
    """Most heads that can go while every layer keeps ``min_heads_per_layer``."""
    return sum(max(0, n - min_heads_per_layer) for n in layer_sizes)


def one_shot_target(step: int, at_step: int, count: int) -> int:
    """Target pruned count at ``step`` of a one-shot schedule that prunes ``count`` heads at ``at_step``."""
    return count if step >= at_step else 0


def iterative_counts(total: int, step_fraction: float, target: int) -> list[int]:
    """Cumulative pruned counts after each iterative step (Michel et al. 2019): ``d, 2d, ..., target``.

    ``d = max(1, round(step_fraction * total))``; the last step is cut to land on ``target``.
    """
    d = max(1, fraction_to_count(step_fraction, total))
    return [min(target, d * i) for i in range(1, math.ceil(target / d) + 1)] if target > 0 else []


def iterative_steps(at_step: int, n_iterations: int, finetune_steps: int) -> list[int]:
    """Training steps at which each iterative pruning step runs: ``at_step + i * finetune_steps``."""
    return [at_step + i * finetune_steps for i in range(n_iterations)]


def gradual_fraction(
    step: int, start_step: int, end_step: int, final_fraction: float, initial_fraction: float = 0.0, every: int = 1
) -> float:
    """Zhu & Gupta 2017's cubic sparsity at ``step``.

    Zero before ``start_step``; from there ``s_f + (s_i - s_f)(1 - p)^3`` with
    ``p = floor((step - t0) / dt) * dt / (t1 - t0)`` clipped to 1, so the value changes only every
    ``every`` (``dt``) steps and reaches ``final_fraction`` at ``end_step``.
    """
    if step < start_step:
        return 0.0
    span = max(1, end_step - start_step)
    done = ((step - start_step) // every) * every
    p = 1.0 if step >= end_step else min(1.0, done / span)
    return final_fraction + (initial_fraction - final_fraction) * (1.0 - p) ** 3


def gradual_target(
    step: int,
    total: int,
    start_step: int,
    end_step: int,
    final_count: int,
    initial_fraction: float = 0.0,
    every: int = 1,
) -> int:
    """Target pruned count at ``step`` for the cubic schedule ending at ``final_count`` heads."""
    final_fraction = final_count / total
    f = gradual_fraction(step, start_step, end_step, final_fraction, initial_fraction, every)
    return min(final_count, fraction_to_count(f, total))


def allocate_per_layer(count: int, layer_sizes: Sequence[int], min_heads_per_layer: int) -> list[int]:
    """Split ``count`` pruned heads over layers in proportion to their sizes (largest remainder).

    Each layer gets ``floor(count * n_l / H)``; the heads left over go to the layers with the
    largest fractional parts (lower layer first on ties), never past ``n_l - min_heads_per_layer``.
    """
    caps = [max(0, n - min_heads_per_layer) for n in layer_sizes]
    if count > sum(caps):
        raise ValueError(f"cannot prune {count} heads keeping {min_heads_per_layer} per layer of {list(layer_sizes)}")
    total = sum(layer_sizes)
    quotas = [count * n / total for n in layer_sizes]
    alloc = [min(cap, math.floor(q)) for q, cap in zip(quotas, caps, strict=True)]
    order = sorted(range(len(layer_sizes)), key=lambda i: (-(quotas[i] - math.floor(quotas[i])), i))
    left = count - sum(alloc)
    while left > 0:  # terminates: count <= sum(caps)
        for i in order:
            if left and alloc[i] < caps[i]:
                alloc[i] += 1
                left -= 1
    return alloc


def select_heads(
    scores: Sequence[Tensor],
    pruned: Iterable[Head],
    target: int,
    scope: str = "global",
    min_heads_per_layer: int = 1,
    normalize: bool = False,
) -> list[Head]:
    """The live heads to prune next so that ``target`` heads are pruned in all, lowest score first.

    Args:
        scores: one 1-D tensor per layer; higher = more important (kept longer).
        pruned: heads already pruned; they stay pruned.
        target: total pruned heads wanted afterwards (across layers).
        scope: ``global`` ranks all heads together; ``per_layer`` first splits ``target`` over layers
            with :func:`allocate_per_layer` and ranks within each layer.
        min_heads_per_layer: no layer drops below this many live heads; a global selection skips a
            full layer's heads and goes on to the next-lowest elsewhere.
        normalize: apply :func:`normalize_by_layer` first.

    Ties are broken by (layer, head), so a selection is a function of its inputs. Returns the new
    heads, sorted.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    dead = set(pruned)
    sizes = [len(s) for s in scores]
    if normalize:
        import torch

        from mhaexp.heads.importance import normalize_by_layer  # torch: this module stays light for preflight

        live = [torch.tensor([(i, h) not in dead for h in range(len(s))]) for i, s in enumerate(scores)]
        scores = normalize_by_layer(scores, live)
    live = [n - sum((i, h) in dead for h in range(n)) for i, n in enumerate(sizes)]
    chosen: list[Head] = []

    def ranked(layers: Iterable[int]) -> list[Head]:
        cand = [(float(scores[i][h]), i, h) for i in layers for h in range(sizes[i]) if (i, h) not in dead]
        return [(i, h) for _, i, h in sorted(cand)]

    if scope == "global":
        need = target - len(dead)
        for i, h in ranked(range(len(sizes))):
            if need <= 0:
                break
            if live[i] > min_heads_per_layer:
                chosen.append((i, h))
                live[i] -= 1
                need -= 1
    else:
        alloc = allocate_per_layer(min(target, max_prunable(sizes, min_heads_per_layer)), sizes, min_heads_per_layer)
        for i in range(len(sizes)):
            need = alloc[i] - (sizes[i] - live[i])
            for head in ranked([i])[: max(0, min(need, live[i] - min_heads_per_layer))]:
                chosen.append(head)
    return sorted(chosen)


# ---------------------------------------------------------------------------------------------
# the config (conf/pruning/*.yaml) and its validation
# ---------------------------------------------------------------------------------------------

KINDS = ("none", "one_shot", "iterative", "gradual", "l0")
RANKED = ("one_shot", "iterative", "gradual")  # the kinds that rank heads and prune a target count
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
    if kind in ("one_shot", "iterative"):
        need(
            "at_step",
            cfg.at_step is None or cfg.at_step <= max_steps,
            f"must be a step in 0..trainer.max_steps={max_steps}, or null for the end of training",
        )
    if kind == "iterative":
        n = len(iterative_counts(total, cfg.step_fraction, target))
        if cfg.at_step is not None and cfg.finetune_steps > 0:
            end = cfg.at_step + n * cfg.finetune_steps
            need(
                "finetune_steps",
                end <= max_steps,
                f"the schedule ({n} pruning steps from step {cfg.at_step}, {cfg.finetune_steps} steps apart) ends "
                f"at step {end}, after trainer.max_steps={max_steps}",
            )
        if cfg.at_step is None:
            need(
                "finetune_steps",
                cfg.finetune_steps == 0,
                "must be 0 when pruning.at_step is null (pruning at the end of training leaves no steps to fine-tune)",
            )
    if kind == "gradual":
        need(
            "end_step",
            cfg.end_step is not None and cfg.end_step > cfg.start_step,
            f"must be an integer > pruning.start_step={cfg.start_step}",
        )
        need("end_step", cfg.end_step <= max_steps, f"the schedule must end by trainer.max_steps={max_steps}")
        need(
            "initial_fraction",
            cfg.initial_fraction <= target / total,
            f"must be in [0, final fraction={target / total:.3g}]",
        )
    return cfg
