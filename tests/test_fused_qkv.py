"""The fused q/k/v projection: checkpoints written with separate q_proj/k_proj/v_proj still load, compute,
prune, convert and resume exactly as the code that wrote them did.

``tests/data/ckpt_separate_qkv/`` was written by the code before the fusion (commit cde12a0):
``gqa_tiny.ckpt`` is a real ``mhaexp-train`` checkpoint (model=tiny, 4 heads, 2 K/V heads, step 4, AdamW
state included), ``expected.pt`` holds that code's logits and layer-1 pattern on fixed input ids, and its
logits after resuming the checkpoint to step 6 (command in that folder's README).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mhaexp import MultiHeadAttention
from mhaexp.checkpoint import read_checkpoint
from mhaexp.nn.io import checkpoint_config, load_model, model_state
from mhaexp.pruning.surgery import (
    convert_to_gqa,
    prune_checkpoint,
    prune_heads,
)
from mhaexp.training.init_from import validate_init
from mhaexp.training.module import LMModule, load_module

# Module-scoped fixtures: one worker runs the whole module under pytest-xdist (make test).
pytestmark = pytest.mark.xdist_group("test_fused_qkv")

FIXTURE = Path(__file__).parent / "data" / "ckpt_separate_qkv"
OLD = FIXTURE / "gqa_tiny.ckpt"
# The overrides gqa_tiny.ckpt was trained with (its data must match for a resume).
FIXTURE_RUN = (
    "model=tiny",
    "model.n_kv_heads=2",
    "data.n_train=640",
    "data.n_val=64",
    "analysis.probe_sequences=16",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "analysis=off",
    "logger=csv",
)


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURE / "expected.pt")


def old_layout(layer: MultiHeadAttention, prefix: str = "") -> dict[str, torch.Tensor]:
    """The layer's state as the code before the fusion wrote it: three Linear layers' keys."""
    state = {k: v.clone() for k, v in layer.state_dict().items() if not k.startswith("qkv_proj.")}
    for kind in ("weight", "bias"):
        parts = layer.split_qkv(getattr(layer.qkv_proj, kind))
        for name, part in zip(("q_proj", "k_proj", "v_proj"), parts, strict=True):
            state[f"{name}.{kind}"] = part.detach().clone()
    return {prefix + k: v for k, v in state.items()}


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_old_layer_state_loads_into_the_fused_layer(n_kv_heads: int) -> None:
    torch.manual_seed(0)
    src = MultiHeadAttention(32, 4, n_kv_heads=n_kv_heads).eval()
    dst = MultiHeadAttention(32, 4, n_kv_heads=n_kv_heads).eval()
    old = old_layout(src)
    assert "qkv_proj.weight" not in old and old["k_proj.weight"].shape == (n_kv_heads * 8, 32)
    dst.load_state_dict(old)  # strict: nothing missing, nothing left over
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(dst(x)[0], src(x)[0], atol=0, rtol=0)
    assert torch.equal(dst.split_qkv(dst.qkv_proj.weight)[1], old["k_proj.weight"])
    partial = {k: v for k, v in old.items() if k != "v_proj.bias"}
    with pytest.raises(RuntimeError, match="v_proj.bias|qkv_proj.bias"):  # a torn old state is not papered over
        dst.load_state_dict(partial)


def test_old_checkpoint_computes_what_the_old_code_computed(expected: dict[str, torch.Tensor]) -> None:
    raw = read_checkpoint(OLD)["state_dict"]
    assert "model.blocks.0.attn.q_proj.weight" in raw and not any("qkv_proj" in k for k in raw)
    ids = expected["input_ids"]
    for model in (load_model(OLD), load_module(OLD).model, LMModule.load_from_checkpoint(OLD).model.eval()):
        with torch.no_grad():
            logits, patterns = model(ids, need_weights=True)
        torch.testing.assert_close(logits, expected["logits"], atol=1e-6, rtol=0)
        torch.testing.assert_close(patterns[1], expected["pattern_L1"], atol=1e-6, rtol=0)


def test_old_checkpoint_prunes_and_converts(tmp_path: Path, expected: dict[str, torch.Tensor]) -> None:
    raw = read_checkpoint(OLD)["state_dict"]
    hs = checkpoint_config(read_checkpoint(OLD)).head_dim
    # MQA by mean-pooling (Ainslie et al. 2023): the two old K heads of layer 0, averaged.
    mqa = convert_to_gqa(load_model(OLD), 1, "mean")
    k_old = raw["model.blocks.0.attn.k_proj.weight"]
    got = mqa.blocks[0].attn.split_qkv(mqa.blocks[0].attn.qkv_proj.weight)[1]
    torch.testing.assert_close(got, (k_old[:hs] + k_old[hs:]) / 2)
    validate_init(OLD, mqa.cfg, "mean")  # init_from= an old checkpoint passes the preflight check
    # Heads 0 and 1 form K/V group 0 of layer 1: removing both removes that K/V head physically.
    out = tmp_path / "pruned.ckpt"
    report = prune_checkpoint(OLD, [(1, 0), (1, 1)], out)
    assert report.layers[1]["kv_heads_after"] == 1 and report.layers[1]["kv_removed"] == [0]
    masked = load_model(OLD)
    masked.attention_layers[1].head_gate[:2] = 0.0
    small = load_model(out)
    ids = expected["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(small(ids)[0], masked(ids)[0], atol=1e-5, rtol=1e-5)
    v_old = raw["model.blocks.1.attn.v_proj.weight"]
    torch.testing.assert_close(
        small.attention_layers[1].split_qkv(small.attention_layers[1].qkv_proj.weight)[2], v_old[hs:]
    )
    assert set(model_state(read_checkpoint(OLD))) == set(small.state_dict())  # same key set, fused


def test_prune_in_memory_matches_mask_for_gqa() -> None:
    torch.manual_seed(0)
    model = load_model(OLD)
    small, _ = prune_heads(model, [(0, 3)])  # uneven groups: head 2 left alone in group 1, padded
    ids = torch.randint(model.cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    model.attention_layers[0].head_gate[3] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(small(ids)[0], model(ids)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_old_checkpoint_resumes_with_its_optimizer_state(
    cli: Callable, tmp_path: Path, expected: dict[str, torch.Tensor]
) -> None:
    ckpt = tmp_path / "old.ckpt"
    shutil.copy(OLD, ckpt)
    done = cli("mhaexp-train", *FIXTURE_RUN, "trainer.max_steps=6", f"resume={ckpt}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    last = next(tmp_path.glob("runs/*/*/checkpoints/last.ckpt"))
    assert read_checkpoint(last)["global_step"] == 6
    with torch.no_grad():
        logits = load_model(last)(expected["input_ids"])[0]
    # The old code resumed the same file to the same step: AdamW's moments must have come along.
    torch.testing.assert_close(logits, expected["resumed_to_step6_logits"], atol=1e-5, rtol=0)
    assert (logits - expected["logits"]).abs().max() > 1e-2  # the two steps moved the weights
