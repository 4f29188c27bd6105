"""Pruning schedules, rankings, L0 gates, the pruning callback (with a real tiny Trainer) and validation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader

from mhaexp import ConfigError, ModelConfig, Transformer
from mhaexp.heads.importance import ablation_importance, attention_entropy, entropy_scores
from mhaexp.nn.io import load_model
from mhaexp.nn.objectives import IGNORE, causal_lm_objective
from mhaexp.pruning import l0 as l0mod
from mhaexp.pruning import schedules as sch
from mhaexp.pruning.callback import PruningCallback, build_pruning_callback, validate_pruning
from mhaexp.pruning.criteria import random_scores, role_scores
from mhaexp.pruning.curves import compute_pruning_curve, plot_pruning_curves, read_curve_csv, write_curve_csv
from mhaexp.pruning.surgery import apply_mask
from mhaexp.training.module import LMModule

V, T = 32, 10


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: thread start-up and contention on a shared 2-core box cost far more than they save."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**kw: Any) -> ModelConfig:
    base = dict(vocab_size=V, n_layers=2, d_model=32, n_heads=4, d_ff=32, max_seq_len=16)
    base.update(kw)
    return ModelConfig(**base)


def batch(b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, T, dtype=torch.bool)
    mask[0, 6:] = False
    return {"input_ids": torch.randint(0, V, (b, T), generator=g), "attention_mask": mask}


def loader(n: int = 16) -> DataLoader:
    rows = [{k: v[0] for k, v in batch(1, seed=100 + i).items()} for i in range(n)]
    return DataLoader(rows, batch_size=4)


HELD_OUT = [batch(seed=1), batch(seed=2)]


# ---------------------------------------------------------------------------------------------
# schedules (pure)
# ---------------------------------------------------------------------------------------------


def test_one_shot_and_iterative_counts() -> None:
    assert [sch.one_shot_target(s, 3, 5) for s in range(6)] == [0, 0, 0, 5, 5, 5]
    assert sch.iterative_counts(16, 0.1, 7) == [2, 4, 6, 7]  # d = round(1.6) = 2, last step cut
    assert sch.iterative_counts(8, 0.25, 0) == []
    assert sch.iterative_steps(10, 3, 5) == [10, 15, 20]
    assert sch.fraction_to_count(0.5, 12) == 6 and sch.fraction_to_count(0.3, 8) == 2


def test_gradual_follows_zhu_gupta_cubic() -> None:
    t0, t1, sf = 10, 30, 0.75
    for t in range(0, 40):
        got = sch.gradual_fraction(t, t0, t1, sf)
        if t < t0:
            want = 0.0
        else:
            want = sf + (0.0 - sf) * (1 - min(1.0, (t - t0) / (t1 - t0))) ** 3
        assert got == pytest.approx(want)
    # updates only every dt steps
    assert sch.gradual_fraction(14, t0, t1, sf, every=5) == sch.gradual_fraction(10, t0, t1, sf, every=5) == 0.0
    assert sch.gradual_fraction(15, t0, t1, sf, every=5) > 0
    targets = [sch.gradual_target(t, 16, t0, t1, 12) for t in range(0, 40)]
    assert targets == sorted(targets) and targets[t1] == 12 and targets[t0] == 0 and targets[-1] == 12


def test_selection_global_per_layer_and_min_heads() -> None:
    scores = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.9, 0.8, 0.05, 0.7])]
    assert sch.select_heads(scores, [], 3) == [(0, 0), (0, 1), (1, 2)]
    # min 3 per layer: each layer can lose one head only, so the target cannot be met in full
    assert sch.select_heads(scores, [], 3, min_heads_per_layer=3) == [(0, 0), (1, 2)]
    assert sch.select_heads(scores, [], 4, scope="per_layer") == [(0, 0), (0, 1), (1, 2), (1, 3)]
    # already pruned heads stay, only new ones are returned
    assert sch.select_heads(scores, [(1, 2)], 2) == [(0, 0)]
    # Michel's per-layer L2 normalization changes the global order
    scores = [torch.tensor([1.0, 2.0]), torch.tensor([10.0, 30.0])]
    assert sch.select_heads(scores, [], 1) == [(0, 0)]
    assert sch.select_heads(scores, [], 1, normalize=True) == [(1, 0)]
    assert sch.allocate_per_layer(5, [8, 4, 4], 1) == [3, 1, 1]
    with pytest.raises(ValueError):
        sch.allocate_per_layer(7, [4, 4], 1)


@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_min_heads_per_layer_always_respected(scope: str) -> None:
    scores = random_scores([6, 4, 2], seed=5)
    for target in range(0, sch.max_prunable([6, 4, 2], 2) + 1):
        chosen = sch.select_heads(scores, [], target, scope, min_heads_per_layer=2)
        assert len(chosen) == target
        for layer, n in enumerate([6, 4, 2]):
            assert n - sum(1 for i, _ in chosen if i == layer) >= 2


def test_random_order_is_seeded_and_nested() -> None:
    a, b, c = random_scores([4, 4], 7), random_scores([4, 4], 7), random_scores([4, 4], 8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    sets = [set(sch.select_heads(a, [], k)) for k in range(7)]
    assert all(sets[k] <= sets[k + 1] for k in range(6))


# ---------------------------------------------------------------------------------------------
# L0 gates
# ---------------------------------------------------------------------------------------------


def test_hard_concrete_formulas() -> None:
    la = torch.tensor([-3.0, -0.5, 0.0, 1.0, 4.0])
    beta, (l, r) = 1 / 3, (-0.1, 1.1)
    sig = torch.sigmoid
    torch.testing.assert_close(l0mod.prob_open(la), sig(la - beta * math.log(-l / r)))
    torch.testing.assert_close(l0mod.deterministic_gate(la), (sig(la) * (r - l) + l).clamp(0, 1))
    gate = l0mod.HardConcreteGate(5, log_alpha_init=0.0)
    with torch.no_grad():
        gate.log_alpha.copy_(la)
    torch.testing.assert_close(gate.expected_l0(), sig(la - beta * math.log(-l / r)).sum())
    gate.eval()
    torch.testing.assert_close(gate(), l0mod.deterministic_gate(la))
    assert float(gate()[0]) == 0.0 and float(gate()[-1]) == 1.0
    # a sample for given noise matches eq. 10 by hand
    u = torch.full((5,), 0.3)
    s = sig((math.log(0.3) - math.log(0.7) + la) / beta)
    torch.testing.assert_close(l0mod.sample_gate(la, u), (s * (r - l) + l).clamp(0, 1))
    gate.train()
    torch.manual_seed(0)
    draws = torch.stack([gate() for _ in range(2000)])
    assert draws.min() >= 0 and draws.max() <= 1
    # exact zeros happen with probability 1 - P(open)
    assert (draws != 0).float().mean(0).sub(gate.prob_open().detach()).abs().max() < 0.05
    gate.log_alpha.grad = None
    gate().sum().backward()
    assert gate.log_alpha.grad is not None


def test_folding_l0_gates_keeps_eval_function() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny())
    gates = l0mod.attach_l0_gates(model)
    with torch.no_grad():
        gates[0].log_alpha.copy_(torch.tensor([-5.0, 0.3, 5.0, 1.0]))
    data = batch()
    model.eval()
    with torch.no_grad():
        before = model(data["input_ids"])[0]
    closed = l0mod.fold_l0_gates(model)
    assert closed == [(0, 0)] and not l0mod.l0_gates(model)
    with torch.no_grad():
        torch.testing.assert_close(model(data["input_ids"])[0], before)


# ---------------------------------------------------------------------------------------------
# rankings
# ---------------------------------------------------------------------------------------------


def mean_loss(model: Transformer, batches: list[dict[str, torch.Tensor]]) -> float:
    total = count = 0.0
    with torch.no_grad():
        for b in batches:
            x, y = causal_lm_objective(b)
            out = model(x, attention_mask=b["attention_mask"])[0]
            total += float(F.cross_entropy(out.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum"))
            count += float((y != IGNORE).sum())
    return total / count


def test_ablation_matches_one_forward_per_head() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny(n_heads=4, n_kv_heads=2)).eval()
    apply_mask(model, [(1, 2)])
    base = mean_loss(model, HELD_OUT)
    got = ablation_importance(model, HELD_OUT, max_rows=8)  # 8 rows / B=4: two heads per batched pass
    for i, layer in enumerate(model.attention_layers):
        for h in range(4):
            saved = float(layer.head_gate[h])
            apply_mask(model, [(i, h)])
            want = mean_loss(model, HELD_OUT) - base
            layer.head_gate[h] = saved
            assert float(got[i][h]) == pytest.approx(want, abs=1e-5)
    assert float(got[1][2]) == 0.0


def test_entropy_and_role_scores() -> None:
    uniform = torch.full((1, 1, 4, 4), 0.25)
    peaked = torch.zeros(1, 1, 4, 4)
    peaked[..., 0] = 1.0
    ent = attention_entropy(torch.cat([uniform, peaked], dim=1))
    torch.testing.assert_close(ent, torch.tensor([math.log(4), 0.0]))
    torch.manual_seed(0)
    model = Transformer(tiny())
    scores = entropy_scores(model, HELD_OUT)
    assert [s.shape for s in scores] == [torch.Size([4])] * 2 and all((s <= 0).all() for s in scores)
    roles = [{"layer": 0, "head": 3, "role": "induction"}, {"layer": 1, "head": 0, "role": "unassigned"}]
    tiebreak = [torch.tensor([4.0, 3.0, 2.0, 1.0]), torch.tensor([0.0, 9.0, 8.0, 7.0])]
    rs = role_scores(roles, [4, 4], tiebreak)
    order = sch.select_heads(rs, [], 7)
    assert (0, 3) not in order  # the role holder is pruned last
    assert sch.select_heads(rs, [], 1) == [(1, 0)]  # lowest tie-break among role-less heads


# ---------------------------------------------------------------------------------------------
# the callback in a real (tiny) Trainer
# ---------------------------------------------------------------------------------------------


class GateRecorder(pl.Callback):
    """Zero gates per layer as each training step starts (after the pruning callback acted)."""

    def __init__(self) -> None:
        self.zeros: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.zeros[trainer.global_step] = [int((a.head_gate == 0).sum()) for a in pl_module.model.attention_layers]


def run_fit(
    cfg: dict[str, Any],
    tmp: Path,
    steps: int,
    model_cfg: ModelConfig | None = None,
    ckpt_path: str | None = None,
    extra: list[pl.Callback] | None = None,
    logger: Any = False,
) -> tuple[LMModule, PruningCallback, GateRecorder, pl.Trainer]:
    pl.seed_everything(0, verbose=False)
    model_cfg = model_cfg or tiny()
    module = LMModule(model_cfg, {"lr": 1e-2, "warmup_steps": 1})
    cb = build_pruning_callback(cfg, model_cfg, steps, tmp, batches=HELD_OUT)
    rec = GateRecorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=logger,
        enable_checkpointing=bool(extra),
        callbacks=[cb, rec, *(extra or [])],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(tmp),
        log_every_n_steps=1,
    )
    trainer.fit(module, train_dataloaders=loader(), ckpt_path=ckpt_path)
    return module, cb, rec, trainer


def test_one_shot_masks_at_step_and_writes_outputs(tmp_path: Path) -> None:
    logger = CSVLogger(str(tmp_path), name="", version="")
    module, cb, rec, _ = run_fit(
        {"kind": "one_shot", "at_step": 2, "count": 3, "criterion": "ablation"}, tmp_path, 4, logger=logger
    )
    assert [sum(rec.zeros[s]) for s in range(4)] == [0, 0, 3, 3]
    assert len(cb.pruned) == 3 and cb.events[0]["step"] == 2
    for name in ("pruned.ckpt", "pruning_curve.csv", "pruning_curve.png", "pruning.json"):
        assert (tmp_path / name).is_file()
    small = load_model(tmp_path / "pruned.ckpt")
    assert sum(a.n_heads for a in small.attention_layers) == 5
    data = HELD_OUT[0]
    with torch.no_grad():
        torch.testing.assert_close(
            small(data["input_ids"])[0], module.model.eval()(data["input_ids"])[0], atol=1e-5, rtol=1e-5
        )
    curve = read_curve_csv(tmp_path / "pruning_curve.csv")
    assert [p["heads_pruned"] for p in curve] == [0.0, 3.0]
    logged = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    row = next(r for r in logged if r.get("pruning/heads_pruned"))
    assert row["pruning/heads_pruned"] == "3.0" and row["pruning/pruned_heads"].count("H") == 3
    assert {"pruning/heads_remaining/L0", "pruning/val_loss", "pruning/val_acc"} <= set(row)
    assert json.loads((tmp_path / "pruning.json").read_text())["pruned"].count("H") == 3


def test_gradual_schedule_in_training(tmp_path: Path) -> None:
    cfg = {
        "kind": "gradual",
        "fraction": 0.75,
        "start_step": 1,
        "end_step": 5,
        "criterion": "random",
        "physical": False,
    }
    _, cb, rec, _ = run_fit(cfg, tmp_path, 6)
    want = [sch.gradual_target(s, 8, 1, 5, 6) for s in range(6)]
    assert [sum(rec.zeros[s]) for s in range(6)] == want and want[-1] == 6 and want[1] == 0
    assert len(cb.pruned) == 6


def test_iterative_with_finetuning_and_per_layer_floor(tmp_path: Path) -> None:
    cfg = {
        "kind": "iterative",
        "fraction": 0.5,
        "step_fraction": 0.25,
        "at_step": 1,
        "finetune_steps": 2,
        "criterion": "importance",
        "normalize_by_layer": True,
        "scope": "per_layer",
        "min_heads_per_layer": 2,
    }
    _, cb, rec, _ = run_fit(cfg, tmp_path, 5)
    assert [rec.zeros[s] for s in range(5)] == [[0, 0], [1, 1], [1, 1], [2, 2], [2, 2]]
    assert cb.finished and cb.iteration == 2


def test_iterative_quality_floor_undoes_the_step(tmp_path: Path) -> None:
    cfg = {
        "kind": "iterative",
        "fraction": 0.5,
        "step_fraction": 0.25,
        "at_step": 0,
        "criterion": "random",
        "quality_floor": 1.0,
        "floor_relative": False,
        "physical": False,
    }
    module, cb, rec, _ = run_fit(cfg, tmp_path, 2)
    assert cb.pruned == [] and sum(rec.zeros[0]) == 0 and cb.finished
    assert cb.curve[-1]["event"].endswith("_undone_below_floor")


def test_resume_restores_the_pruned_set(tmp_path: Path) -> None:
    ckpts = tmp_path / "ck"
    cfg = {"kind": "one_shot", "at_step": 1, "fraction": 0.25, "criterion": "random", "seed": 3, "physical": False}
    mc = ModelCheckpoint(dirpath=ckpts, every_n_train_steps=2, save_last=True)
    _, cb, _, _ = run_fit(cfg, tmp_path, 2, extra=[mc])
    first = list(cb.pruned)
    assert len(first) == 2
    # Resume into a fresh module (all gates 1) and a fresh callback: both must come back.
    _, cb2, rec2, _ = run_fit(
        cfg,
        tmp_path / "resumed",
        3,
        ckpt_path=str(ckpts / "last.ckpt"),
        extra=[ModelCheckpoint(dirpath=tmp_path / "ck2")],
    )
    assert cb2.pruned == first and cb2.finished and len(cb2.events) == 1
    assert sum(rec2.zeros[2]) == 2


def test_l0_training_prunes_closed_gates(tmp_path: Path) -> None:
    logger = CSVLogger(str(tmp_path), name="", version="")
    cfg = {"kind": "l0", "l0_lambda": 5.0, "log_alpha_init": 0.5}
    module, cb, _, _ = run_fit(cfg, tmp_path, 3, logger=logger)
    assert not l0mod.l0_gates(module.model)  # folded at the end
    logged = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert any(r.get("pruning/l0_open_heads") for r in logged)
    assert (tmp_path / "pruned.ckpt").is_file() and cb.events[-1]["reason"] == "l0_end"


def test_l0_gates_train_and_come_back_on_resume(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    cfg = {"kind": "l0", "l0_lambda": 1.0, "physical": False}
    mc = ModelCheckpoint(dirpath=ck, save_last=True, every_n_train_steps=2)
    run_fit(cfg, tmp_path, 2, extra=[mc])
    state = torch.load(ck / "last.ckpt", weights_only=False)["state_dict"]
    la = state["model.blocks.0.attn.gate_fn.log_alpha"]
    assert (la < 2.5).all()  # the penalty pushed every gate towards closed
    # a fresh L0 callback on resume reattaches the gates before the state loads
    module, _, _, _ = run_fit(
        cfg, tmp_path / "r", 3, ckpt_path=str(ck / "last.ckpt"), extra=[ModelCheckpoint(dirpath=tmp_path / "ck2")]
    )
    assert load_model(ck / "last.ckpt").attention_layers[0].n_heads == 4  # our loader folds gates


def test_l0_gate_lr_moves_the_gates_at_their_own_rate(tmp_path: Path) -> None:
    # Adam moves a parameter by about its learning rate per step, whatever the gradient's size.
    moved = {}
    for gate_lr in (None, 0.5):
        ck = tmp_path / str(gate_lr)
        cfg = {"kind": "l0", "l0_lambda": 1.0, "physical": False, "gate_lr": gate_lr}
        module, *_ = run_fit(cfg, ck, 2, extra=[ModelCheckpoint(dirpath=ck / "ck", save_last=True)])
        state = torch.load(ck / "ck" / "last.ckpt", weights_only=False)
        la = state["state_dict"]["model.blocks.0.attn.gate_fn.log_alpha"]
        moved[gate_lr] = float((2.5 - la).mean())
        lrs = [g["lr"] for g in state["optimizer_states"][0]["param_groups"]]
        assert len(lrs) == (2 if gate_lr is None else 3)
    # Two steps: about 2 x lr of movement for each (warmup scales both groups alike).
    assert moved[0.5] > 20 * moved[None] > 0


def test_role_criterion_without_provider_fails_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^pruning\.criterion='role'"):
        run_fit({"kind": "one_shot", "count": 1, "criterion": "role"}, tmp_path, 1)


def test_roles_provider_labels_pruned_heads(tmp_path: Path) -> None:
    model_cfg = tiny()
    module = LMModule(model_cfg, {"lr": 1e-2, "warmup_steps": 1})
    roles = [{"layer": i, "head": h, "role": "induction"} for i in range(2) for h in (0, 1)]
    cb = build_pruning_callback(
        {"kind": "one_shot", "at_step": 0, "count": 4, "criterion": "role"},
        model_cfg,
        1,
        tmp_path,
        batches=HELD_OUT,
        roles_provider=lambda model, batches: roles,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=loader())
    assert cb.pruned == [(0, 2), (0, 3), (1, 2), (1, 3)]


# ---------------------------------------------------------------------------------------------
# curves
# ---------------------------------------------------------------------------------------------


def test_curves_overlay_and_csv(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny())
    curves = {}
    for criterion in ("random", "importance"):
        points = compute_pruning_curve(model, HELD_OUT, criterion, step_fraction=0.25)
        assert [p["heads_pruned"] for p in points] == [0, 2, 4, 6]
        curves[criterion] = [(p["fraction_pruned"], p["val_acc"]) for p in points]
    assert all(float(a.head_gate.min()) == 1.0 for a in model.attention_layers)  # gates given back
    png = plot_pruning_curves(curves, tmp_path / "overlay.png")
    assert png.stat().st_size > 1000
    write_curve_csv(points, tmp_path / "c.csv")
    assert read_curve_csv(tmp_path / "c.csv")[-1]["heads_pruned"] == 6.0


# ---------------------------------------------------------------------------------------------
# validation: one ConfigError line naming the field
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, field",
    [
        ({"kind": "one_shot", "count": 9}, "pruning.count"),
        ({"kind": "one_shot", "fraction": 1.0}, "pruning.fraction"),
        ({"kind": "one_shot", "fraction": -0.1}, "pruning.fraction"),
        ({"kind": "one_shot"}, "pruning.count"),
        ({"kind": "one_shot", "count": 7}, "pruning.min_heads_per_layer"),
        ({"kind": "one_shot", "fraction": 0.5, "min_heads_per_layer": 3}, "pruning.min_heads_per_layer"),
        ({"kind": "one_shot", "count": 1, "min_heads_per_layer": 0}, "pruning.min_heads_per_layer"),
        ({"kind": "one_shot", "count": 1, "at_step": 101}, "pruning.at_step"),
        ({"kind": "gradual", "fraction": 0.5, "start_step": 10, "end_step": 200}, "pruning.end_step"),
        ({"kind": "gradual", "fraction": 0.5, "start_step": 10, "end_step": 5}, "pruning.end_step"),
        (
            {"kind": "iterative", "fraction": 0.5, "step_fraction": 0.125, "at_step": 50, "finetune_steps": 20},
            "pruning.finetune_steps",
        ),
        ({"kind": "iterative", "fraction": 0.5, "step_fraction": 0.0}, "pruning.step_fraction"),
        ({"kind": "iterative", "fraction": 0.5, "finetune_steps": 5}, "pruning.finetune_steps"),
        ({"kind": "l0", "l0_lambda": 0}, "pruning.l0_lambda"),
        ({"kind": "l0", "stretch": [0.1, 1.1]}, "pruning.stretch"),
        ({"kind": "l0", "fraction": 0.5}, "pruning.fraction"),
        ({"kind": "one_shot", "count": 1, "criterion": "magnitude"}, "pruning.criterion"),
        ({"kind": "one_shot", "count": 1, "scope": "layer"}, "pruning.scope"),
        ({"kind": "one_shot", "count": 1, "heads": 2}, "pruning.heads"),
        ({"kind": "prune"}, "pruning.kind"),
    ],
)
def test_bad_pruning_config(cfg: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate_pruning(cfg, tiny(), max_steps=100)
    assert e.value.field == field and "\n" not in str(e.value)


def test_good_configs_and_none() -> None:
    assert build_pruning_callback({"kind": "none"}, tiny(), 100, None) is None
    assert validate_pruning({"kind": "one_shot", "count": 6}, tiny(), 100).target_count(8) == 6
    assert (
        validate_pruning(
            {"kind": "iterative", "fraction": 0.5, "at_step": 0, "finetune_steps": 25, "step_fraction": 0.125},
            tiny(),
            100,
        ).kind
        == "iterative"
    )


@pytest.mark.parametrize("name", ["none", "one_shot", "iterative", "gradual", "l0"])
def test_shipped_configs_validate(name: str) -> None:
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf" / "pruning" / f"{name}.yaml"
    small = ModelConfig(vocab_size=V, n_layers=3, d_model=128, n_heads=8, d_ff=512)  # conf/model/small.yaml
    cfg = validate_pruning(OmegaConf.load(conf), small, max_steps=1500)  # conf/trainer/cpu.yaml
    assert cfg.kind == name


class ModuleWithExtraLosses(LMModule):
    """What LMModule looks like with the proposed ``extra_losses`` patch."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.extra_losses: dict[str, Any] = {}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss + sum(fn() for fn in self.extra_losses.values())


def test_l0_penalty_goes_through_extra_losses(tmp_path: Path) -> None:
    model_cfg = tiny()
    module = ModuleWithExtraLosses(model_cfg, {"lr": 1e-2, "warmup_steps": 1})
    cb = build_pruning_callback({"kind": "l0", "l0_lambda": 1.0, "physical": False}, model_cfg, 2, None, HELD_OUT)
    seen: list[float] = []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
            seen.append(float(pl_module.model.blocks[0].attn.gate_fn.log_alpha.mean()))

    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        callbacks=[cb, Spy()],
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=loader())
    assert cb._penalty_in_loss and seen[-1] < 2.5 and module.extra_losses == {}


def test_bench_section_runs() -> None:
    from mhaexp.tools.bench import SECTIONS, Args
    from mhaexp.tools.bench import pruning as pruning_bench

    assert SECTIONS["pruning"] is pruning_bench.bench_pruning
    assert pruning_bench.half_of_every_group(12, 3) == [(0, 0), (0, 1), (0, 4), (0, 5), (0, 8), (0, 9)]
    assert pruning_bench.half_of_every_group(8, 8) == [(0, h) for h in range(4)]
    rows = pruning_bench.bench_pruning(Args(quick=True, repeats=1, min_block_s=0.0, warmup=1))
    ratios = [r for r in rows if r.metric == "pruned/unpruned"]
    assert len(ratios) == 2 and all(r.target == "<= 0.6" and "-> h4" in r.case for r in ratios)
