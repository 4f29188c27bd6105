"""Parity of imported models with Hugging Face's own, offline: ``python -m mhaexp.tools.import_parity``.

For each family a few small configs with the shapes that go wrong if a layout is guessed (uneven GQA,
MQA, ``head_dim`` != d_model / n_heads, partial rotary, q/k/v bias without an output bias, parallel
and sequential residual, post-LN, tied and untied embeddings). transformers builds each with random
weights, drawn at std 0.2 instead of 0.02 so that attention is far from uniform (at the default init
a q/k mistake barely moves a pattern); ``save_pretrained`` writes it and :mod:`mhaexp.nn.hf_import`
reads it back. Both run in fp32, HF with eager attention, on the same tokens; the table gives the
largest difference of the logits (relative to their largest magnitude), of every layer's hidden state
(relative likewise) and of every head's pattern against ``output_attentions``, and how peaked the
patterns are (the mean over rows of a row's largest weight, next to what uniform attention would give).

``tests/test_import_parity.py`` asserts the same numbers under :data:`TOLERANCE`.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

TOLERANCE = 1e-5  # logits and hidden states relative to their largest magnitude; patterns absolute
INIT_STD = 0.2  # weight matrices' std: ten times the usual 0.02, so attention is far from uniform
VOCAB, SEQ, BATCH = 96, 24, 2


@dataclass(frozen=True)
class Case:
    """One small HF model: its family, what it exercises, and the config's keywords."""

    family: str  # model_type
    what: str
    config: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("gpt2", "MHA 4x12, tied, gelu_new", dict(n_layer=2, n_embd=48, n_head=4)),
    Case(
        "gpt2",
        "untied, n_inner 80, exact gelu",
        dict(n_layer=2, n_embd=48, n_head=3, n_inner=80, activation_function="gelu", tie_word_embeddings=False),
    ),
    Case(
        "bert",
        "post-LN, token types, tied MLM decoder",
        dict(num_hidden_layers=2, hidden_size=48, num_attention_heads=4, intermediate_size=96),
    ),
    Case(
        "bert",
        "untied MLM decoder, 3 token types",
        dict(
            num_hidden_layers=2,
            hidden_size=48,
            num_attention_heads=6,
            intermediate_size=64,
            type_vocab_size=3,
            tie_word_embeddings=False,
        ),
    ),
    Case(
        "llama",
        "GQA 6q/2kv (group 3), head_dim 12 != 48/6, untied",
        dict(
            num_hidden_layers=2,
            hidden_size=48,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=12,
            intermediate_size=80,
            tie_word_embeddings=False,
            rope_theta=500.0,
        ),
    ),
    Case(
        "llama",
        "MQA 4q/1kv, tied, attention and MLP biases",
        dict(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=1,
            intermediate_size=64,
            tie_word_embeddings=True,
            attention_bias=True,
            mlp_bias=True,
        ),
    ),
    Case(
        "mistral",
        "GQA 8q/2kv, sliding window = max_seq_len",
        dict(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=96,
            sliding_window=64,
            max_position_embeddings=64,
        ),
    ),
    Case(
        "qwen2",
        "GQA 6q/2kv, q/k/v bias without o bias, tied",
        dict(
            num_hidden_layers=2,
            hidden_size=48,
            num_attention_heads=6,
            num_key_value_heads=2,
            intermediate_size=80,
            tie_word_embeddings=True,
        ),
    ),
    Case(
        "qwen2",
        "MQA 3q/1kv, head_dim 16 != 36/3, untied",
        dict(
            num_hidden_layers=2,
            hidden_size=36,
            num_attention_heads=3,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=64,
            tie_word_embeddings=False,
        ),
    ),
    Case(
        "gpt_neox",
        "parallel residual, rotary 0.25, untied",
        dict(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=96,
            rotary_pct=0.25,
            use_parallel_residual=True,
        ),
    ),
    Case(
        "gpt_neox",
        "sequential residual, rotary 0.5, no attention bias",
        dict(
            num_hidden_layers=2,
            hidden_size=48,
            num_attention_heads=4,
            intermediate_size=64,
            rotary_pct=0.5,
            use_parallel_residual=False,
            attention_bias=False,
        ),
    ),
]


def hf_config(case: Case) -> Any:
    """The transformers config of ``case`` (eager attention, no dropout, a small vocabulary)."""
    from transformers import AutoConfig

    kw = {"vocab_size": VOCAB, "max_position_embeddings": 64, **case.config}
    if case.family == "gpt2":
        kw.pop("max_position_embeddings")
        kw.setdefault("n_positions", 64)
        kw.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    cfg = AutoConfig.for_model(case.family, **kw)
    cfg._attn_implementation = "eager"
    return cfg


@torch.no_grad()
def save_random_hf(config: Any, directory: Path, seed: int = 0, std: float = INIT_STD) -> Any:
    """A random-init HF model for ``config`` (matrices at ``std``, norms near 1), saved in ``directory``."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    torch.manual_seed(seed)
    auto = AutoModelForMaskedLM if config.model_type == "bert" else AutoModelForCausalLM
    model = auto.from_config(config).eval()
    norms = {id(m.weight) for m in model.modules() if "Norm" in type(m).__name__ and hasattr(m, "weight")}
    for p in model.parameters():
        if id(p) in norms:
            p.uniform_(0.5, 1.5)  # norm gains off 1, so a swapped or skipped norm shows
        else:
            p.normal_(0.0, std)  # matrices and biases
    model.save_pretrained(str(directory))
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def parity(case: Case, directory: Path) -> dict[str, Any]:
    """Build, save and import ``case``; the largest differences of logits, hidden states and patterns."""
    from mhaexp.nn.hf_import import import_hf_directory

    hf = save_random_hf(hf_config(case), directory)
    ours, _ = import_hf_directory(directory, str(directory))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    kw: dict[str, Any] = {}
    if case.family == "bert":  # token types exercised too
        kw["token_type_ids"] = torch.randint(0, hf.config.type_vocab_size, (BATCH, SEQ), generator=gen)
    ref = hf(ids, output_attentions=True, output_hidden_states=True, **kw)
    logits, patterns = ours(ids, need_weights=True, **kw)
    hidden = ours.residual_stream(ids, **kw)
    if ours.ln_f is not None:  # HF's last hidden state is after the final norm
        hidden[-1] = ours.ln_f(hidden[-1])
    return {
        "family": case.family,
        "config": case.what,
        "logits": _rel(logits, ref.logits),
        "hidden": max(_rel(h, r) for h, r in zip(hidden, ref.hidden_states[1:], strict=True)),
        "patterns": max(float((p - r).abs().max()) for p, r in zip(patterns, ref.attentions, strict=True)),
        "peak": float(torch.stack([r.amax(-1).mean() for r in ref.attentions]).mean()),
        # The same statistic for uniform attention over the keys each query sees.
        "uniform": float((1.0 / torch.arange(1, SEQ + 1)).mean()) if ours.cfg.causal else 1.0 / SEQ,
        "layers": len(patterns),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| family | config | max logit diff (rel.) | max hidden diff (rel.) | max pattern diff | "
        "mean row max (uniform) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['config']} | {r['logits']:.1e} | {r['hidden']:.1e} | {r['patterns']:.1e} "
            f"| {r['peak']:.2f} ({r['uniform']:.2f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES):
            d = Path(tmp) / str(i)
            d.mkdir()
            rows.append(parity(case, d))
    print(table(rows))
    print(f"{len(rows)} configs, B={BATCH} T={SEQ}, fp32, HF eager attention; tolerance {TOLERANCE:g}")


if __name__ == "__main__":
    main()
