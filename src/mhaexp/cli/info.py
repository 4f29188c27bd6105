"""``mhaexp-info``: the shape of a configured model, without training it.

mhaexp-info model.d_model=768 model.n_heads=12
"""

from __future__ import annotations

import sys

import torch

from mhaexp.cli.preflight import check_override_names, compose_job, hydra_context, split_argv
from mhaexp.errors import ConfigError, fail
from mhaexp.nn.model import ModelConfig, Transformer
from mhaexp.nn.shapes import rotary_dims
from mhaexp.training.config import build_run

PROG = "mhaexp-info"


def describe(cfg: ModelConfig) -> str:
    """A human-readable table of head layout and parameter counts by part."""
    with torch.device("meta"):  # counts only: no memory, no init time, any size
        counts = Transformer(cfg).param_counts()
    rotated = rotary_dims(cfg.head_dim, cfg.rotary_pct)[1]
    rope = f", RoPE on {rotated} of {cfg.head_dim} dims" if cfg.pos == "rope" else ""
    kind = "MHA" if cfg.n_kv_heads == cfg.n_heads else ("MQA" if cfg.n_kv_heads == 1 else "GQA")
    lines = [
        f"layers            {cfg.n_layers}  ({'attention-only' if cfg.attn_only else 'attention + MLP'}, "
        f"{'causal LM' if cfg.causal else 'bidirectional, masked LM'}, positions: {cfg.pos})",
        f"block             {cfg.norm_position}-norm {cfg.norm}, {cfg.mlp} MLP, "
        f"{'parallel' if cfg.parallel_residual else 'sequential'} residual"
        + rope
        + (", MLM head" if cfg.mlm_head else ""),
        f"d_model           {cfg.d_model}",
        f"n_heads           {cfg.n_heads}",
        f"head_dim          {cfg.head_dim}"
        + (
            "  (= d_model / n_heads)"
            if cfg.head_dim * cfg.n_heads == cfg.d_model
            else f"  (heads span {cfg.head_dim * cfg.n_heads}, not d_model)"
        ),
        f"n_kv_heads        {cfg.n_kv_heads}  ({kind}; {cfg.n_heads // cfg.n_kv_heads} query heads per K/V head)",
        f"kv cache / token  {cfg.kv_cache_bytes_per_token(2):,} bytes (bf16, all layers)",
        "parameters:",
    ]
    per_layer = [k for k in counts if k.startswith("attention.L")]
    for key in ("embedding", "position", "attention", "mlp", "norm", "lm_head", "total"):
        lines.append(f"  {key:<15} {counts[key]:>14,}")
        if key == "attention" and len(per_layer) <= 16:
            lines += [f"    {k.split('.')[1]:<13} {counts[k]:>14,}" for k in per_layer]
    return "\n".join(lines)


def main() -> None:
    _, overrides, config_name = split_argv(sys.argv[1:])
    try:
        with hydra_context():
            check_override_names(overrides, config_name)
            model_cfg = build_run(compose_job(overrides, config_name)).model
    except ConfigError as e:
        fail(PROG, e)
    print(describe(model_cfg))


if __name__ == "__main__":
    main()
