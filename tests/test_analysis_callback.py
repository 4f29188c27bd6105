"""The analysis callback inside a real (tiny) training run, read back from the offline W&B run and the
run directory; the offline CLI on the checkpoint that run saved."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

# Module-scoped fixtures: one worker runs the whole module under pytest-xdist (make test).
pytestmark = pytest.mark.xdist_group("test_analysis_callback")

ROOT = Path(__file__).resolve().parents[1]
DATA = {"kind": "grammar", "seq_len": 16, "n_train": 200, "n_val": 32, "n_probe": 24, "batch_size": 16}
STEPS, EVERY, PROBE = 20, 10, 24


def analysis_cfg(**kw: Any) -> dict[str, Any]:
    cfg = yaml.safe_load((ROOT / "conf" / "analysis" / "default.yaml").read_text())
    # Expensive tier (ablation, JS, pictures) at every periodic analysis (10) and at the end (20); the
    # analysis at the start is always cheap.
    cfg.update(every_n_steps=EVERY, expensive_every=1, probe_sequences=PROBE, max_pictures=1)
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, wandb_records: Callable[[Path], list[dict]]) -> dict[str, Any]:
    os.environ.setdefault("WANDB_SILENT", "true")
    import pytorch_lightning as pl
    import wandb
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    from mhaexp.analysis.callback import AnalysisCallback, build_analysis_callback
    from mhaexp.data import LMDataModule
    from mhaexp.nn.model import ModelConfig
    from mhaexp.training.module import LMModule

    root = tmp_path_factory.mktemp("run")
    pl.seed_everything(0, verbose=False)
    dm = LMDataModule(**DATA, cache_dir=str(root / "cache"))
    cfg = ModelConfig(vocab_size=dm.vocab_size, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=32)
    module = LMModule(cfg, {"lr": 3e-3, "warmup_steps": 5}, pad_id=dm.tokenizer.pad_id, mask_id=dm.tokenizer.mask_id)
    callback = build_analysis_callback(analysis_cfg(), dm, root)
    assert isinstance(callback, AnalysisCallback)
    # Every explicit-attention forward (need_weights=True) returns a pattern: count them, by batch size.
    calls: list[int] = []

    def record_pattern(m: torch.nn.Module, args: tuple, kwargs: dict, out: tuple) -> None:
        if out[1] is not None:
            calls.append(out[1].shape[0])

    for layer in module.model.attention_layers:
        layer.register_forward_hook(record_pattern, with_kwargs=True)
    loggers = [
        CSVLogger(save_dir=str(root), name="", version=""),
        WandbLogger(project="mhaexp-test", save_dir=str(root), mode="offline"),
    ]
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=loggers,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=5,
        check_val_every_n_epoch=None,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        log_every_n_steps=5,
    )
    try:
        trainer.fit(module, datamodule=dm)
        trainer.save_checkpoint(root / "last.ckpt")
    finally:
        wandb.finish()
    [wandb_dir] = list((root / "wandb").glob("offline-run-*"))
    records = wandb_records(wandb_dir)
    return {
        "root": root,
        "callback": callback,
        "calls": calls,
        "records": records,
        "wandb_dir": wandb_dir,
        "data": dm,
        "n_layers": cfg.n_layers,
    }


def history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def analysis_rows(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """History rows that carry the analysis, by trainer/global_step."""
    return {int(h["trainer/global_step"]): h for h in history(records) if "roles/unassigned" in h}


def test_analysis_steps_and_probe_only_patterns(run: dict[str, Any]) -> None:
    cb = run["callback"]
    assert [(s, e) for s, e, _ in cb.timings] == [(0, False), (10, True), (20, True)]
    # Only the callback asks for patterns, and only on probe sequences: per analysis, each probe sentence
    # once (the probe batches run in row groups of similar length) and the repeated random sequences
    # (induction) once, through every layer. Training and validation batches never return a pattern. The
    # per-step analysis at step 0 reads at most step_probe_sequences of the random sequences, the full ones all.
    cfg = analysis_cfg()
    induction, step_induction = cfg["induction_sequences"], min(cfg["induction_sequences"], cfg["step_probe_sequences"])
    probe_sentences = 24  # in batches of 16 and 8, in both tiers (the probe set holds no more)
    per_layer = (probe_sentences + step_induction) + 2 * (probe_sentences + induction)
    assert step_induction < induction and sum(run["calls"]) == per_layer * run["n_layers"]
    assert {induction, step_induction} <= set(run["calls"])
    assert max(c for c in run["calls"] if c not in (induction, step_induction)) <= 16


def test_wandb_holds_per_head_scalars_table_and_images(run: dict[str, Any]) -> None:
    rows = analysis_rows(run["records"])
    assert sorted(rows) == [0, 10, 20]
    final = rows[20]
    for key in (
        "heads/L00H00/induction",
        "heads/L01H03/positional_frac",
        "heads/L00H02/importance",
        "heads/L01H01/syntactic_accuracy/nsubj",
        "heads/L00H01/ablation",
        "heads/L01H00/copying",
        "baselines/syntactic_baseline/nsubj",
        "roles/positional",
        "roles/unassigned",
    ):
        assert key in final, key
    assert "heads/L00H00/ablation" in rows[10] and "heads/L00H00/ablation" not in rows[0]  # cheap at the start
    assert "analysis/role_grid._type" in rows[10] and "analysis/role_grid._type" not in rows[0]
    assert final["analysis/head_roles._type"] == "table-file"
    assert final["analysis/head_roles.ncols"] == 6 and final["analysis/head_roles.nrows"] >= 8
    for image in ("role_grid", "heatmaps", "patterns_L00", "mds", "syntactic"):
        assert final[f"analysis/{image}._type"] == "image-file", image
        assert (run["wandb_dir"] / "files" / final[f"analysis/{image}.path"]).is_file()
    assert "analysis/patterns_L01._type" not in final  # max_pictures=1
    table = json.loads((run["wandb_dir"] / "files" / final["analysis/head_roles.path"]).read_text())
    assert table["columns"] == ["layer", "head", "roles", "scores", "ses", "margins"]
    assert sorted((r[0], r[1]) for r in table["data"]) == [(layer, h) for layer in range(2) for h in range(4)]
    # Each role's score comes with its standard error, the same as head_roles.csv's at the last step.
    csv = pd.read_csv(run["root"] / "analysis" / "head_roles.csv")
    csv = csv[csv["step"] == csv["step"].max()]
    for layer, head, roles, scores, ses, _ in table["data"]:
        mine = csv[(csv["layer"] == layer) & (csv["head"] == head)]
        assert roles.split(", ") == list(mine["role"])
        want = ["" if math.isnan(v) else f"{v:.3g}" for v in mine["se"]]
        assert ses.split(", ") == want and len(want) == len(scores.split(", "))
    assert any(float(v) > 0 for row in table["data"] for v in row[4].split(", ") if v)  # broad: entropy's SE
    summaries = [r["summary"]["update"] for r in run["records"] if r.get("type") == "summary"]
    last = {k: v for s in summaries for k, v in s.items()}
    assert sum(last[f"roles/{f}"] for f in ("unassigned",)) >= 0 and "roles/broad" in last


def test_tidy_table_matches_wandb(run: dict[str, Any]) -> None:
    analysis = run["root"] / "analysis"
    tidy = pd.read_csv(analysis / "head_metrics.csv")
    assert list(tidy.columns) == ["step", "layer", "head", "metric", "value", "se", "n"]
    rows = analysis_rows(run["records"])
    checked = 0
    for step, layer, head, metric in [
        (0, 0, 0, "entropy"),
        (10, 1, 3, "induction"),
        (20, 0, 1, "prev_token_attn"),
        (20, 1, 2, "syntactic_accuracy/det"),
        (20, 0, 3, "ablation"),
    ]:
        # tidy["head"], not tidy.head: DataFrame.head is a method.
        sel = tidy[
            (tidy["step"] == step) & (tidy["layer"] == layer) & (tidy["head"] == head) & (tidy["metric"] == metric)
        ]
        assert len(sel) == 1
        key = f"heads/L{layer:02d}H{head:02d}/{metric}"
        value = float(sel.value.iloc[0])
        if math.isnan(value):
            assert key not in rows[step]
        else:
            assert rows[step][key] == pytest.approx(value, rel=1e-6, abs=1e-9)
            checked += 1
    assert checked >= 3
    # Standard errors over the probe's sequences (24 of them) reach W&B as <key>_se; weight-only copying has none.
    entropy = tidy[(tidy["step"] == 20) & (tidy["layer"] == 1) & (tidy["head"] == 2) & (tidy["metric"] == "entropy")]
    se = float(entropy.se.iloc[0])
    assert 0 < se < float(entropy.value.iloc[0]) and int(entropy.n.iloc[0]) == DATA["n_probe"]
    assert rows[20]["heads/L01H02/entropy_se"] == pytest.approx(se, rel=1e-6)
    copying = tidy[tidy["metric"] == "copying"]
    assert copying.se.isna().all() and copying.n.isna().all()
    # Importance and ablation: intervals over the probe's sentences too (heads.importance.SentenceValues).
    for metric in ("importance", "ablation"):
        final = tidy[(tidy["step"] == 20) & (tidy["metric"] == metric)]
        assert len(final) == 8 and (final.se > 0).all() and (final.n == DATA["n_probe"]).all(), metric
    assert "heads/L01H02/copying_se" not in rows[20] and "heads/L01H02/copying" in rows[20]
    # One write per step and metric: no duplicates although the end of fit re-ran step 20 expensively.
    assert not tidy.duplicated(["step", "layer", "head", "metric"]).any()


def test_run_dir_tables_markdown_and_csv_log(run: dict[str, Any]) -> None:
    analysis = run["root"] / "analysis"
    roles = pd.read_csv(analysis / "head_roles.csv")
    assert list(roles.columns) == ["step", "layer", "head", "role", "family", "score", "margin", "se"]
    assert set(roles.step) == {20} and {(r.layer, r.head) for r in roles.itertuples()} == {
        (layer, h) for layer in range(2) for h in range(4)
    }
    history_roles = pd.read_csv(analysis / "head_roles_history.csv")
    assert sorted(set(history_roles.step)) == [0, 10, 20]
    assert not history_roles.duplicated(["step", "layer", "head", "role"]).any()
    summary = json.loads((analysis / "summary.json").read_text())
    assert summary == {"analysis_step": 20, **{f"roles/{k}": v for k, v in run["callback"].role_counts.items()}}
    md = (analysis / "analysis.md").read_text()
    assert "![role grid](role_grid.png)" in md and "| 1 | 3 |" in md
    metrics = pd.read_csv(run["root"] / "metrics.csv")
    assert "roles/unassigned" in metrics.columns
    assert not any(c.startswith("heads/") for c in metrics.columns)  # per-head scalars stay in the tidy table


def test_analysis_off_builds_no_callback(tmp_path: Path, compose: Callable[[list[str]], Any]) -> None:
    from mhaexp.analysis.callback import build_analysis_callback

    off = compose(["analysis=off"]).analysis  # off.yaml inherits every other key from default.yaml
    assert build_analysis_callback(off, object(), tmp_path) is None


def test_analyze_cli_on_the_checkpoint(run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mhaexp.cli.analyze import main
    from mhaexp.data import generate_corpus, write_conllu

    ckpt = run["root"] / "last.ckpt"
    data = [f"data.{k}={v}" for k, v in DATA.items() if k != "kind"] + [f"data.cache_dir={run['root'] / 'cache'}"]
    main([f"ckpt={ckpt}", f"out={tmp_path / 'a'}", "max_pictures=0", f"probe_sequences={PROBE}", *data])
    printed = capsys.readouterr().out
    assert "step 20" in printed and "24 probe sequences" in printed
    roles = pd.read_csv(tmp_path / "a" / "head_roles.csv")
    tidy = pd.read_csv(tmp_path / "a" / "head_metrics.csv")
    assert set(roles.step) == {20} and {"ablation", "induction", "js_nearest"} <= set(tidy.metric)
    # Same checkpoint, same probe set and settings as the final in-training analysis: same numbers.
    trained = pd.read_csv(run["root"] / "analysis" / "head_metrics.csv")
    key = ["step", "layer", "head", "metric"]
    both = trained[trained.step == 20].merge(tidy, on=key, suffixes=("_fit", "_cli"))
    sel = both[both.metric.isin(["induction", "entropy", "syntactic_accuracy/nsubj", "copying"])].dropna()
    assert len(sel) >= 24 and (sel.value_fit - sel.value_cli).abs().max() < 1e-5
    assert (tmp_path / "a" / "role_grid.png").is_file() and (tmp_path / "a" / "analysis.md").is_file()

    conllu = tmp_path / "probe.conllu"
    write_conllu(conllu, generate_corpus(6, seed=3, max_len=12))
    # Six sentences: every relation has fewer arcs than the default min_arcs.
    main([f"ckpt={ckpt}", f"conllu={conllu}", f"out={tmp_path / 'c'}", "max_pictures=0", "min_arcs=1"])
    printed = capsys.readouterr().out
    assert "conllu=" in printed and "treebank: 6 of 6 sentences scored" in printed
    assert "syntactic_accuracy/nsubj" in set(pd.read_csv(tmp_path / "c" / "head_metrics.csv").metric)


@pytest.mark.parametrize(
    "args, field",
    [
        (["ckpt={tmp}/missing.ckpt"], "ckpt"),
        (["ckpt={tmp}/notours.ckpt"], "ckpt"),
        (["ckpt={ckpt}", "conllu={tmp}/missing.conllu"], "conllu"),
        (["ckpt={ckpt}", "data=nope"], "data"),
        (["out=x"], "ckpt"),
    ],
)
def test_analyze_cli_errors(
    run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], field: str
) -> None:
    from mhaexp.cli.analyze import main

    torch.save({"state_dict": {}}, tmp_path / "notours.ckpt")
    argv = [a.format(tmp=tmp_path, ckpt=run["root"] / "last.ckpt") for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mhaexp-analyze: error: {field}=") and " is invalid: " in err[0]


# ------------------------------------------------------------------------------------------------
# Pieces of the collection, without training
# ------------------------------------------------------------------------------------------------


def test_predictive_arcs_and_derived_amod_pred() -> None:
    from mhaexp.data.grammar import RELATIONS
    from mhaexp.heads.patterns import derived_amod_pred, predictive_arcs

    # <bos> the cats that sat on the mat were fluffy <eos>
    #   0    1   2    3    4  5   6   7    8     9     10
    heads = torch.tensor([[-1, 2, 8, 4, 2, 4, 7, 5, -1, 8, -1]])
    names = ["", "det", "nsubj", "nsubj", "acl:relcl", "prep", "det", "pobj", "root", "acomp", ""]
    rels = torch.tensor([[RELATIONS.index(n) if n else -1 for n in names]])
    nsubj = torch.where(rels == RELATIONS.index("nsubj"), heads, -1)
    # "were" (8) is predicted at "mat" (7), which needs "cats" (2); "that" -> "sat" is adjacent: dropped.
    assert predictive_arcs(nsubj).tolist() == [[-1, -1, -1, -1, -1, -1, -1, 2, -1, -1, -1]]
    pobj = torch.where(rels == RELATIONS.index("pobj"), heads, -1)
    assert predictive_arcs(pobj).tolist() == [[-1, -1, -1, -1, -1, -1, 5, -1, -1, -1, -1]]  # "the" -> "on"
    # The predicate adjective agrees with the copula's subject: "fluffy" -> "cats".
    assert derived_amod_pred(heads, rels, RELATIONS).tolist() == [[-1] * 9 + [2, -1]]


def cheap_analysis(model: Any, dm: Any, out: Path) -> Any:
    """The cheap tier on the first 8 probe sequences of ``dm``, no pictures: the HeadMetrics."""
    from mhaexp.analysis.callback import analysis_settings, run_analysis
    from mhaexp.analysis.collect import probe_from_datamodule

    settings = analysis_settings(analysis_cfg())
    return run_analysis(model, probe_from_datamodule(dm, 8), settings, out, 0, expensive=False, pictures=False)[0]


def test_pruned_layers_are_nan_padded_and_left_out(tmp_path: Path) -> None:
    from mhaexp.analysis.callback import analysis_settings, run_analysis
    from mhaexp.analysis.collect import probe_from_datamodule
    from mhaexp.data import LMDataModule
    from mhaexp.heads.importance import group_ablation, group_importance
    from mhaexp.nn.model import ModelConfig, Transformer

    dm = LMDataModule(**{**DATA, "n_train": 40, "n_val": 8, "n_probe": 8}, cache_dir=str(tmp_path / "cache"))
    cfg = ModelConfig(
        vocab_size=dm.vocab_size,
        n_layers=2,
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        layer_n_heads=[4, 2],
        layer_n_kv_heads=[2, 1],
        d_ff=64,
        max_seq_len=32,
    )
    model = Transformer(cfg)
    hm, roles, rows, images = run_analysis(
        model,
        probe_from_datamodule(dm, 8),
        analysis_settings(analysis_cfg()),
        tmp_path / "a",
        0,
        expensive=True,
        pictures=True,
    )
    assert hm.n_heads == [4, 2] and hm.metrics["induction"].shape == (2, 4)
    assert torch.isnan(hm.metrics["induction"][1, 2:]).all() and not torch.isnan(hm.metrics["induction"][0]).any()
    assert hm.js is not None and hm.js.shape == (6, 6) and hm.mds is not None and hm.mds.shape == (6, 2)
    assert {(r.layer, r.head) for r in roles} == {(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)}
    assert {(r["layer"], r["head"]) for r in rows if r["head"] >= 0} == {(r.layer, r.head) for r in roles}
    # GQA group diversity per layer (layer 1 is MQA: one group, so nothing "across").
    assert {"gqa_within", "gqa_across", "gqa_ratio"} <= set(hm.layer_metrics)
    assert math.isnan(float(hm.layer_metrics["gqa_across"][1]))
    # Group importance and group ablation sit beside the per-head figures: every query head of a KV group
    # shows its group's value, which is the group's own measure (not a sum of its heads').
    probe = probe_from_datamodule(dm, 8)
    batches = [{k: v for k, v in b.items()} for b in probe.batches]
    for key, fn in (("group_importance", group_importance), ("group_ablation", group_ablation)):
        per_group = fn(model, batches, probe.objective)
        got = hm.metrics[key]
        assert torch.allclose(got[0, :4], per_group[0].repeat_interleave(2), rtol=1e-4, atol=1e-6), key
        assert torch.allclose(got[1, :2], per_group[1].repeat_interleave(2), rtol=1e-4, atol=1e-6), key
        assert torch.isnan(got[1, 2:]).all()
    # The group ablation has its standard error over probe sentences, as the per-head ablation does.
    ses = [r["se"] for r in rows if r["metric"] == "group_ablation"]
    assert len(ses) == 6 and all(math.isfinite(v) and v > 0 for v in ses)
    assert [r["value"] for r in rows if r["metric"] == "massive_count"] == [0.0, 0.0]
    assert {"role_grid", "heatmaps", "mds", "patterns_L00"} <= set(images)
    # Gates: a head switched off has no OV circuit.
    model.blocks[0].attn.head_gate[1] = 0.0
    hm2 = cheap_analysis(model, dm, tmp_path / "b")
    assert math.isnan(float(hm2.metrics["copying"][0, 1]))
    # The same classification feeds the pruner's role criterion.
    from mhaexp.analysis.callback import build_roles_provider

    provided = build_roles_provider(analysis_cfg(), dm)(model, [])
    assert {(r.layer, r.head) for r in provided} == {(r.layer, r.head) for r in roles}


def test_stop_at_a_cheap_step_finishes_expensive_without_duplicates(tmp_path: Path) -> None:
    """max_epochs ends fit at step 10, which got a cheap analysis on the per-step probe (4 sequences): the end
    analyses it again, both tiers on the full probe (8), whose rows replace the per-step ones."""
    import pytorch_lightning as pl

    from mhaexp.analysis.callback import analysis_settings, build_analysis_callback
    from mhaexp.analysis.collect import compute_head_metrics, probe_from_datamodule
    from mhaexp.analysis.export import drop_after
    from mhaexp.data import LMDataModule
    from mhaexp.nn.model import ModelConfig
    from mhaexp.training.module import LMModule

    dm = LMDataModule(**{**DATA, "n_train": 160, "n_val": 8, "n_probe": 8}, cache_dir=str(tmp_path / "cache"))
    cfg = ModelConfig(vocab_size=dm.vocab_size, n_layers=1, d_model=16, n_heads=2, d_ff=32, max_seq_len=32)
    settings = analysis_cfg(
        expensive_every=0, at_start=False, max_pictures=0, probe_sequences=8, step_probe_sequences=4
    )
    cb = build_analysis_callback(settings, dm, tmp_path)
    module = LMModule(cfg, {"lr": 1e-3})
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=[cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    assert [(s, e) for s, e, _ in cb.timings] == [(10, False), (10, True)]
    tidy = pd.read_csv(tmp_path / "analysis" / "head_metrics.csv")
    assert not tidy.duplicated(["step", "layer", "head", "metric"]).any() and "ablation" in set(tidy["metric"])
    probes = {n: probe_from_datamodule(dm, n) for n in (4, 8)}
    entropy = {
        n: compute_head_metrics(module.model, p, analysis_settings(settings).to_dict(), expensive=False)
        .metrics["entropy"][0]
        .tolist()
        for n, p in probes.items()
    }
    assert entropy[4] != pytest.approx(entropy[8], abs=1e-6)  # the two probes tell the rows apart
    assert tidy[tidy.metric == "entropy"].sort_values("head").value.tolist() == pytest.approx(entropy[8], abs=1e-6)
    history = pd.read_csv(tmp_path / "analysis" / "head_roles_history.csv")
    assert set(history["step"]) == {10} and not history.duplicated(["layer", "head", "role"]).any()
    # Resuming from an earlier checkpoint drops the rows written after it.
    drop_after(tmp_path / "analysis", 5)
    assert pd.read_csv(tmp_path / "analysis" / "head_metrics.csv").empty


def test_analysis_does_not_change_training(tmp_path: Path) -> None:
    """Same weights with and without the callback: a masked-LM model with dropout, so every random draw
    of training (masks, dropout, shuffling) would show a shifted generator."""
    import pytorch_lightning as pl

    from mhaexp.analysis.callback import build_analysis_callback
    from mhaexp.data import LMDataModule
    from mhaexp.nn.model import ModelConfig
    from mhaexp.training.module import LMModule

    weights = []
    for analyse in (False, True):
        dm = LMDataModule(**{**DATA, "n_train": 96, "n_val": 8, "n_probe": 8}, cache_dir=str(tmp_path / "cache"))
        pl.seed_everything(0, verbose=False)
        cfg = ModelConfig(
            vocab_size=dm.vocab_size,
            n_layers=1,
            d_model=16,
            n_heads=2,
            d_ff=32,
            max_seq_len=32,
            dropout=0.1,
            causal=False,
        )
        module = LMModule(cfg, {"lr": 1e-3}, pad_id=dm.tokenizer.pad_id, mask_id=dm.tokenizer.mask_id)
        callbacks = [build_analysis_callback(analysis_cfg(every_n_steps=3, max_pictures=0), dm, tmp_path)]
        trainer = pl.Trainer(
            max_steps=6,
            accelerator="cpu",
            logger=False,
            callbacks=callbacks if analyse else [],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(module, datamodule=dm)
        weights.append(module.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_csv_text_writes_what_pandas_writes() -> None:
    """The tables' writer skips building a DataFrame; the text must be the same cell for cell: NaN and
    None empty, floats in shortest repr, strings with commas quoted, numpy scalars as plain numbers."""
    import numpy as np

    from mhaexp.analysis.export import ROLE_COLUMNS, csv_text

    rows = [
        {
            "step": 0,
            "layer": 1,
            "head": 2,
            "role": "syntactic:nsubj",
            "family": "syntactic",
            "score": 0.1 + 0.2,
            "margin": float("nan"),
        },
        {
            "step": 10,
            "layer": -1,
            "head": -1,
            "role": 'a,b "c"',
            "family": "x",
            "score": np.float64(1e-12),
            "margin": None,
        },
        {"step": 20, "layer": 0, "head": 0, "role": "unassigned", "family": "unassigned", "score": 3.0, "margin": -0.5},
    ]
    expected = pd.DataFrame(rows, columns=list(ROLE_COLUMNS)).to_csv(index=False)
    assert csv_text(rows, ROLE_COLUMNS) == expected
    assert csv_text(rows, ROLE_COLUMNS, header=False) == expected.split("\n", 1)[1]


def test_a_run_started_again_from_step_0_in_its_directory_writes_its_tables_once(tmp_path: Path) -> None:
    """A run killed before its first checkpoint starts afresh in the same directory (resume=auto finds no
    checkpoint): its tables start empty, not appended to the killed attempt's rows."""
    import pytorch_lightning as pl

    from mhaexp.analysis.callback import build_analysis_callback
    from mhaexp.data import LMDataModule
    from mhaexp.nn.model import ModelConfig
    from mhaexp.training.module import LMModule

    dm = LMDataModule(**{**DATA, "n_train": 160, "n_val": 8, "n_probe": 8}, cache_dir=str(tmp_path / "cache"))
    cfg = ModelConfig(vocab_size=dm.vocab_size, n_layers=1, d_model=16, n_heads=2, d_ff=32, max_seq_len=32)
    sizes = []
    for _ in range(2):
        cb = build_analysis_callback(analysis_cfg(expensive_every=0, max_pictures=0), dm, tmp_path)
        trainer = pl.Trainer(
            max_steps=10,
            accelerator="cpu",
            logger=False,
            callbacks=[cb],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        pl.seed_everything(0, verbose=False)
        trainer.fit(LMModule(cfg, {"lr": 1e-3}), datamodule=dm)
        sizes.append(
            [(tmp_path / "analysis" / name).stat().st_size for name in ("head_metrics.csv", "head_roles_history.csv")]
        )
    assert sizes[0] == sizes[1] and min(sizes[0]) > 0
    tidy = pd.read_csv(tmp_path / "analysis" / "head_metrics.csv")
    assert set(tidy["step"]) == {0, 10} and not tidy.duplicated(["step", "layer", "head", "metric"]).any()


def test_each_tier_reads_its_probe_size(tmp_path: Path) -> None:
    """Full analyses read probe_sequences sequences (and the whole treebank, or treebank_max_sentences of it),
    per-step ones the first step_probe_sequences of them (and as many treebank sentences at most)."""
    from mhaexp.analysis.callback import analysis_settings, tier_probe
    from mhaexp.data import LMDataModule, generate_corpus, write_conllu
    from mhaexp.nn.model import ModelConfig, Transformer

    dm = LMDataModule(**{**DATA, "n_train": 40, "n_val": 8, "n_probe": 24}, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    model = Transformer(ModelConfig(vocab_size=dm.vocab_size, n_layers=1, d_model=16, n_heads=2, max_seq_len=32))
    gold = tmp_path / "gold.conllu"
    write_conllu(gold, generate_corpus(30, seed=7, max_len=9))

    def sizes(**kw: Any) -> tuple[int, int]:
        cfg = analysis_settings(analysis_cfg(probe_sequences=20, step_probe_sequences=5, **kw))
        return tier_probe(cfg, dm, model, full=True).n_sequences, tier_probe(cfg, dm, model, full=False).n_sequences

    assert sizes() == (20, 5)
    assert sizes(treebank=str(gold)) == (20 + 30, 5 + 5)
    assert sizes(treebank=str(gold), treebank_max_sentences=12) == (20 + 12, 5 + 5)
    cfg = analysis_settings(analysis_cfg(probe_sequences=20, step_probe_sequences=5))
    full, step = tier_probe(cfg, dm, model), tier_probe(cfg, dm, model, full=False)
    assert [len(b["input_ids"]) for b in full.batches] == [16, 4]  # the data's batches, the last one cut
    assert torch.equal(step.batches[0]["input_ids"], full.batches[0]["input_ids"][:5])  # its first sequences
    # A probe set that holds fewer than asked (a short held-out text, data.probe_conllu): read whole, said.
    with pytest.warns(UserWarning, match="the probe set holds 24 sequences, fewer than analysis.probe_sequences=30"):
        assert tier_probe(analysis_settings(analysis_cfg(probe_sequences=30)), dm, model).n_sequences == 24


def test_copying_reads_the_datas_tokens_not_padded_embedding_rows(tmp_path: Path) -> None:
    from mhaexp.data import LMDataModule
    from mhaexp.heads.weights import copying_score
    from mhaexp.nn.model import ModelConfig, Transformer

    dm = LMDataModule(**{**DATA, "n_train": 40, "n_val": 8, "n_probe": 8}, cache_dir=str(tmp_path / "cache"))
    V = dm.vocab_size
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V + 16, n_layers=1, d_model=32, n_heads=4, d_ff=64, max_seq_len=32)
    model = Transformer(cfg)
    with torch.no_grad():  # rows past the tokenizer, as an imported table padded to a multiple of 64
        model.tok_emb.weight[V:] = 50.0 * torch.randn(16, 32)
    hm = cheap_analysis(model, dm, tmp_path / "a")
    attn = model.attention_layers[0]
    W_V = attn.split_qkv(attn.qkv_proj.weight.detach())[2].view(4, 8, 32).transpose(1, 2)
    W_O = attn.o_proj.weight.detach().view(32, 4, 8).permute(1, 2, 0)
    W_E, W_U = model.tok_emb.weight.detach(), model.lm_head.weight.detach().T
    real = copying_score(W_E[:V], W_U[:, :V], W_V, W_O)
    torch.testing.assert_close(hm.metrics["copying"][0], real, atol=1e-5, rtol=0)
    assert not torch.allclose(real, copying_score(W_E, W_U, W_V, W_O), atol=1e-3)  # the padding would move it
