"""``mhaexp.tools.probe_stability``: per-head rank agreement between disjoint probes."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest


def test_agreement_is_spearman_over_the_heads_both_probes_score() -> None:
    from mhaexp.tools.probe_stability import agreement

    a = {(0, 0): 0.1, (0, 1): 0.5, (1, 0): 0.3, (1, 1): 0.9}
    assert agreement(a, {k: 2 * v for k, v in a.items()}) == (1.0, 4, "")
    assert agreement(a, {k: -v for k, v in a.items()}) == (-1.0, 4, "")
    # (0, 1) and (1, 0) swap ranks: 1 - 6 * (1 + 1) / (4 * 15)
    swapped = {**a, (0, 1): 0.3, (1, 0): 0.5}
    assert agreement(a, swapped)[0] == pytest.approx(0.8)
    rho, heads, note = agreement(a, {k: 0.5 for k in a})
    assert math.isnan(rho) and (heads, note) == (4, "constant")
    rho, heads, note = agreement(a, {**{k: math.nan for k in a}, (0, 0): 1.0})  # NaN heads are left out
    assert math.isnan(rho) and (heads, note) == (1, "undefined")


def test_stability_compares_disjoint_probes_of_each_size(tmp_path: Path) -> None:
    from mhaexp.analysis.collect import probe_from_datamodule
    from mhaexp.analysis.config import AnalysisConfig
    from mhaexp.data import LMDataModule
    from mhaexp.nn.model import ModelConfig, Transformer
    from mhaexp.tools.probe_stability import stability

    dm = LMDataModule(
        kind="grammar", seq_len=16, n_train=40, n_val=8, n_probe=32, batch_size=16, cache_dir=str(tmp_path)
    )
    dm.prepare_data()
    model = Transformer(ModelConfig(vocab_size=dm.vocab_size, n_layers=2, d_model=16, n_heads=2, max_seq_len=32))
    settings = AnalysisConfig(induction_sequences=4, js_sequences=4)
    rows = stability(model, probe_from_datamodule(dm, 32), settings, [4, 8], pairs=2)
    by = {(r.metric, r.n): r for r in rows}
    assert {n for _, n in by} == {4, 8} and all(1 <= r.pairs <= 2 for r in rows)
    assert (by[("entropy", 4)].heads, by[("entropy", 4)].pairs) == (4, 2)
    assert by[("copying", 8)].spearman == 1.0  # weights only: every probe gives the same values
    assert {"entropy", "ablation", "importance", "js_nearest", "syntactic_accuracy/det"} <= {m for m, _ in by}
    assert not any(m.startswith("mds_") for m, _ in by)  # an embedding's axes do not compare
    assert by[("syntactic_accuracy/det", 8)].arcs > by[("syntactic_accuracy/det", 4)].arcs > 0
    for r in rows:
        assert (r.note != "") == math.isnan(r.spearman) and (math.isnan(r.spearman) or -1 <= r.spearman <= 1)


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["sizes=64,abc", "ckpt=x.ckpt"], "sizes='64,abc' is invalid: comma-separated positive sequence counts"),
        (["pairs=0", "ckpt=x.ckpt"], "pairs='0' is invalid: a positive number of disjoint probe pairs"),
        (["sizes=64"], "ckpt=None is invalid: required"),
    ],
)
def test_bad_input_is_one_line(words: list[str], message: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mhaexp.tools.probe_stability", *words], capture_output=True, text=True, cwd=tmp_path
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
