"""The streamed probe analysis gives today's numbers: the per-head metrics of the default model against a
reference computed by the full-pattern analysis before streaming (``tests/data/analysis_reference.pt``, see
``tests/data/make_analysis_reference.py``), with the probe in one micro-batch and in micro-batches of a few
sequences; no pattern of more sequences than a micro-batch is ever computed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

# Module-scoped fixtures: one worker runs the whole module under pytest-xdist (make test).
pytestmark = pytest.mark.xdist_group("test_analysis_stream")

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "analysis_reference.pt"
# Registered after the reference (attn_punct appears only on a probe with punctuation, not the grammar's).
LATER_METRICS = ("attn_cls", "attn_sep", "attn_punct")


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_analysis_reference", REFERENCE.with_name("make_analysis_reference.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from mhaexp.analysis.collect import probe_from_datamodule
    from mhaexp.data import LMDataModule

    gen = _generator()
    dm = LMDataModule(**gen.DATA, cache_dir=str(tmp_path_factory.mktemp("cache")))
    dm.prepare_data()
    return {
        "probe": probe_from_datamodule(dm, 128),
        "models": gen.models(dm.vocab_size),
        "reference": torch.load(REFERENCE),
        "cfg": gen.analysis_settings(),
    }


def _close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape, name
    assert torch.equal(got.isnan(), want.isnan()), f"{name}: NaN in other places"
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True), (
        f"{name}: max |diff| {(got - want).abs().nan_to_num(0).max().item():.3g}"
    )


# 3 sequences of 8 heads x 37 x 37 per micro-batch: 43 micro-batches for the 128 probe sequences.
@pytest.mark.parametrize(
    ("state", "chunk_elements"),
    [("init", None), ("sharp", None), ("sharp", 3 * 8 * 37 * 37)],
    ids=["untrained, one micro-batch", "peaked, one micro-batch", "peaked, 3 sequences"],
)
def test_streamed_metrics_equal_the_full_pattern_reference(setup: dict, state: str, chunk_elements: int | None) -> None:
    from mhaexp.analysis.collect import PATTERN_CHUNK_ELEMENTS, compute_head_metrics
    from mhaexp.heads.importance import gradient_importance

    model, ref = setup["models"][state], setup["reference"][state]
    seen: list[int] = []  # batch size of every pattern the model computes
    hooks = [
        a.register_forward_hook(lambda m, i, o: seen.append(o[1].shape[0]) if o[1] is not None else None)
        for a in model.attention_layers
    ]
    torch.manual_seed(0)
    try:
        hm = compute_head_metrics(
            model, setup["probe"], setup["cfg"], chunk_elements=chunk_elements or PATTERN_CHUNK_ELEMENTS
        )
    finally:
        for h in hooks:
            h.remove()
    # Metrics registered after the reference was frozen have no full-pattern twin here; their own
    # known-answer tests live beside them (attention to [CLS]/[SEP]: tests/test_study_clark2019.py).
    later = [k for k in hm.metrics if k not in ref["metrics"]]
    assert later == [k for k in LATER_METRICS if k in hm.metrics] and "attn_cls" in later
    assert [k for k in hm.metrics if k not in later] == list(ref["metrics"])
    for key, want in ref["metrics"].items():
        if key == "importance":  # redefined after the reference was made (issue 28): the plain whole-batch estimate
            want = torch.stack(gradient_importance(model, setup["probe"].batches))
        _close(key, hm.metrics[key], want)
    assert hm.relation_names == ref["relation_names"] and hm.syntactic_direction == ref["syntactic_direction"]
    assert "syntactic_accuracy" in hm.metrics and "rare_word" in hm.metrics and "coreference" in hm.metrics
    _close("js", hm.js, ref["js"])
    _close("mds", hm.mds, ref["mds"])
    # The streamed forwards run other matmul shapes (row groups, micro-batches) than the full reference:
    # equal to float rounding, which depends on the CPU's kernels, not bit for bit.
    for layer, (got, want) in enumerate(zip(hm.example_patterns, ref["example_patterns"], strict=True)):
        _close(f"example pattern, layer {layer}", got, want)
    # Probe: 2 batches of 64, then 32 induction sequences (one micro-batch each when the budget allows; the
    # shared importance forward runs each batch in row groups of similar length, cut to their longest);
    # the ablation forwards of the expensive tier compute no pattern.
    assert seen and (max(seen) <= 64 if chunk_elements is None else max(seen) == 3)
    assert sum(seen) == 3 * (128 + 32)  # every probe and induction sequence once, in each of the 3 layers


def test_layer_patterns_are_the_forward_patterns(setup: dict) -> None:
    model = setup["models"]["sharp"]
    batch = setup["probe"].batches[0]
    ids, mask = batch["input_ids"][:5], batch["attention_mask"][:5]
    with torch.no_grad():
        _, full = model(ids, attention_mask=mask, need_weights=True)
        streamed = list(model.layer_patterns(ids, mask))
    assert len(streamed) == len(full) == len(model.blocks)
    for a, b in zip(streamed, full, strict=True):
        assert torch.equal(a, b)


def test_gradient_importance_in_micro_batches_is_the_whole_batch_gradient(setup: dict) -> None:
    from mhaexp.heads.importance import gradient_importance

    model, probe = setup["models"]["sharp"], setup["probe"]
    whole = gradient_importance(model, probe.batches)
    T = probe.batches[0]["input_ids"].shape[1]
    parts = gradient_importance(model, probe.batches, max_tokens=5 * T)  # 13 micro-batches per batch
    for a, b in zip(whole, parts, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        assert bool((a > 0).all())


def test_bench_memory_rows_measure_one_step_in_a_fresh_process() -> None:
    from mhaexp.tools.bench.analysis import memory_rows

    rows = memory_rows(2, seq_lens=(64,))
    assert [r.metric for r in rows] == ["peak memory", "time per analysis step"]
    peak, took = rows
    # A step this small may stay inside the high-water mark the imports and the model already set: >= 0.
    assert peak.unit == "MB" and 0 <= peak.median < 2000 and peak.target is None
    assert peak.extra["full_patterns_mb"] == 4 * 2 * 8 * 64 * 64 * 4 / 2**20
    assert took.unit == "s" and took.median > 0


def test_row_groups_cut_the_padding_and_give_the_whole_batch_numbers(setup: dict) -> None:
    from mhaexp.heads.evaluation import group_extent, row_groups
    from mhaexp.heads.importance import ablation_importance, gradient_importance

    model = setup["models"]["sharp"]
    batch = setup["probe"].batches[0]
    mask = batch["attention_mask"]
    groups = row_groups(mask)
    assert sorted(torch.cat(groups).tolist()) == list(range(mask.shape[0]))  # every row once
    extents = [group_extent(mask, g) for g in groups]
    assert extents == sorted(extents) and extents[-1] == int(mask.sum(1).max())
    assert sum(len(g) * t for g, t in zip(groups, extents, strict=True)) < 0.8 * mask.numel()  # mostly pads
    whole = gradient_importance(model, [batch])
    grouped = gradient_importance(model, [batch], groups=[groups])
    for a, b in zip(whole, grouped, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)
    cut = [{k: batch[k][g, :t] for k in ("input_ids", "attention_mask")} for g, t in zip(groups, extents, strict=True)]
    for a, b in zip(ablation_importance(model, [batch]), ablation_importance(model, cut), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
