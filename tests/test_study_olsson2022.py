"""olsson2022's phase-change claim: its width means something only when training went on past the climb, so
a climb still running after 60% of training is inconclusive, never false; a wide climb that ended in time
fails; a narrow one holds."""

from __future__ import annotations

from pathlib import Path

from test_studies import fake_run

from mhaexp.studies import get_study
from mhaexp.studies.olsson2022 import SATURATED, SHORT_WINDOW
from mhaexp.studies.runner import Budget, StudyContext

STEPS = 1000


def _runs(tmp_path: Path, climb: tuple[int, int]) -> StudyContext:
    """1 and 2 layers, two seeds, analysed every 50 of 1000 steps; the 2-layer best head's prefix matching
    climbs linearly from 0.05 to 0.9 between the steps ``climb``; the in-context gap falls with it."""
    ctx = StudyContext("olsson2022", tmp_path, Budget(steps=STEPS, seeds=2))
    lo, hi = climb
    num = 0
    for layers in (1, 2):
        for seed in (0, 1):
            rows, gap = [], []
            for s in range(0, STEPS + 1, 50):
                share = min(1.0, max(0.0, (s - lo) / (hi - lo)))
                rows.append((s, 0, 0, "prefix_matching", 0.05 if layers == 1 else 0.05 + 0.85 * share))
                if s:
                    gap.append({"step": s - 1, "val/icl_gap": 0.0 if layers == 1 else -1.5 * share})
            config = {"seed": seed, "model": {"n_layers": layers}, "analysis": {"thresholds": {"induction": 0.5}}}
            fake_run(ctx.runs_dir / "train", num, config, rows, gap)
            num += 1
    return ctx


def test_a_narrow_climb_that_ended_early_holds(tmp_path: Path) -> None:
    formed, phase, icl = get_study("olsson2022").verdicts(_runs(tmp_path, (300, 450)))
    assert (formed.holds, phase.holds, icl.holds) == (True, True, True)
    # 10% of the climb at 350 (0.05 + 0.085 reached at step 350 of the 50-step grid), 90% at 450.
    assert phase.ours["window"].values == (0.1, 0.1) and phase.ours["window end"].values == (0.45, 0.45)
    assert phase.criterion_source and icl.criterion_source and formed.criterion_source


def test_a_wide_climb_that_ended_early_does_not_hold(tmp_path: Path) -> None:
    phase = get_study("olsson2022").verdicts(_runs(tmp_path, (0, 550)))[1]
    assert phase.ours["window end"].values[0] <= SATURATED and phase.ours["window"].values[0] > SHORT_WINDOW
    assert phase.holds is False


def test_a_climb_still_running_late_in_training_is_inconclusive_not_false(tmp_path: Path) -> None:
    # The window is 0.4 of training (> 0.25) but ends at 0.95: training stopped inside the climb.
    phase = get_study("olsson2022").verdicts(_runs(tmp_path, (500, 950)))[1]
    assert phase.ours["window end"].values == (0.95, 0.95)
    assert phase.holds is None and f"had not ended before {SATURATED:g} of training" in phase.why
