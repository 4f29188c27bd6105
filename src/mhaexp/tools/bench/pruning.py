"""Benchmark section ``pruning``: attention forward + backward after physically removing half the heads.

Run with ``python -m mhaexp.tools.bench --sections pruning`` (the harness imports this module as the
section). For each of the bench's attention shapes, an MHA layer and a GQA layer (``n_heads / 4``
K/V heads) are timed unpruned, masked (half the gates at 0: same cost as unpruned, for
orientation) and physically pruned, interleaved as every section is. Heads are removed evenly from
every K/V group, so the GQA layout shrinks without padding.

Target: ``pruned/unpruned <= 0.6`` at 50% of heads removed. The work of the q/k/v/o projections
and of the attention itself is proportional to the head count, so the ideal is 0.5; the rest is
fixed per-call cost. On a GPU the attention section's small shapes are bound by kernel launches
(about 1.5 ms per fwd+bwd on an H200 whatever the head count), so there they are reported without
a target; the GPT-2-sized shapes carry it. Seen on an H200 in fp32: 0.54-0.59 on those; in bf16
even B4 T2048 d1024 stayed launch-bound (ratio ~1).
"""

from __future__ import annotations

import torch

from mhaexp.nn.model import ModelConfig, Transformer
from mhaexp.nn.shapes import group_size
from mhaexp.pruning.surgery import apply_mask, prune_heads
from mhaexp.tools.bench.harness import Args, Row, ratio_row, register, time_interleaved
from mhaexp.tools.bench.harness import time_row as _time_row
from mhaexp.tools.bench.reference import GPT2_LAYER, attention_shapes, fwd_bwd_step, shape_name

FRACTION = 0.5
TARGET = "<= 0.6"


def half_of_every_group(n_heads: int, n_kv_heads: int, fraction: float = FRACTION) -> list[tuple[int, int]]:
    """``fraction`` of layer 0's query heads, removed so that no group is left unequal: the same
    number from every K/V group when that divides evenly, else whole groups (always so for MHA)."""
    size = group_size(n_heads, n_kv_heads)
    total = int(fraction * n_heads + 0.5)
    if size > 1 and total % n_kv_heads == 0:
        k = total // n_kv_heads
        return [(0, g * size + i) for g in range(n_kv_heads) for i in range(k)]
    return [(0, h) for h in range(total // size * size)]


def pruning_shapes(args: Args) -> list[tuple[int, int, int, int]]:
    """(B, T, d_model, n_heads): the attention section's shapes, plus GPT-2-small-sized layers on a GPU,
    where the small ones are bound by kernel launches rather than by the heads' work."""
    shapes = attention_shapes(args)
    if args.torch_device.type == "cuda":
        shapes = shapes + [GPT2_LAYER] + ([] if args.quick else [(4, 2048, 1024, 16)])
    return shapes


def _call(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x)[0]


@register("pruning")
def bench_pruning(args: Args) -> list[Row]:
    """Attention fwd+bwd: unpruned vs masked vs physically pruned (50% of heads)."""
    rows: list[Row] = []
    dev, dt = args.torch_device, args.torch_dtype
    launch_bound = set(attention_shapes(args)) if args.torch_device.type == "cuda" else set()
    for B, T, d, nh in pruning_shapes(args):
        for nkv in (nh, max(1, nh // 4)):
            torch.manual_seed(args.seed)
            cfg = ModelConfig(
                vocab_size=8,
                n_layers=1,
                d_model=d,
                n_heads=nh,
                n_kv_heads=nkv,
                max_seq_len=T,
                attn_only=True,
                pos="none",
            )
            model = Transformer(cfg)
            heads = half_of_every_group(nh, nkv)
            small, report = prune_heads(model, heads)
            masked = Transformer(cfg)
            masked.load_state_dict(model.state_dict())
            apply_mask(masked, heads)
            layers = {"unpruned": model.blocks[0].attn, "masked": masked.blocks[0].attn, "pruned": small.blocks[0].attn}
            x = torch.randn(B, T, d, device=dev, dtype=dt, requires_grad=True)
            fns = {name: fwd_bwd_step(m.to(dev, dt), x, _call) for name, m in layers.items()}
            t = time_interleaved(fns, args)
            case = (
                shape_name(B, T, d, nh, nkv) + f" -> h{report.layers[0]['heads_after']}"
                f" kv{report.layers[0]['kv_heads_after']}"
            )
            for name, secs in t.items():
                rows.append(_time_row("pruning", case, name, secs))
            rows.append(
                ratio_row(
                    "pruning",
                    case,
                    "pruned/unpruned",
                    t["pruned"],
                    t["unpruned"],
                    target=None if (B, T, d, nh) in launch_bound else TARGET,
                    extra={"heads_removed": len(heads)},
                )
            )
            rows.append(ratio_row("pruning", case, "masked/unpruned", t["masked"], t["unpruned"]))
    return rows
