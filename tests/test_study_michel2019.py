"""michel2019's verdicts on fixture results: eval/pruning_curves.json and the trained runs' head tables, as
the study writes them (a passing, a failing and an inconclusive case)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_studies import fake_run

from mhaexp.cli.study import preflight
from mhaexp.errors import ConfigError
from mhaexp.studies import get_study
from mhaexp.studies.michel2019 import CURVES_FILE, RANDOM_ORDERS, free_fraction
from mhaexp.studies.runner import Budget, StudyContext

FRACTIONS = [i / 12 for i in range(11)]  # e.g. 24 heads pruned 2 at a time


def curve(slope: float) -> list[dict]:
    return [{"fraction_pruned": f, "val_loss": 2.0 + slope * f} for f in FRACTIONS]


def michel_ctx(tmp_path: Path, importance_slopes: list[float], rho_sign: float) -> StudyContext:
    """One seed per entry of ``importance_slopes``: the importance curve's loss rise per fraction pruned,
    against random orders rising 0.5 to 0.69; importance and ablation ranked alike (1) or reversed (-1)."""
    ctx = StudyContext("michel2019", tmp_path, Budget(seeds=len(importance_slopes)))
    results = []
    for seed, slope in enumerate(importance_slopes):
        rows = [(100, 0, h, "importance", float(h)) for h in range(4)]
        rows += [(100, 0, h, "ablation", rho_sign * h + 0.01 * seed) for h in range(4)]
        run = fake_run(ctx.runs_dir / "train", seed, {"seed": seed}, rows)
        results.append(
            {
                "run": str(run),
                "seed": seed,
                "sequences": {"rank": 500, "measure": 500},
                "curves": {"importance": curve(slope), "importance, not normalised": curve(0.3), "ablation": curve(0)},
                "random": [curve(0.5 + 0.01 * k) for k in range(RANDOM_ORDERS)],
                "first_scores": {
                    "importance": [[0.1, 0.9], [0.5, 0.6]],
                    "importance_normalised": [[0.2, 0.95], [0.1, 0.99]],
                    "ablation": [[0.01, 0.5], [0.9, 0.2]],
                },
            }
        )
    ctx.eval_path(CURVES_FILE).write_text(json.dumps(results))
    return ctx


def test_free_fraction_stops_at_the_first_fraction_over_one_percent() -> None:
    points = [{"fraction_pruned": f, "val_loss": v} for f, v in [(0, 2.0), (0.1, 2.01), (0.2, 2.03), (0.3, 2.0)]]
    assert free_fraction(points) == 0.1


def test_importance_far_below_every_random_order_holds(tmp_path: Path) -> None:
    ctx = michel_ctx(tmp_path, [0.01, 0.02], 1.0)
    better, share, agree = get_study("michel2019").verdicts(ctx)
    assert (better.holds, share.holds, agree.holds) == (True, True, True)
    # 10 fractions all beaten: the exact one-sided signed-rank p is 1 / 2**10
    assert better.ours["Wilcoxon p over fractions"].values == pytest.approx((2**-10, 2**-10))
    assert better.ours["share of random orders beaten at 0.50"].values == (1.0, 1.0)
    assert share.ours["importance"].values == pytest.approx((10 / 12, 10 / 12))
    assert share.ours["importance, not normalised"].values == (0.0, 0.0)  # 2 + 0.3 / 12 > 2.02
    assert agree.ours.values == pytest.approx((1.0, 1.0))
    assert all(c.criterion_source for c in (better, share, agree))
    study = get_study("michel2019")
    study.plot(ctx)
    assert (tmp_path / "pruning_curves.png").stat().st_size > 1000
    notes = [n for n in study.notes(ctx) if n.startswith("seed ")]  # the per-seed notes, after the history
    # normalised, L1H0 (0.1) goes first and is the costliest to ablate (0.9); unnormalised, L0H0 is the cheapest
    assert "normalised importance: L1H0, 1 of 4" in notes[0] and "normalisation: L0H0, 4 of 4" in notes[0]


def test_importance_above_random_orders_does_not_hold(tmp_path: Path) -> None:
    better, share, agree = get_study("michel2019").verdicts(michel_ctx(tmp_path, [2.0, 1.5], -1.0))
    assert (better.holds, share.holds, agree.holds) == (False, False, False)
    assert better.ours["share of random orders beaten at 0.50"].values == (0.0, 0.0)


def test_seeds_that_disagree_are_inconclusive(tmp_path: Path) -> None:
    better, share, _ = get_study("michel2019").verdicts(michel_ctx(tmp_path, [0.01, 2.0], 1.0))
    assert better.holds is None and "seeds disagree" in better.why
    assert share.holds is None


def test_curves_rank_on_one_half_and_measure_on_the_other() -> None:
    import torch

    from mhaexp.heads.evaluation import evaluate
    from mhaexp.nn.model import ModelConfig, Transformer
    from mhaexp.pruning.curves import compute_pruning_curve
    from mhaexp.pruning.held_out import split_held_out

    g = torch.Generator().manual_seed(0)
    batches = [
        {"input_ids": torch.randint(0, 32, (4, 10), generator=g), "attention_mask": torch.ones(4, 10, dtype=torch.bool)}
        for _ in range(3)
    ]
    rank, measure = split_held_out(batches)
    assert (len(rank), len(measure)) == (1, 2) and measure[0] is batches[1]
    one_rank, one_measure = split_held_out(batches[:1])  # one batch: split by its rows
    assert torch.equal(one_rank[0]["input_ids"], batches[0]["input_ids"][:2])
    assert torch.equal(one_measure[0]["input_ids"], batches[0]["input_ids"][2:])

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=32, n_layers=2, d_model=32, n_heads=4, d_ff=32, max_seq_len=16))
    held_out = compute_pruning_curve(model, rank, "importance", step_fraction=0.25, eval_batches=measure)
    same = compute_pruning_curve(model, rank, "importance", step_fraction=0.25)
    assert held_out[0]["val_loss"] == pytest.approx(evaluate(model, measure)[0])
    assert same[0]["val_loss"] == pytest.approx(evaluate(model, rank)[0]) != held_out[0]["val_loss"]
    assert [p["heads_pruned"] for p in held_out] == [p["heads_pruned"] for p in same] == [0, 2, 4, 6]


def test_the_preflight_checks_overrides_against_the_model_the_study_trains() -> None:
    study = get_study("michel2019")
    preflight(study.preflight_overrides(Budget()) + ["model.n_kv_heads=16"])  # 16 K/V heads of 16: valid here
    with pytest.raises(ConfigError, match="n_kv_heads"):
        preflight(study.preflight_overrides(Budget()) + ["model.n_kv_heads=5"])
