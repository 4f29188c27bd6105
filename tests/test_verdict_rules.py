"""The paired, per-seed and untestable decision rules of mhaexp.studies.verdict, and ``--model`` refusals."""

from __future__ import annotations

import json
from pathlib import Path

from mhaexp.studies.report import report_markdown, verdict_document
from mhaexp.studies.runner import Budget
from mhaexp.studies.verdict import (
    UNTESTABLE,
    Claim,
    Measure,
    all_hold,
    decidable,
    paired_greater,
    significant_in_every_seed,
    untestable,
    verdict_word,
)


def test_paired_difference_decides_with_its_error_bars() -> None:
    assert paired_greater(Measure.of([0.3, 0.2]), Measure.of([0.1, 0.05]))[0] is True
    # one seed's difference lies within 2 standard errors of zero: not decided
    verdict, why = paired_greater(Measure.of([0.3, 0.05]), Measure.of([0.1, 0.05]))
    assert verdict is None and "2 standard errors" in why
    assert paired_greater(Measure.of([-0.3, -0.2]), Measure.of([0.1, 0.05]))[0] is False
    # without error bars the sign decides, and one seed is not enough
    assert paired_greater(Measure.of([0.01, 0.02]))[0] is True
    assert paired_greater(Measure.of([0.01]))[0] is None
    # a seed whose error bar is missing is not decided on the others
    assert paired_greater(Measure.of([0.3, 0.2]), Measure.of([0.1, float("nan")]))[0] is None


def test_a_test_within_each_seed_must_be_significant_in_every_seed() -> None:
    assert significant_in_every_seed(Measure.of([0.001, 0.02]), Measure.of([0.1, 0.2]))[0] is True
    # significant, but the other way round: not the claim
    assert significant_in_every_seed(Measure.of([0.001, 0.02]), Measure.of([-0.1, -0.2]))[0] is False
    verdict, why = significant_in_every_seed(Measure.of([0.001, 0.4]), Measure.of([0.1, 0.2]))
    assert verdict is None and "0.4" in why


def test_untestable_is_neither_false_nor_counted_among_the_testable() -> None:
    verdict, why = untestable("1 of 16 heads is already 6.25% > 5%")
    assert verdict == UNTESTABLE and verdict_word(verdict) == "untestable"
    assert all_hold([(True, ""), untestable("no outcome clears it")])[0] == UNTESTABLE
    claims = [
        Claim("a", "p", "m", Measure.of([1, 1]), ">= 1", True, criterion_source="Sec. 3"),
        Claim("b", "p", "m", Measure.of([]), "<= 5%", *untestable("by construction")),
    ]
    assert [c.claim for c in decidable(claims)] == ["a"]
    doc = verdict_document("x", "X", claims, Budget(), {}, 1.0)
    assert json.loads(json.dumps(doc))["claims"][1]["holds"] == "untestable"
    assert doc["claims"][0]["criterion_source"] == "Sec. 3"
    text = report_markdown(doc, claims)
    assert "1 untestable (1 of 1 testable hold)" in text and "(from Sec. 3)" in text


def test_model_is_refused_by_a_study_that_trains_its_own(cli, tmp_path: Path) -> None:
    r = cli("mhaexp-study", "head_count", "--model", "gpt2", "--out", str(tmp_path / "s"), cwd=tmp_path)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and "--model" in line and "'gpt2'" in line and "trains its own" in line
    assert not (tmp_path / "s").exists()
