"""The registry of metrics and roles (mhaexp.analysis.registry): a metric added there alone reaches the
tables, the heatmaps and W&B; the role bars live in the YAML only; standard errors over sequences and
the interval rule of the roles."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

from mhaexp.analysis import registry
from mhaexp.heads.patterns import Chunk, Ratio, sink_sums

ROOT = Path(__file__).resolve().parents[1]
YAML = yaml.safe_load((ROOT / "conf" / "analysis" / "default.yaml").read_text())
DATA = {"kind": "grammar", "seq_len": 16, "n_train": 200, "n_val": 32, "n_probe": 16, "batch_size": 16}


def self_attention_sums(chunk: Chunk) -> Ratio:
    """A toy metric: the attention each real query pays to itself, pooled over queries."""
    w = chunk.mask.float()
    weighted = chunk.patterns.diagonal(dim1=-2, dim2=-1) * w[:, None]  # (B, H, T)
    return Ratio(weighted.sum(dim=(0, 2)), w.sum(), math.nan, weighted.sum(2), w.sum(1))


TOY = registry.Metric("self_attention", self_attention_sums, units="attention on the query itself")


def test_a_metric_added_to_the_registry_alone_reaches_the_csv_the_heatmap_and_wandb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wandb_records: Callable[[Path], list[dict]]
) -> None:
    os.environ.setdefault("WANDB_SILENT", "true")
    import pytorch_lightning as pl
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    from mhaexp.analysis import plots
    from mhaexp.analysis.callback import build_analysis_callback
    from mhaexp.analysis.collect import compute_head_metrics, probe_from_datamodule
    from mhaexp.data import LMDataModule
    from mhaexp.nn.model import ModelConfig
    from mhaexp.training.module import LMModule

    monkeypatch.setattr(registry, "METRICS", [*registry.METRICS, TOY])
    pl.seed_everything(0, verbose=False)
    dm = LMDataModule(**DATA, cache_dir=str(tmp_path / "cache"))
    cfg = ModelConfig(vocab_size=dm.vocab_size, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=32)
    module = LMModule(cfg, {"lr": 3e-3, "warmup_steps": 2}, pad_id=dm.tokenizer.pad_id, mask_id=dm.tokenizer.mask_id)
    callback = build_analysis_callback({**YAML, "every_n_steps": 4, "max_pictures": 1}, dm, tmp_path)
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=[WandbLogger(project="mhaexp-test", save_dir=str(tmp_path), mode="offline")],
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    try:
        trainer.fit(module, datamodule=dm)
    finally:
        wandb.finish()

    # head_metrics.csv: one row per head and analysis step, with its standard error over the 16 probe sentences.
    tidy = pd.read_csv(tmp_path / "analysis" / "head_metrics.csv")
    toy = tidy[tidy["metric"] == "self_attention"]
    assert sorted(set(toy.step)) == [0, 4] and len(toy) == 2 * 2 * 4
    assert toy.value.between(0, 1).all() and (toy.se > 0).all() and (toy.n == DATA["n_probe"]).all()
    # W&B: the value and its standard error, the same numbers.
    rows = {
        int(r["history"]["item"]["trainer/global_step"]): r["history"]["item"]
        for r in wandb_records(next((tmp_path / "wandb").glob("offline-run-*")))
        if r.get("type") == "history" and "roles/unassigned" in r["history"]["item"]
    }
    last = toy[(toy.step == 4) & (toy.layer == 1) & (toy["head"] == 3)].iloc[0]
    assert rows[4]["heads/L01H03/self_attention"] == pytest.approx(last.value, rel=1e-6)
    assert rows[4]["heads/L01H03/self_attention_se"] == pytest.approx(last.se, rel=1e-6)
    # The heatmap has its panel, on the registry's scale, with its units under the colour bar.
    assert (tmp_path / "analysis" / "heatmaps.png").is_file()
    hm = compute_head_metrics(module.model, probe_from_datamodule(dm, 1), {**YAML}, expensive=False)
    panels = {name: (scale, label) for name, _, scale, label, _ in plots.heatmap_panels(hm)}
    assert panels["self_attention"] == ((0.0, 1.0), "attention on the query itself")
    # ... and the number it draws is the toy metric's: attention on the diagonal, pooled over real queries.
    batch = probe_from_datamodule(dm, 1).batches[0]
    with torch.no_grad():
        _, patterns = module.model.eval()(batch["input_ids"], attention_mask=batch["attention_mask"], need_weights=True)
    mask = batch["attention_mask"].bool()
    diagonal = patterns[1].diagonal(dim1=-2, dim2=-1)  # (B, H, T), layer 1
    expected = (diagonal * mask[:, None]).sum(dim=(0, 2)) / mask.sum()
    torch.testing.assert_close(hm.metrics["self_attention"][1], expected.float(), rtol=1e-5, atol=1e-6)


def test_the_role_bars_have_one_home_the_yaml() -> None:
    from mhaexp.analysis.config import AnalysisConfig, Thresholds

    # The dataclass has one field per role bar of the registry, its default the YAML's value.
    assert [f.name for f in dataclasses.fields(Thresholds)] == list(registry.bars())
    assert {f.name: f.default for f in dataclasses.fields(Thresholds)} == YAML["thresholds"]
    # Built without thresholds, the config takes the YAML's; a partial mapping, the YAML's for the rest.
    assert dataclasses.asdict(AnalysisConfig().thresholds) == YAML["thresholds"]
    partial = AnalysisConfig(thresholds={"sink": 0.4}).thresholds
    assert partial.sink == 0.4 and partial.broad == YAML["thresholds"]["broad"]
    # The metric functions take their threshold as a required argument.
    from mhaexp.heads import patterns

    for fn, arg in [(patterns.sink_rate, "eps"), (patterns.positional_heads, "threshold")]:
        with pytest.raises(TypeError, match=arg):
            fn(torch.full((1, 1, 3, 3), 1 / 3))


def test_the_standard_error_is_over_sequences() -> None:
    """Three sequences of 2, 3 and 4 real queries: the sink score pools their queries, and its standard
    error is the ratio estimator's over the three sequences (scipy's sem of the linearised values)."""
    T, first = 4, [[0.5, 0.1], [0.9, 0.8, 0.7], [0.2, 0.3, 0.1, 0.4]]
    patterns = torch.zeros(3, 1, T, T)
    mask = torch.zeros(3, T, dtype=torch.bool)
    for b, column in enumerate(first):
        for q, a in enumerate(column):
            patterns[b, 0, q, 0], patterns[b, 0, q, 1] = a, 1 - a
            mask[b, q] = True
    value, se, n = sink_sums(Chunk(patterns, mask, causal=False)).stats()
    sums, counts = np.array([sum(c) for c in first]), np.array([len(c) for c in first])
    mean = sums.sum() / counts.sum()
    assert value.item() == pytest.approx(mean)
    assert se.item() == pytest.approx(stats.sem((sums - mean * counts) / counts.mean()), rel=1e-5)
    assert n.item() == 3
    # Streamed in chunks of sequences, the same value and standard error.
    parts = [sink_sums(Chunk(patterns[i : i + 1], mask[i : i + 1], causal=False)) for i in range(3)]
    streamed = sum(parts).stats()
    assert streamed[0].item() == pytest.approx(value.item()) and streamed[1].item() == pytest.approx(se.item())
    # One sequence: no standard error.
    assert math.isnan(parts[0].stats()[1].item())


def _classify(metrics: dict[str, Any], se: dict[str, Any]) -> set[str]:
    from mhaexp.analysis.roles import classify_heads

    tensors = {k: torch.tensor(v) for k, v in metrics.items()}
    roles = classify_heads(tensors, YAML["thresholds"], ["nsubj"], {k: torch.tensor(v) for k, v in se.items()})
    return {r.role for r in roles}


def test_a_role_needs_its_bar_cleared_at_the_lower_end_of_the_interval() -> None:
    # Induction bar 0.5: 0.55 - 2 x 0.02 clears it, 0.55 - 2 x 0.04 does not; no SE known: no role.
    assert "induction" in _classify({"prefix_matching": [[0.55]]}, {"prefix_matching": [[0.02]]})
    assert "induction" not in _classify({"prefix_matching": [[0.55]]}, {"prefix_matching": [[0.04]]})
    assert "induction" not in _classify({"prefix_matching": [[0.55]]}, {"prefix_matching": [[math.nan]]})
    # Sink: strictly above 0.3 at the lower end.
    assert "sink" in _classify({"sink": [[0.36]]}, {"sink": [[0.02]]})
    assert "sink" not in _classify({"sink": [[0.36]]}, {"sink": [[0.03]]})
    # A margin over a baseline: accuracy 0.8 over 0.6 by at least 0.1, at the lower end.
    syntax = {"syntactic_accuracy": [[[0.8]]], "syntactic_baseline": [0.6]}
    assert "syntactic:nsubj" in _classify(syntax, {"syntactic_accuracy": [[[0.04]]]})
    assert "syntactic:nsubj" not in _classify(syntax, {"syntactic_accuracy": [[[0.06]]]})
    # Weight-only metrics have no standard error: their score is exact.
    assert "copying" in _classify({"copying": [[0.51]]}, {})


def test_the_head_table_prints_the_interval() -> None:
    assert registry.role_interval("syntactic:nsubj", 0.98, 0.02, 0.64) == "syntactic:nsubj 0.98 ± 0.02 (+0.64)"
    assert registry.role_interval("copying", 0.61, math.nan, 0.11) == "copying 0.61 (+0.11)"


def test_every_role_reads_a_registered_metric_and_every_family_has_a_colour() -> None:
    names = {m.name for m in registry.METRICS}
    assert all(r.metric in names for r in registry.ROLES)
    assert set(registry.family_colours()) == set(registry.role_families())
