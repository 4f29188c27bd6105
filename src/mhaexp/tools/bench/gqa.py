"""Benchmark section ``gqa``: grouped-query attention (and MQA) against MHA in our layer."""

from __future__ import annotations

import torch

from mhaexp.nn.attention import MultiHeadAttention
from mhaexp.tools.bench.harness import Args, Row, ratio_row, register, time_interleaved, time_row
from mhaexp.tools.bench.reference import attention_shapes, call_ours, fwd_bwd_step, shape_name


@register("gqa")
def bench_gqa(args: Args) -> list[Row]:
    """Our layer with n_kv_heads = n_heads / 4 (and MQA, for orientation) against MHA, forward + backward."""
    rows: list[Row] = []
    dev, dt = args.torch_device, args.torch_dtype
    for B, T, d, nh in attention_shapes(args):
        torch.manual_seed(args.seed)
        layers = {
            "MHA": MultiHeadAttention(d, nh),
            "GQA": MultiHeadAttention(d, nh, nh // 4),
            "MQA": MultiHeadAttention(d, nh, 1),
        }
        x = torch.randn(B, T, d, device=dev, dtype=dt, requires_grad=True)
        fns = {name: fwd_bwd_step(m.to(dev, dt), x, call_ours) for name, m in layers.items()}
        t = time_interleaved(fns, args)
        case = shape_name(B, T, d, nh, nh // 4)
        for name, secs in t.items():
            rows.append(time_row("gqa", case, name, secs))
        rows.append(ratio_row("gqa", case, "GQA/MHA", t["GQA"], t["MHA"], target="<= 1.0"))
        rows.append(ratio_row("gqa", case, "MQA/MHA", t["MQA"], t["MHA"]))
    return rows
