"""Benchmark section ``train``: training tokens/s and MFU of our model beside a nanoGPT model of its shape."""

from __future__ import annotations

import torch

from mhaexp.nn.model import ModelConfig, Transformer
from mhaexp.tools.bench.harness import Args, Row, matmul_peak_fn, ratio_row, register, spread, time_interleaved
from mhaexp.tools.bench.reference import NanoGPT, matmul_flops_per_token, train_step_fn

# The train section's workload: conf/model/small.yaml's shape (the copy used when the YAML cannot be read),
# at a vocabulary of 150 (the default grammar's), batch 64, T 32.
SMALL_SHAPE = {"n_layers": 3, "d_model": 128, "n_heads": 8, "d_ff": 512, "max_seq_len": 64}
VOCAB, BATCH, SEQ = 150, 64, 32


def default_model_config(vocab_size: int) -> tuple[ModelConfig, str]:
    """conf/model/small.yaml as a ModelConfig (the model `make train` builds), or its shape hard-coded
    when the config cannot be read (Hydra's packages absent, as on a bare GPU image)."""
    try:
        from omegaconf import OmegaConf

        from mhaexp.config import CONF_DIR

        conf = CONF_DIR / "model" / "small.yaml"
        raw = OmegaConf.to_container(OmegaConf.load(conf), resolve=True)
        fields = set(ModelConfig.__dataclass_fields__)
        kw = {k: v for k, v in raw.items() if k in fields}
        return ModelConfig(**{**kw, "vocab_size": vocab_size}), str(conf.relative_to(conf.parents[2]))
    except Exception:  # any failure means: use the shape we know
        return ModelConfig(vocab_size=vocab_size, **SMALL_SHAPE), "hard-coded copy of conf/model/small.yaml"


@register("train")
def bench_train(args: Args) -> list[Row]:
    """Training tokens/s and MFU of the default model (and of a 4-layer d=256 one), each beside a
    nanoGPT model of the same shape, against this machine's measured matmul rate."""
    dev = args.torch_device
    autocast = None if args.torch_dtype == torch.float32 else args.torch_dtype
    vocab, B, T = VOCAB, BATCH, SEQ
    small, source = default_model_config(vocab)
    cases = [("default", small)]
    if not args.quick:
        cases.append(("L4 d256", ModelConfig(vocab_size=vocab, n_layers=4, d_model=256, n_heads=8, max_seq_len=64)))
    n_mm = 512 if args.quick else 2048
    print("train: MFU = (6 N + 12 L T d_attn) * tokens/s / (matmul FLOP/s measured beside it); N = every nn.Linear")
    print("       weight incl. the LM head (PaLM appendix B); per-repeat ratios, same process, same threads")
    peak_fn, peak_flops = matmul_peak_fn(n_mm, dev, args.torch_dtype)
    rows: list[Row] = []
    for label, cfg in cases:
        torch.manual_seed(args.seed)
        ours = Transformer(cfg).to(dev)
        nano = NanoGPT(vocab, cfg.max_seq_len, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.ffn_dim).to(dev)
        d_attn = cfg.n_heads * cfg.head_dim
        fpt = {
            "ours": matmul_flops_per_token(ours, cfg.n_layers, T, d_attn),
            "nanoGPT": matmul_flops_per_token(nano, cfg.n_layers, T, d_attn),
        }
        fns = {
            "matmul": peak_fn,
            "ours": train_step_fn(ours, B, T, vocab, dev, autocast),
            "nanoGPT": train_step_fn(nano, B, T, vocab, dev, autocast),
        }
        t = time_interleaved(fns, args)
        case = f"{label}: L{cfg.n_layers} d{cfg.d_model} h{cfg.n_heads} ff{cfg.ffn_dim} V{vocab} B{B} T{T}"
        peak = [peak_flops / s for s in t["matmul"]]
        med, lo, hi = spread([p / 1e9 for p in peak])
        rows.append(
            Row(
                "train",
                case,
                f"matmul peak ({n_mm}^3 {args.dtype})",
                med,
                lo,
                hi,
                unit="GFLOP/s",
                extra={"threads": torch.get_num_threads()},
            )
        )
        mfu: dict[str, list[float]] = {}
        for name in ("ours", "nanoGPT"):
            tok_s = [B * T / s for s in t[name]]
            med, lo, hi = spread(tok_s)
            rows.append(
                Row(
                    "train",
                    case,
                    f"{name} tokens/s",
                    med,
                    lo,
                    hi,
                    unit="tok/s",
                    extra={"flops_per_token": fpt[name], "model_source": source if name == "ours" else ""},
                )
            )
            # Per repeat: this repeat's throughput over this repeat's matmul rate, so load drift cancels.
            mfu[name] = [fpt[name] * ts / p for ts, p in zip(tok_s, peak, strict=True)]
            med, lo, hi = spread(mfu[name])
            # Interference only ever slows a block down, so best over best is the other fair estimate.
            best = fpt[name] * max(tok_s) / max(peak)
            rows.append(
                Row(
                    "train",
                    case,
                    f"{name} MFU",
                    med,
                    lo,
                    hi,
                    unit="of peak",
                    target=">= 0.40" if name == "ours" else None,
                    extra={"best_tokens_per_s_over_best_peak": best},
                )
            )
        rows.append(ratio_row("train", case, "ours/nanoGPT MFU", mfu["ours"], mfu["nanoGPT"]))
        rows.append(ratio_row("train", case, "ours/nanoGPT step time", t["ours"], t["nanoGPT"]))
    return rows
