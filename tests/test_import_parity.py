"""Imported models compute what Hugging Face computes: every family, the unusual shapes, offline.

transformers builds each config of :data:`mhaexp.tools.import_parity.CASES` with random weights (std
0.2, so attention is far from uniform), saves it with ``save_pretrained``, and :mod:`mhaexp.nn.hf_import`
reads it back; logits, every layer's hidden state and every head's pattern are compared in fp32 with
HF's eager attention.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mhaexp.nn import hf_import
from mhaexp.tools.import_parity import CASES, TOLERANCE, hf_config, parity, save_random_hf


@pytest.mark.parametrize("case", CASES, ids=[f"{c.family}-{i}" for i, c in enumerate(CASES)])
def test_imported_model_matches_hf_logits_hidden_states_and_patterns(case, tmp_path: Path) -> None:
    row = parity(case, tmp_path)
    assert row["layers"] == case.config.get("num_hidden_layers", case.config.get("n_layer"))
    assert row["logits"] < TOLERANCE, row
    assert row["hidden"] < TOLERANCE, row
    assert row["patterns"] < TOLERANCE, row
    # The comparison has teeth only if attention is far from uniform.
    assert row["peak"] > 2 * row["uniform"], row


@pytest.mark.parametrize("case", CASES, ids=[f"{c.family}-{i}" for i, c in enumerate(CASES)])
@torch.no_grad()
def test_a_pytorch_model_bin_imports_the_same_weights(case, tmp_path: Path) -> None:
    """``pytorch_model.bin`` as transformers 4.x's ``save_pretrained(safe_serialization=False)`` wrote it
    (``torch.save`` of the state dict; transformers 5 writes safetensors only): read memory-mapped, its
    pages released as they are copied, it gives bit for bit the weights of the safetensors import (which
    the test above holds to HF) and HF's logits."""
    from safetensors.torch import load_file

    hf = save_random_hf(hf_config(case), tmp_path)
    from_safetensors, _ = hf_import.import_hf_directory(tmp_path, "st")
    # The file's tensors under the file's names (5.x's state_dict() renames some, e.g. NeoX's embed_out).
    torch.save(load_file(str(tmp_path / "model.safetensors")), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    from_bin, _ = hf_import.import_hf_directory(tmp_path, "bin")
    a, b = from_safetensors.state_dict(), from_bin.state_dict()
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    ids = torch.randint(0, hf.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = hf(ids).logits
    assert float((from_bin(ids)[0] - ref).abs().max() / ref.abs().max()) < TOLERANCE


def _case(family: str):
    return next(c for c in CASES if c.family == family)


def test_neox_qkv_read_as_thirds_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The (head, q/k/v, head_dim) row order matters: reading the fused rows as q | k | v thirds (the
    guess that loads without a shape error) moves the patterns far beyond the tolerance."""
    monkeypatch.setattr(hf_import, "_neox_qkv", lambda name, cfg: lambda w: w.read(name))
    row = parity(_case("gpt_neox"), tmp_path)
    assert row["patterns"] > 0.05 and row["logits"] > 1e-2, row


def test_gpt2_conv1d_read_untransposed_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT-2's attention c_proj is square, so it loads untransposed without a shape error; parity catches it."""
    real = hf_import._transposed
    monkeypatch.setattr(hf_import, "_transposed", lambda n: (lambda w: w.read(n)) if "attn.c_proj" in n else real(n))
    row = parity(_case("gpt2"), tmp_path)
    assert row["logits"] > 1e-2, row


def test_kv_heads_in_another_order_are_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Query head h reads K/V head h // group in HF as in our layer; giving a group another group's K/V
    head (here: the K/V heads in reverse order) moves the patterns of the uneven-GQA model."""
    real = hf_import.llama_weights

    def interleaved(cfg, c):
        plan = real(cfg, c)
        for i in range(cfg.n_layers):
            key = f"blocks.{i}.attn.qkv_proj.weight"
            fused = plan[key]

            def swap(w, fused=fused):
                t = fused(w)
                q, k, v = t.split([cfg.n_heads * cfg.head_dim, *[cfg.n_kv_heads * cfg.head_dim] * 2])
                order = torch.arange(cfg.n_kv_heads).flip(0)
                k = k.view(cfg.n_kv_heads, cfg.head_dim, -1)[order].reshape(k.shape)
                v = v.view(cfg.n_kv_heads, cfg.head_dim, -1)[order].reshape(v.shape)
                return torch.cat([q, k, v])

            plan[key] = swap
        return plan

    monkeypatch.setitem(hf_import.FAMILIES, "llama", hf_import.Family(hf_import.llama_config, interleaved, "model."))
    row = parity(_case("llama"), tmp_path)
    assert row["patterns"] > 0.05, row
