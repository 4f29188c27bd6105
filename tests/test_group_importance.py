"""GQA group importance and group ablation against independent references."""

from __future__ import annotations

import pytest
import torch

from mhaexp.heads.evaluation import evaluate
from mhaexp.heads.importance import (
    ablation_importance,
    ablation_values,
    group_ablation,
    group_ablation_values,
    kv_groups,
)
from mhaexp.nn.config import ModelConfig
from mhaexp.nn.model import Transformer

V, T = 32, 10


def batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, T, dtype=torch.bool)
    mask[0, 6:] = False
    return {"input_ids": torch.randint(0, V, (4, T), generator=g), "attention_mask": mask}


HELD_OUT = [batch(1), batch(2)]


def model(n_kv_heads: int) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, n_layers=2, d_model=32, n_heads=4, n_kv_heads=n_kv_heads, d_ff=32, max_seq_len=16)
    return Transformer(cfg).eval()


def test_kv_groups_follow_the_layer_layout() -> None:
    assert [g.tolist() for g in kv_groups(model(2))] == [[0, 0, 1, 1], [0, 0, 1, 1]]
    assert [g.tolist() for g in kv_groups(model(1))] == [[0, 0, 0, 0]] * 2


def test_group_ablation_gates_the_whole_group() -> None:
    m = model(2)
    base, _ = evaluate(m, HELD_OUT)
    got = group_ablation(m, HELD_OUT)
    for li, layer in enumerate(m.attention_layers):
        for g in range(2):
            with torch.no_grad():
                layer.head_gate.copy_((kv_groups(m)[li] != g).float())
            want = evaluate(m, HELD_OUT)[0] - base
            with torch.no_grad():
                layer.head_gate.fill_(1.0)
            assert float(got[li][g]) == pytest.approx(want, abs=1e-6)
    assert all(float(layer.head_gate.min()) == 1.0 for layer in m.attention_layers)  # gates restored


def test_with_one_head_per_group_it_is_the_head_ablation() -> None:
    m = model(4)  # MHA: every query head is its own group
    for a, b in zip(group_ablation(m, HELD_OUT), ablation_importance(m, HELD_OUT), strict=True):
        torch.testing.assert_close(a, b.float(), atol=1e-5, rtol=0)


def test_group_ablation_has_the_head_ablations_standard_error_with_one_head_per_group() -> None:
    m = model(4)  # MHA: each group is one head, so the sentence-by-sentence values must be the head's
    for a, b in zip(group_ablation_values(m, HELD_OUT), ablation_values(m, HELD_OUT), strict=True):
        assert a.n == b.n == 8  # 2 batches of 4 rows, each with scored tokens
        torch.testing.assert_close(a.mean(), b.mean(), atol=1e-5, rtol=0)
        torch.testing.assert_close(a.se(), b.se(), atol=1e-5, rtol=0)
        assert bool((a.se() > 0).all())
