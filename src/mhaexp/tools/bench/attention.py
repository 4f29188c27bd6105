"""Benchmark section ``attention``: one attention layer, forward + backward, against plain references."""

from __future__ import annotations

import torch
from torch import nn

from mhaexp.nn.attention import MultiHeadAttention
from mhaexp.tools.bench.harness import Args, Row, ratio_row, register, time_interleaved, time_row
from mhaexp.tools.bench.reference import (
    NanoCausalSelfAttention,
    attention_shapes,
    call_ours,
    call_ours_explicit,
    call_plain,
    call_torch_mha,
    copy_into_nano_attention,
    copy_into_torch_mha,
    fwd_bwd_step,
    shape_name,
)


@register("attention")
def bench_attention(args: Args) -> list[Row]:
    """Forward + backward of one attention layer: our fast path against nanoGPT's layer,
    ``torch.nn.MultiheadAttention`` and our own explicit (need_weights) path."""
    rows: list[Row] = []
    dev, dt = args.torch_device, args.torch_dtype
    for B, T, d, nh in attention_shapes(args):
        torch.manual_seed(args.seed)
        ours = MultiHeadAttention(d, nh).to(dev, dt)
        nano = NanoCausalSelfAttention(d, nh).to(dev, dt)
        tmha = nn.MultiheadAttention(d, nh, batch_first=True).to(dev, dt)
        copy_into_nano_attention(ours, nano)
        copy_into_torch_mha(ours, tmha)
        x = torch.randn(B, T, d, device=dev, dtype=dt, requires_grad=True)
        with torch.no_grad():
            y = ours(x)[0]
            agree = max(
                (y - nano(x)).abs().max().item(),
                (y - call_torch_mha(tmha, x)).abs().max().item(),
                (y - ours(x, need_weights=True)[0]).abs().max().item(),
            )
        fns = {
            "ours": fwd_bwd_step(ours, x, call_ours),
            "nanoGPT": fwd_bwd_step(nano, x, call_plain),
            "torch.nn.MHA": fwd_bwd_step(tmha, x, call_torch_mha),
            "ours explicit": fwd_bwd_step(ours, x, call_ours_explicit),
        }
        t = time_interleaved(fns, args)
        case = shape_name(B, T, d, nh)
        for name, secs in t.items():
            rows.append(time_row("attention", case, name, secs))
        rows.append(
            ratio_row(
                "attention",
                case,
                "ours/nanoGPT",
                t["ours"],
                t["nanoGPT"],
                target="<= 1.05",
                extra={"max_abs_diff_outputs": agree},
            )
        )
        rows.append(ratio_row("attention", case, "ours/torch.nn.MHA", t["ours"], t["torch.nn.MHA"]))
        rows.append(ratio_row("attention", case, "ours/ours explicit", t["ours"], t["ours explicit"]))
    return rows
