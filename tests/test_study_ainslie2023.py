"""ainslie2023's verdicts on fixture results: eval/losses.json (per-sequence summed losses of every model of a
seed on the same val sequences) and the runs' summaries, as the study writes them (a passing, a failing and
an inconclusive case)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_studies import fake_run

from mhaexp.studies import get_study
from mhaexp.studies.ainslie2023 import LOSSES_FILE, paired_gap
from mhaexp.studies.runner import Budget, StudyContext

N = 200  # val sequences, 10 scored tokens each
GOOD = {
    "converted 1/mean": 1.0,
    "converted 1/first": 1.5,
    "converted 1/random": 3.0,
    "converted 2/mean": 0.5,
    "uptrained 1/mean": 0.2,
    "uptrained 1/first": 0.3,
    "uptrained 1/random": 0.6,
    "uptrained 2/mean": 0.1,
}
BAD = {**GOOD, "uptrained 1/mean": 0.7, "uptrained 2/mean": 0.9, "converted 2/mean": 0.3}


def ainslie_ctx(tmp_path: Path, per_seed: list[dict[str, float]]) -> StudyContext:
    """Each seed's models lose ``per_seed[seed][model]`` nats per token more than MHA, with per-sequence noise."""
    ctx = StudyContext("ainslie2023", tmp_path, Budget(seeds=len(per_seed)))
    results = []
    for seed, extra in enumerate(per_seed):
        mha = fake_run(ctx.runs_dir / "mha", seed, {"seed": seed}, summary={"kv_cache_bytes_per_token": 1536})
        base = [20.0 + (i % 7) for i in range(N)]
        r = {"run": str(mha), "seed": seed, "tokens": [10.0] * N, "mha": base, "uptrained_runs": {}}
        for num, name in enumerate(("1/mean", "1/first", "1/random", "2/mean")):
            kv = 192 * int(name[0])
            run = fake_run(
                ctx.runs_dir / f"up_seed{seed}", num, {"seed": seed}, summary={"kv_cache_bytes_per_token": kv}
            )
            r["uptrained_runs"][name] = str(run)
        for mult, (key, gap) in zip((1, 2, 3, 4, 6, 7, 8, 9), extra.items(), strict=True):
            # zero-mean noise, a different cycle per model: the paired differences have a spread
            r[key] = [b + 10 * gap + 0.5 * ((i * mult) % 5 - 2) for i, b in enumerate(base)]
        results.append(r)
    ctx.eval_path(LOSSES_FILE).write_text(json.dumps(results))
    return ctx


def test_paired_gap_is_the_token_weighted_difference_with_its_standard_error() -> None:
    losses = {"tokens": [10.0, 10.0, 10.0, 10.0], "a": [21.0, 22.0, 23.0, 24.0], "b": [20.0, 20.0, 20.0, 20.0]}
    diff, se = paired_gap(losses, "a", "b")
    assert diff == pytest.approx(0.25)  # (90 - 80) / 40
    assert se == pytest.approx((1.2909944 / 2) / 10)  # sem of [1, 2, 3, 4] over 10 tokens a sequence


def test_mean_pooling_first_and_ordered_models_hold(tmp_path: Path) -> None:
    pooling, closed, between = get_study("ainslie2023").verdicts(ainslie_ctx(tmp_path, [GOOD, GOOD]))
    assert (pooling.holds, closed.holds, between.holds) == (True, True, True)
    assert pooling.ours["uptrained: first minus mean"].values == pytest.approx((0.1, 0.1))
    assert pooling.ours["converted: random minus mean"].values == pytest.approx((2.0, 2.0))
    assert "before uptraining the same rule holds" in pooling.why
    assert closed.ours["GQA-2 (mean-pooled)"].values == pytest.approx((0.8, 0.8))  # 1 - 0.1 / 0.5
    assert between.ours["GQA minus MHA"].values == pytest.approx((0.1, 0.1))
    assert "'MQA': 192" in between.metric and "'MHA': 1536" in between.metric
    assert all(c.criterion_source for c in (pooling, closed, between))


def test_the_other_order_does_not_hold(tmp_path: Path) -> None:
    pooling, closed, between = get_study("ainslie2023").verdicts(ainslie_ctx(tmp_path, [BAD, BAD]))
    assert (pooling.holds, closed.holds, between.holds) == (False, False, False)
    assert closed.ours["GQA-2 (mean-pooled)"].values == pytest.approx((-2.0, -2.0))  # 1 - 0.9 / 0.3


def test_a_gap_inside_its_error_bar_is_inconclusive(tmp_path: Path) -> None:
    close = {**GOOD, "uptrained 1/first": 0.2 + 1e-4}  # first minus mean far inside 2 s.e.
    pooling, _, _ = get_study("ainslie2023").verdicts(ainslie_ctx(tmp_path, [GOOD, close]))
    assert pooling.holds is None and "2 standard errors" in pooling.why
