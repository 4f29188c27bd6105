"""The ``tlens`` bench section's two sides compute the same numbers (TransformerLens is the optional
``bench`` extra: skipped without it). Its speed and memory are measured by the bench, not here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mhaexp.tools.bench import tlens as bench_tlens

pytest.importorskip("transformer_lens")


def test_transformer_lens_and_mhaexp_agree_on_every_heads_three_scores(tmp_path: Path) -> None:
    directory = tmp_path / "hf"
    bench_tlens.build(directory, bench_tlens.QUICK_SHAPE)
    assert json.loads((directory / "config.json").read_text())["n_layer"] == 2
    seqs = bench_tlens.texts(3, 40, bench_tlens.QUICK_SHAPE["vocab_size"])
    bridge = bench_tlens.tlens_model(directory)
    ids = bridge.to_tokens(seqs).cpu()
    assert torch.equal(ids, bench_tlens.tlens_ids(directory, seqs)) and ids.shape == (3, 40)
    assert torch.equal(ids[:, 1:20], ids[:, 21:40])  # each text is a half repeated: induction has targets
    theirs = bench_tlens.tlens_scores(bridge, seqs)
    ours = bench_tlens.ours_scores(bench_tlens.ours_model(directory), ids)
    assert ours.shape == theirs.shape == (3, 2, 4)
    assert float((theirs - ours).abs().max()) < 1e-5
    assert float(ours[2].max()) > 0  # induction scores are not all zero: the comparison is not vacuous
