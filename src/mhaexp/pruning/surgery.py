"""Physical head removal and MHA -> GQA/MQA conversion (reading and writing models: :mod:`mhaexp.nn.io`).

Physical removal
----------------
Removing query head ``h`` deletes its rows of ``qkv_proj``'s q part and its columns of ``o_proj``
(a removed K/V head: its rows of the k and v parts). Because
query head ``h`` reads K/V head ``h // group_size`` with one group size per layer, the heads that
survive in a layer must still come in equal-sized consecutive groups. The rule (per layer):

1. A K/V head is removed exactly when *all* query heads of its group are removed.
2. The surviving groups must have equal sizes. When they do not:

   * ``uneven="pad"`` (default): every surviving group is padded to the largest group's size with
     some of its *own* removed query heads, which are kept physically but gated to 0 (masked).
     K/V heads and the KV cache are never duplicated; the report lists the padded heads.
   * ``uneven="split"``: groups are cut into sub-groups of ``gcd`` of the surviving sizes, each
     with its own *copy* of the group's K/V head. No removed query head is kept, at the price of
     more K/V heads (a larger KV cache) than the pad layout.

3. A layer whose heads are all removed keeps its first head gated to 0 (a layer needs >= 1 head),
   which computes the same as no attention at all (only ``o_proj``'s bias remains).

Surviving heads keep their ``head_gate`` value, so a masked model (gates 0) and its physically
pruned copy compute the same function, to float rounding.

GQA conversion (Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models
from Multi-Head Checkpoints", Sec. 2.1): K and V projection heads of each group are mean-pooled
into the group's single head (query head ``h`` -> group ``h // (n_heads / g)``); ``first`` keeps
the group's first head, ``random`` re-initializes K/V. Going the other way (fewer to more K/V heads)
copies each K/V head to every new head of its group, which computes the same function.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from mhaexp.checkpoint import atomic_save, read_checkpoint
from mhaexp.errors import ConfigError
from mhaexp.nn.attention import FUSED_QKV, qkv_sizes
from mhaexp.nn.config import check_same_architecture
from mhaexp.nn.gates import fold_l0_state
from mhaexp.nn.io import checkpoint_for, load_model, provenance, state_shapes
from mhaexp.nn.model import ModelConfig, Transformer
from mhaexp.nn.shapes import divisors, group_size
from mhaexp.pruning.config import GQA_INITS, UNEVEN

Head = tuple[int, int]


def parse_heads(spec: str | Iterable[Any], field_name: str = "heads") -> list[Head]:
    """``"L0H1,L1H3"`` or ``"0:1,1:3"`` (or a list of either, or of pairs) -> sorted unique ``(layer, head)``."""
    items: list[Any]
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = list(spec)
    heads = set()
    for item in items:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            heads.add((int(item[0]), int(item[1])))
            continue
        text = str(item).strip().upper()
        try:
            if text.startswith("L") and "H" in text:
                layer, head = text[1:].split("H", 1)
            else:
                layer, head = text.split(":", 1)
            heads.add((int(layer), int(head)))
        except ValueError:
            raise ConfigError(field_name, spec, f"cannot read {item!r}; write heads as L0H1,L1H3 or 0:1,1:3") from None
    return sorted(heads)


def format_heads(heads: Iterable[Head]) -> str:
    """``[(0, 1), (1, 3)] -> "L0H1,L1H3"``."""
    return ",".join(f"L{layer}H{head}" for layer, head in sorted(heads))


def check_heads_exist(heads: Iterable[Head], sizes: Sequence[int], field_name: str = "heads") -> None:
    """ConfigError if a head is outside the model (layer and head ranges named)."""
    for layer, head in heads:
        if not 0 <= layer < len(sizes):
            raise ConfigError(field_name, f"L{layer}H{head}", f"layer must be in 0..{len(sizes) - 1}")
        if not 0 <= head < sizes[layer]:
            raise ConfigError(field_name, f"L{layer}H{head}", f"layer {layer} has heads 0..{sizes[layer] - 1}")


def check_layers_keep_a_head(heads: Iterable[Head], sizes: Sequence[int], field_name: str = "heads") -> None:
    """ConfigError if ``heads`` empties a layer: its attention would be gone (training refuses the same
    through ``pruning.min_heads_per_layer``, at least 1)."""
    removed = set(heads)
    for layer, n in enumerate(sizes):
        if all((layer, h) in removed for h in range(n)):
            raise ConfigError(
                field_name,
                format_heads(sorted(removed)),
                f"removes all {n} heads of layer {layer}; keep at least one head in every layer",
            )


def masked_heads(model: Transformer) -> list[Head]:
    """Heads whose ``head_gate`` is exactly 0."""
    return [
        (i, h)
        for i, layer in enumerate(model.attention_layers)
        for h in range(layer.n_heads)
        if float(layer.head_gate[h]) == 0.0
    ]


@torch.no_grad()
def apply_mask(model: Transformer, heads: Iterable[Head]) -> None:
    """Gate ``heads`` to 0 (masking: the weights stay, the heads contribute nothing)."""
    layers = model.attention_layers
    for layer, head in heads:
        layers[layer].head_gate[head] = 0.0


# ---------------------------------------------------------------------------------------------
# Physical removal
# ---------------------------------------------------------------------------------------------


@dataclass
class LayerPlan:
    """Where each head of a pruned layer comes from.

    ``q_src[i]`` is the source query head of new head ``i`` and ``q_gate[i]`` its gate;
    ``kv_src[j]`` the source K/V head of new K/V head ``j``. New head ``i`` reads new K/V head
    ``i // (len(q_src) // len(kv_src))``, which is ``kv_src``'s copy of its source group.
    """

    n_heads: int
    n_kv_heads: int
    q_src: list[int]
    q_gate: list[float]
    kv_src: list[int]
    removed: list[int] = field(default_factory=list)  # source query heads that are gone
    padded: list[int] = field(default_factory=list)  # removed but kept physically, gated 0
    kv_removed: list[int] = field(default_factory=list)
    kv_duplicated: list[int] = field(default_factory=list)

    @property
    def new_heads(self) -> tuple[int, int]:
        return len(self.q_src), len(self.kv_src)


def plan_layer(
    n_heads: int,
    n_kv_heads: int,
    remove: Iterable[int],
    gates: Sequence[float] | Tensor | None = None,
    uneven: str = "pad",
) -> LayerPlan:
    """The GQA-aware layout of one layer after removing query heads ``remove`` (see module docstring)."""
    if uneven not in UNEVEN:
        raise ConfigError("uneven", uneven, f"choose one of {list(UNEVEN)}")
    gates = [1.0] * n_heads if gates is None else [float(g) for g in gates]
    gone = set(remove)
    size = group_size(n_heads, n_kv_heads)
    groups = [list(range(j * size, (j + 1) * size)) for j in range(n_kv_heads)]
    keep = [[h for h in grp if h not in gone] for grp in groups]
    plan = LayerPlan(n_heads, n_kv_heads, [], [], [], removed=sorted(gone))
    live = [j for j in range(n_kv_heads) if keep[j]]
    if not live:
        # A layer needs a head; its first one, gated 0, adds nothing but o_proj's bias, as before.
        plan.q_src, plan.q_gate, plan.kv_src, plan.padded = [0], [0.0], [0], [0]
    elif uneven == "pad":
        width = max(len(keep[j]) for j in live)
        for j in live:
            pad = [h for h in groups[j] if h in gone][: width - len(keep[j])]
            plan.q_src += keep[j] + pad
            plan.q_gate += [gates[h] for h in keep[j]] + [0.0] * len(pad)
            plan.kv_src.append(j)
            plan.padded += pad
    else:
        width = functools.reduce(math.gcd, [len(keep[j]) for j in live])
        for j in live:
            for start in range(0, len(keep[j]), width):
                plan.q_src += keep[j][start : start + width]
                plan.q_gate += [gates[h] for h in keep[j][start : start + width]]
                plan.kv_src.append(j)
        plan.kv_duplicated = sorted({j for j in plan.kv_src if plan.kv_src.count(j) > 1})
    plan.kv_removed = [j for j in range(n_kv_heads) if j not in plan.kv_src]
    plan.padded.sort()
    return plan


def _rows(t: Tensor, heads: Sequence[int], hs: int) -> Tensor:
    """Rows of ``t`` (dim 0) belonging to ``heads``, each ``hs`` rows, in the given order."""
    return t.view(-1, hs, *t.shape[1:])[list(heads)].reshape(len(heads) * hs, *t.shape[1:])


def prune_layer_state(state: dict[str, Tensor], prefix: str, plan: LayerPlan, head_dim: int) -> dict[str, Tensor]:
    """Apply ``plan`` to one attention layer's tensors in a model ``state_dict`` (returns a new dict)."""
    out = dict(state)
    hs = head_dim
    nh, nkv = plan.n_heads, plan.n_kv_heads
    # qkv_proj's rows are head_dim-row blocks: query heads 0..nh-1, then K heads, then V heads.
    blocks = [*plan.q_src, *(nh + j for j in plan.kv_src), *(nh + nkv + j for j in plan.kv_src)]
    for kind in ("weight", "bias"):
        key = f"{prefix}{FUSED_QKV}.{kind}"
        if key in state:
            out[key] = _rows(state[key], blocks, hs)
    w_o = state[prefix + "o_proj.weight"]  # (d, nh*hs): a head's columns
    out[prefix + "o_proj.weight"] = _rows(w_o.t(), plan.q_src, hs).t().contiguous()
    gate = state[prefix + "head_gate"]
    out[prefix + "head_gate"] = torch.tensor(plan.q_gate, dtype=gate.dtype, device=gate.device)
    return out


def pruned_config(cfg: ModelConfig, plans: Sequence[LayerPlan]) -> ModelConfig:
    """``cfg`` with per-layer head counts from ``plans`` and an explicit ``head_dim``."""
    d = asdict(cfg)
    d["head_dim"] = cfg.head_dim  # resolved: must not be re-derived from d_model // n_heads
    d["layer_n_heads"] = [p.new_heads[0] for p in plans]
    d["layer_n_kv_heads"] = [p.new_heads[1] for p in plans]
    return ModelConfig(**d)


@dataclass
class PruneReport:
    """What physical removal did, layer by layer (JSON-friendly via :meth:`to_dict`)."""

    removed: list[Head]
    padded: list[Head]
    layers: list[dict[str, Any]]
    params_before: int
    params_after: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": format_heads(self.removed),
            "padded": format_heads(self.padded),
            "layers": self.layers,
            "params_before": self.params_before,
            "params_after": self.params_after,
        }

    def summary(self) -> str:
        lines = []
        for row in self.layers:
            line = (
                f"L{row['layer']}: heads {row['heads_before']} -> {row['heads_after']}, "
                f"kv heads {row['kv_heads_before']} -> {row['kv_heads_after']}"
            )
            if row["padded"]:
                line += f" (kept gated 0 to keep groups equal: {row['padded']})"
            lines.append(line)
        lines.append(f"parameters: {self.params_before} -> {self.params_after}")
        return "\n".join(lines)


def prune_model_state(
    state: dict[str, Tensor], cfg: ModelConfig, heads: Iterable[Head], uneven: str = "pad"
) -> tuple[dict[str, Tensor], ModelConfig, list[LayerPlan]]:
    """Physical removal on a model ``state_dict`` (keys without ``model.``): new state, config, plans."""
    state = fold_l0_state(state)
    heads = list(heads)
    sizes = [cfg.heads_in_layer(i)[0] for i in range(cfg.n_layers)]
    check_heads_exist(heads, sizes)
    plans = []
    for i in range(cfg.n_layers):
        nh, nkv = cfg.heads_in_layer(i)
        prefix = f"blocks.{i}.attn."
        plan = plan_layer(nh, nkv, [h for layer, h in heads if layer == i], state[prefix + "head_gate"], uneven)
        state = prune_layer_state(state, prefix, plan, cfg.head_dim)
        plans.append(plan)
    return state, pruned_config(cfg, plans), plans


def prune_heads(model: Transformer, heads: Iterable[Head], uneven: str = "pad") -> tuple[Transformer, PruneReport]:
    """A new, smaller :class:`Transformer` without ``heads`` (``model`` is left as it is).

    The new model computes what ``model`` computes with ``heads`` gated to 0 (see the module
    docstring for the GQA rule and the heads kept gated 0). L0 gates still attached are folded in
    first (deterministic gates).
    """
    heads = sorted(set(heads))
    p = next(model.parameters())
    state, cfg, plans = prune_model_state(model.state_dict(), model.cfg, heads, uneven)
    new = Transformer(cfg).to(device=p.device, dtype=p.dtype)
    new.load_state_dict(state)
    new.train(model.training)
    layers = []
    padded = []
    for i, plan in enumerate(plans):
        layers.append(
            {
                "layer": i,
                "heads_before": plan.n_heads,
                "heads_after": plan.new_heads[0],
                "kv_heads_before": plan.n_kv_heads,
                "kv_heads_after": plan.new_heads[1],
                "removed": plan.removed,
                "padded": plan.padded,
                "kv_removed": plan.kv_removed,
                "kv_duplicated": plan.kv_duplicated,
            }
        )
        padded += [(i, h) for h in plan.padded]
    report = PruneReport(heads, padded, layers, model.param_counts()["total"], new.param_counts()["total"])
    return new, report


# ---------------------------------------------------------------------------------------------
# K/V head conversion (GQA / MQA)
# ---------------------------------------------------------------------------------------------


def convert_kv(
    t: Tensor,
    n_src: int,
    n_tgt: int,
    head_dim: int,
    init: str = "mean",
    generator: torch.Generator | None = None,
    is_bias: bool = False,
    name: str = "qkv_proj (k)",
) -> Tensor:
    """K or V projection rows (``n_src * head_dim``, ...) -> (``n_tgt * head_dim``, ...).

    Fewer heads: group ``t`` pools source heads ``t*r .. t*r + r - 1`` (``r = n_src / n_tgt``), by
    ``mean``, ``first`` or ``random`` (normal(0, 0.02) weights, zero biases, as at model init).
    More heads: each source head is copied to the ``n_tgt / n_src`` heads that replace it.
    """
    if init not in GQA_INITS:
        raise ConfigError("gqa_init", init, f"choose one of {list(GQA_INITS)}")
    if n_src == n_tgt:
        return t.clone()
    rest = t.shape[1:]
    heads = t.reshape(n_src, head_dim, *rest)
    if n_src % n_tgt == 0:
        grouped = heads.reshape(n_tgt, n_src // n_tgt, head_dim, *rest)
        if init == "mean":
            out = grouped.mean(dim=1)
        elif init == "first":
            out = grouped[:, 0]
        else:
            out = (
                torch.zeros_like(grouped[:, 0])
                if is_bias
                else torch.empty_like(grouped[:, 0]).normal_(0.0, 0.02, generator=generator)
            )
    elif n_tgt % n_src == 0:
        out = heads.repeat_interleave(n_tgt // n_src, dim=0)
    else:
        raise ConfigError(
            "model.n_kv_heads",
            n_tgt,
            f"cannot convert {name} from {n_src} K/V heads: the new count must divide {n_src} or be a multiple of it",
        )
    return out.reshape(n_tgt * head_dim, *rest).contiguous()


def convert_to_gqa(model: Transformer, n_kv_heads: int, init: str = "mean", seed: int = 0) -> Transformer:
    """A copy of ``model`` with ``n_kv_heads`` K/V heads in every layer (Ainslie et al. 2023 mean-pooling)."""
    d = asdict(model.cfg)
    d.update(n_kv_heads=n_kv_heads, layer_n_kv_heads=None)
    if d["layer_n_heads"] is not None:
        d["layer_n_kv_heads"] = [n_kv_heads] * model.cfg.n_layers
    cfg = ModelConfig(**d)  # ConfigError (model.n_kv_heads) when it does not divide n_heads
    p = next(model.parameters())
    new = Transformer(cfg).to(device=p.device, dtype=p.dtype)
    state = convert_state(model.state_dict(), model.cfg, cfg, state_shapes(new), init, seed, "model", "<in memory>")
    new.load_state_dict(state)
    return new


def convert_state(
    src: dict[str, Tensor],
    src_cfg: ModelConfig,
    tgt_cfg: ModelConfig,
    tgt_shapes: dict[str, tuple[int, ...]],
    gqa_init: str = "mean",
    seed: int = 0,
    field_name: str = "init_from",
    source: str = "",
) -> dict[str, Tensor]:
    """Source model state -> a state for ``tgt_cfg``, converting K/V heads where the counts differ.

    Raises ConfigError (``field_name=source``) naming the first parameter whose shape cannot match
    and both shapes, and one naming an option (``model.mlp``, ...) in which the configs differ.
    """
    if gqa_init not in GQA_INITS:
        raise ConfigError("gqa_init", gqa_init, f"choose one of {list(GQA_INITS)}")
    check_same_architecture(src_cfg, tgt_cfg, source)
    src = fold_l0_state(src)
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, Tensor] = {}
    if src_cfg.n_layers != tgt_cfg.n_layers:
        raise ConfigError("model.n_layers", tgt_cfg.n_layers, f"the checkpoint {source} has {src_cfg.n_layers} layers")
    for key, shape in tgt_shapes.items():
        if key not in src:
            raise ConfigError(
                field_name,
                source,
                f"parameter {key} is missing from the checkpoint (compare model.* with the checkpoint's config)",
            )
        value = src[key]
        parts = key.split(".")
        if len(parts) == 5 and parts[0] == "blocks" and parts[2] == "attn" and parts[3] == FUSED_QKV:
            layer = int(parts[1])
            (nh_s, nkv_s), (nh_t, nkv_t) = src_cfg.heads_in_layer(layer), tgt_cfg.heads_in_layer(layer)
            hs = tgt_cfg.head_dim
            if (
                nkv_s != nkv_t
                and nh_s == nh_t
                and src_cfg.head_dim == hs
                and value.shape[0] == sum(qkv_sizes(nh_s, nkv_s, hs))
            ):
                if nh_t % nkv_t:
                    raise ConfigError("model.n_kv_heads", nkv_t, f"must divide n_heads={nh_t}: {divisors(nh_t)}")
                q, k, v = value.split(qkv_sizes(nh_s, nkv_s, hs), dim=0)
                is_bias = parts[4] == "bias"
                k, v = (
                    convert_kv(t, nkv_s, nkv_t, hs, gqa_init, gen, is_bias=is_bias, name=f"{key} ({which})")
                    for t, which in ((k, "k"), (v, "v"))
                )
                value = torch.cat([q, k, v])
        if tuple(value.shape) != tuple(shape):
            raise ConfigError(
                field_name,
                source,
                f"parameter {key} has shape {tuple(value.shape)} in the checkpoint "
                f"but {tuple(shape)} in the model being built (check model.* against the checkpoint)",
            )
        out[key] = value
    extra = sorted(set(src) - set(tgt_shapes))
    if extra:
        raise ConfigError(
            field_name,
            source,
            f"parameter {extra[0]} is in the checkpoint but not in the model "
            f"being built ({len(extra)} such; check model.* against the checkpoint's config)",
        )
    return out


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def prune_checkpoint(
    path: str | os.PathLike[str], heads: Iterable[Head] | None, out: str | os.PathLike[str], uneven: str = "pad"
) -> PruneReport:
    """Physically remove ``heads`` (``None``: the heads masked in the checkpoint) and save to ``out``."""
    ckpt = read_checkpoint(path, "ckpt")
    model = load_model(path)
    given = heads is not None
    heads = masked_heads(model) if heads is None else list(heads)
    sizes = [layer.n_heads for layer in model.attention_layers]
    check_heads_exist(heads, sizes)
    check_layers_keep_a_head(heads, sizes, "heads" if given else "ckpt")
    new, report = prune_heads(model, heads, uneven)
    meta = {"pruned_from": str(path), "pruning": report.to_dict(), **provenance(ckpt, path)}
    atomic_save(checkpoint_for(new, ckpt, extra=meta), out)
    return report
