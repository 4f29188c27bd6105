"""head_count's verdict on fixture runs: the gain of the first quadrupling of heads against the last, paired
within each seed (holds, does not hold, seeds disagree)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_studies import fake_run

from mhaexp.studies import get_study
from mhaexp.studies.runner import Budget, StudyContext


def head_count_runs(tmp_path: Path, losses: dict[int, list[float]]) -> StudyContext:
    """One run per (head count, seed): best val loss ``losses[h][seed]``."""
    ctx = StudyContext("head_count", tmp_path, Budget())
    num = 0
    for h, per_seed in losses.items():
        for seed, loss in enumerate(per_seed):
            fake_run(
                ctx.runs_dir / "sweep", num, {"seed": seed, "model": {"n_heads": h}}, summary={"best_val_loss": loss}
            )
            num += 1
    return ctx


def test_diminishing_returns_paired_by_seed(tmp_path: Path) -> None:
    # Seed 2 is worse at every head count, beyond seed 0's gains: unpaired ranges would overlap.
    shrinking = {1: [2.10, 2.11, 2.30], 4: [2.08, 2.09, 2.28], 16: [2.075, 2.085, 2.27]}
    ctx = head_count_runs(tmp_path / "a", shrinking)
    study = get_study("head_count")
    assert study.default_seeds == 3 and study.heads(ctx) == (1, 4, 16)
    (claim,) = study.verdicts(ctx)
    assert claim.holds is True and claim.criterion_source.startswith("the seed document")
    assert claim.ours["1->4"].values == pytest.approx((0.02, 0.02, 0.02))
    assert claim.ours["4->16"].values == pytest.approx((0.005, 0.005, 0.01))
    assert claim.ours["first minus last (1->4 minus 4->16)"].values == pytest.approx((0.015, 0.015, 0.01))
    study.plot(ctx)
    assert (tmp_path / "a" / "loss_vs_heads.png").stat().st_size > 1000


def test_growing_returns_do_not_hold_and_disagreeing_seeds_are_inconclusive(tmp_path: Path) -> None:
    growing = {1: [2.10, 2.11, 2.12], 4: [2.09, 2.10, 2.11], 16: [2.00, 2.01, 2.02]}
    (claim,) = get_study("head_count").verdicts(head_count_runs(tmp_path / "a", growing))
    assert claim.holds is False and "below zero" in claim.why
    mixed = {1: [2.10, 2.11, 2.12], 4: [2.05, 2.10, 2.07], 16: [2.04, 2.00, 2.06]}
    (claim,) = get_study("head_count").verdicts(head_count_runs(tmp_path / "b", mixed))
    assert claim.holds is None and "not every seed" in claim.why
