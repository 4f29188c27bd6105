"""Physical head removal, K/V conversion (GQA/MQA), checkpoint loading and the mhaexp-prune CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mhaexp import ConfigError, ModelConfig, Transformer
from mhaexp.checkpoint import atomic_save, read_checkpoint
from mhaexp.cli.prune import main as prune_main
from mhaexp.nn.io import checkpoint_for, load_model
from mhaexp.pruning.surgery import (
    apply_mask,
    convert_to_gqa,
    parse_heads,
    plan_layer,
    prune_heads,
)
from mhaexp.training.init_from import load_init, validate_init
from mhaexp.training.module import LMModule

# Module-scoped fixtures: one worker runs the whole module under pytest-xdist (make test).
pytestmark = pytest.mark.xdist_group("test_surgery")

V, T = 32, 10


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: thread start-up and contention on a shared 2-core box cost far more than they save."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=V, n_layers=2, d_model=32, n_heads=4, d_ff=32, max_seq_len=16)
    base.update(kw)
    return ModelConfig(**base)


def batch(b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, T, dtype=torch.bool)
    mask[0, 7:] = False  # one padded row: pads must not change the comparison
    return {"input_ids": torch.randint(0, V, (b, T), generator=g), "attention_mask": mask}


def logits(model: Transformer, data: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(data["input_ids"], attention_mask=data["attention_mask"])[0]


def loader(n: int = 8) -> DataLoader:
    rows = [{k: v[0] for k, v in batch(1, seed=i).items()} for i in range(n)]
    return DataLoader(rows, batch_size=4)


def fit(module: pl.LightningModule, tmp: Path, steps: int = 1, **kw) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(tmp),
        **kw,
    )
    trainer.fit(module, train_dataloaders=loader())
    return trainer


# ---------------------------------------------------------------------------------------------
# masked == physically pruned
# ---------------------------------------------------------------------------------------------

CASES = {
    "mha": (dict(), [(0, 1), (1, 0), (1, 3)], "pad", [3, 2], [3, 2]),
    # L0: groups {0..3} keeps 1, {4..7} keeps 4 -> padded back to 4 each; L1: group 1 empty -> its KV head goes.
    "gqa_uneven_pad": (
        dict(n_heads=8, n_kv_heads=2),
        [(0, 0), (0, 1), (0, 2), (1, 4), (1, 5), (1, 6), (1, 7)],
        "pad",
        [8, 4],
        [2, 1],
    ),
    "gqa_even": (
        dict(n_heads=8, n_kv_heads=2),
        [(0, 0), (0, 4), (1, 1), (1, 2), (1, 5), (1, 6)],
        "pad",
        [6, 4],
        [2, 2],
    ),
    "gqa_uneven_split": (
        dict(n_heads=8, n_kv_heads=2),
        [(0, 0), (0, 1), (0, 2), (1, 4), (1, 5)],
        "split",
        [5, 6],
        [5, 3],
    ),
    "mqa": (dict(n_heads=4, n_kv_heads=1), [(0, 0), (0, 3), (1, 2)], "pad", [2, 3], [1, 1]),
    "rope_encoder": (
        dict(n_heads=8, n_kv_heads=4, pos="rope", causal=False),
        [(0, 0), (0, 1), (1, 6)],
        "pad",
        [6, 8],
        [3, 4],
    ),
    "layer_emptied": (dict(), [(1, 0), (1, 1), (1, 2), (1, 3)], "pad", [4, 1], [4, 1]),
    "per_layer_counts": (
        dict(n_heads=8, layer_n_heads=[8, 4], layer_n_kv_heads=[2, 4], head_dim=8),
        [(0, 1), (0, 2), (0, 5), (0, 6), (1, 3)],
        "pad",
        [4, 3],
        [2, 3],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_masked_and_pruned_models_agree(name: str) -> None:
    kw, heads, uneven, want_heads, want_kv = CASES[name]
    torch.manual_seed(0)
    model = Transformer(tiny(**kw))
    with torch.no_grad():
        model.attention_layers[0].head_gate[3] = 0.5  # surviving non-binary gates are carried over
    data = batch()
    apply_mask(model, heads)
    small, report = prune_heads(model, heads, uneven)
    assert small.cfg.layer_n_heads == want_heads and small.cfg.layer_n_kv_heads == want_kv
    torch.testing.assert_close(logits(small, data), logits(model, data), atol=1e-5, rtol=1e-5)
    assert report.params_after < report.params_before
    for layer, row in zip(small.attention_layers, report.layers, strict=True):
        w_q, w_k, w_v = layer.split_qkv(layer.qkv_proj.weight)
        assert w_q.shape[0] == row["heads_after"] * layer.head_dim
        assert layer.o_proj.weight.shape[1] == row["heads_after"] * layer.head_dim
        assert w_k.shape[0] == w_v.shape[0] == row["kv_heads_after"] * layer.head_dim


def test_pruning_twice_equals_pruning_once() -> None:
    torch.manual_seed(1)
    model = Transformer(tiny(n_heads=8, n_kv_heads=4))
    data = batch()
    first, _ = prune_heads(model, [(0, 0), (0, 1)])  # group 0 of L0 emptied
    second, _ = prune_heads(first, [(1, 7)])
    apply_mask(model, [(0, 0), (0, 1), (1, 7)])
    torch.testing.assert_close(logits(second, data), logits(model, data), atol=1e-5, rtol=1e-5)


def test_plan_rules() -> None:
    p = plan_layer(8, 2, {4, 5, 6, 7})
    assert p.q_src == [0, 1, 2, 3] and p.kv_src == [0] and p.kv_removed == [1] and not p.padded
    p = plan_layer(8, 2, {0, 1, 2})  # sizes 1 and 4: pad group 0 with its own removed heads
    assert p.padded == [0, 1, 2] and p.kv_src == [0, 1] and p.q_gate[:4] == [1.0, 0.0, 0.0, 0.0]
    p = plan_layer(8, 2, {0, 1, 4, 5, 6, 7}, uneven="split")  # one group of 2
    assert p.q_src == [2, 3] and p.kv_src == [0]
    p = plan_layer(8, 2, {0, 4, 5}, uneven="split")  # sizes 3 and 2 -> gcd 1 -> 5 K/V heads
    assert p.new_heads == (5, 5) and p.kv_duplicated == [0, 1]
    p = plan_layer(4, 4, {0, 1, 2, 3})
    assert p.new_heads == (1, 1) and p.padded == [0]


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Lightning checkpoint of a tiny GQA model (8 heads, 2 K/V heads), after 2 steps."""
    tmp = tmp_path_factory.mktemp("ckpt")
    pl.seed_everything(0, verbose=False)
    module = LMModule(tiny(n_heads=8), {"lr": 1e-2, "warmup_steps": 1})
    trainer = fit(module, tmp, steps=2)
    path = tmp / "mha.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_pruned_checkpoint_loads_and_trains(trained_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "small.ckpt"
    prune_main([f"ckpt={trained_ckpt}", "heads=L0H1,0:2,1:7", f"out={out}"])
    data = batch()
    masked = load_model(trained_ckpt)
    apply_mask(masked, [(0, 1), (0, 2), (1, 7)])
    small = load_model(out)
    assert small.cfg.layer_n_heads == [6, 7]
    torch.testing.assert_close(logits(small, data), logits(masked, data), atol=1e-5, rtol=1e-5)
    module = LMModule.load_from_checkpoint(out)
    assert [a.n_heads for a in module.model.attention_layers] == [6, 7]
    torch.testing.assert_close(logits(module.model, data), logits(small, data))
    before = module.model.blocks[0].attn.qkv_proj.weight.clone()
    fit(module.train(), tmp_path, steps=1)
    assert not torch.equal(before, module.model.blocks[0].attn.qkv_proj.weight)


def test_cli_removes_masked_heads_by_default(trained_ckpt: Path, tmp_path: Path) -> None:
    model = load_model(trained_ckpt)
    apply_mask(model, [(1, 0), (1, 1)])
    masked = tmp_path / "masked.ckpt"
    atomic_save(checkpoint_for(model, read_checkpoint(trained_ckpt)), masked)
    prune_main([f"ckpt={masked}"])
    assert load_model(tmp_path / "masked_pruned.ckpt").cfg.layer_n_heads == [8, 6]


@pytest.mark.parametrize(
    "argv, field",
    [
        (["heads=L0H1"], "ckpt"),
        (["ckpt={ck}", "heads=L9H0"], "heads"),
        (["ckpt={ck}", "heads=L0H99"], "heads"),
        (["ckpt={ck}", "heads=x"], "heads"),
        (["ckpt={ck}", "bogus=1"], "bogus"),
        (["ckpt={ck}", "heads=L0H0", "uneven=drop"], "uneven"),
    ],
)
def test_cli_bad_input(
    argv: list[str], field: str, trained_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(ck=trained_ckpt) for a in argv] + [f"out={tmp_path / 'o.ckpt'}"]
    with pytest.raises(SystemExit) as e:
        prune_main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mhaexp-prune: error: {field}=") and "\n" not in err


def test_parse_heads_formats() -> None:
    assert parse_heads("L0H1,L1H3") == parse_heads("0:1, 1:3") == parse_heads([(1, 3), "l0h1"]) == [(0, 1), (1, 3)]


# ---------------------------------------------------------------------------------------------
# GQA conversion
# ---------------------------------------------------------------------------------------------


def test_gqa_with_one_head_per_group_is_identity() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny())
    data = batch()
    same = convert_to_gqa(model, 4)
    torch.testing.assert_close(logits(same, data), logits(model, data))


@pytest.mark.parametrize("init", ["mean", "first"])
@pytest.mark.parametrize("groups", [2, 1])
def test_gqa_of_already_grouped_kv_is_exact(init: str, groups: int) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny(n_heads=4, pos="rope"))
    hs, size = model.cfg.head_dim, 4 // groups
    with torch.no_grad():  # K/V heads equal within each group of the target layout
        for layer in model.attention_layers:
            w, b = layer.split_qkv(layer.qkv_proj.weight), layer.split_qkv(layer.qkv_proj.bias)
            for part in (w[1], w[2], b[1], b[2]):  # K and V (views into the fused parameter)
                for h in range(4):
                    src = (h // size) * size
                    part[h * hs : (h + 1) * hs] = part[src * hs : (src + 1) * hs].clone()
    data = batch()
    gqa = convert_to_gqa(model, groups, init)
    assert gqa.attention_layers[0].n_kv_heads == groups
    torch.testing.assert_close(logits(gqa, data), logits(model, data), atol=1e-5, rtol=1e-5)


def test_gqa_mean_pools_and_expansion_is_exact() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny())
    gqa = convert_to_gqa(model, 2, "mean")
    hs = model.cfg.head_dim

    def k_weight(m: Transformer) -> torch.Tensor:
        return m.blocks[0].attn.split_qkv(m.blocks[0].attn.qkv_proj.weight)[1]

    w, g = k_weight(model), k_weight(gqa)
    torch.testing.assert_close(  # queries untouched
        gqa.blocks[0].attn.split_qkv(gqa.blocks[0].attn.qkv_proj.weight)[0],
        model.blocks[0].attn.split_qkv(model.blocks[0].attn.qkv_proj.weight)[0],
    )
    torch.testing.assert_close(g[:hs], (w[:hs] + w[hs : 2 * hs]) / 2)
    torch.testing.assert_close(g[hs:], (w[2 * hs : 3 * hs] + w[3 * hs :]) / 2)
    back = convert_to_gqa(gqa, 4)  # GQA -> MHA copies each K/V head: same function
    data = batch()
    torch.testing.assert_close(logits(back, data), logits(gqa, data), atol=1e-5, rtol=1e-5)
    rand = convert_to_gqa(model, 2, "random", seed=3)
    rk = k_weight(rand)
    assert rk.shape == g.shape and not torch.allclose(rk, g)


def test_load_init_converts_mha_checkpoint(trained_ckpt: Path) -> None:
    target = tiny(n_heads=8, n_kv_heads=2)
    module = LMModule(target, {})
    validate_init(trained_ckpt, target, "mean")
    report = load_init(module, trained_ckpt, target, gqa_init="mean")
    assert report["converted_layers"] == [0, 1] and report["kv_heads_after"] == [2, 2]
    want = convert_to_gqa(load_model(trained_ckpt), 2, "mean")
    data = batch()
    torch.testing.assert_close(logits(module.model, data), logits(want, data))


def test_init_errors(trained_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^init_from=.*no such file"):
        validate_init(tmp_path / "missing.ckpt", tiny(n_heads=8))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ConfigError, match=r"^init_from=.*not an mhaexp checkpoint"):
        load_init(LMModule(tiny(n_heads=8), {}), foreign, tiny(n_heads=8))
    with pytest.raises(ConfigError, match=r"^model\.n_kv_heads=3 .*must divide n_heads=8"):
        convert_to_gqa(load_model(trained_ckpt), 3)
    with pytest.raises(ConfigError, match=r"^model\.n_kv_heads=3"):
        validate_init(trained_ckpt, tiny(n_heads=8, n_kv_heads=3))
    wide = tiny(n_heads=8, d_ff=48)
    with pytest.raises(ConfigError) as e:
        load_init(LMModule(wide, {}), trained_ckpt, wide)
    msg = str(e.value)
    assert msg.startswith("init_from=") and "blocks.0.mlp.fc.weight" in msg and "(32, 32)" in msg and "(48, 32)" in msg
    with pytest.raises(ConfigError, match=r"^gqa_init="):
        validate_init(trained_ckpt, tiny(n_heads=8, n_kv_heads=2), "median")


def test_init_quality_callback_logs_before_and_after(trained_ckpt: Path, tmp_path: Path) -> None:
    from mhaexp.heads.evaluation import evaluate
    from mhaexp.training.init_from import InitQualityCallback

    target = tiny(n_heads=8, n_kv_heads=1)  # MQA from the MHA checkpoint
    module = LMModule(target, {"lr": 1e-3, "warmup_steps": 1})
    report = load_init(module, trained_ckpt, target)
    held_out = [batch(4, seed=s) for s in (5, 6)]
    cb = InitQualityCallback(trained_ckpt, report, run_dir=tmp_path, batches=held_out)
    fit(module, tmp_path, steps=1, callbacks=[cb])
    assert cb.result["init/source_val_loss"] == pytest.approx(evaluate(load_model(trained_ckpt), held_out)[0])
    assert cb.result["init/converted_val_loss"] != cb.result["init/source_val_loss"]
    assert (tmp_path / "init_conversion.json").is_file()
