"""voita2019's verdicts on fixture runs (the files the readers read): claims that hold, that do not, and that
the runs cannot decide (L0 closing too few heads, an encoder without role-holding heads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_studies import _roles_file, fake_run

from mhaexp.studies import get_study
from mhaexp.studies.runner import Budget, StudyContext

LAYERS, HEADS = 4, 8
ROLES = {(0, 0): "positional:-1", (1, 1): "syntactic:nsubj", (0, 2): "rare_word", (2, 3): "syntactic:obj"}
ROLES |= {(3, h): "positional:1" for h in range(4)}  # 8 role-holding heads of 32
OTHERS = [(layer, h) for layer in range(LAYERS) for h in range(HEADS) if (layer, h) not in ROLES]


def heads(cells: list[tuple[int, int]]) -> str:
    return ",".join(f"L{layer}H{h}" for layer, h in cells)


def voita_runs(tmp_path: Path, pruned: dict[float, str], rise: float, roles: dict = ROLES) -> StudyContext:
    """2 seeds: the trained encoder (``roles``, val loss 2.0, a rare-word head scoring 0.7) and one L0 run per
    lambda pruning ``pruned[lambda]``, with val loss 2.0 * (1 + rise)."""
    ctx = StudyContext("voita2019", tmp_path, Budget(seeds=2))
    rows = [(layer, h, roles.get((layer, h), "unassigned"), 0.1) for layer in range(LAYERS) for h in range(HEADS)]
    for seed in (0, 1):
        rare = [(1000, 0, 2, "rare_word", 0.7), (1000, 0, 3, "rare_word", 0.1)]
        run = fake_run(ctx.runs_dir / "train", seed, {"seed": seed}, head_rows=rare, summary={"val/loss": 2.0})
        _roles_file(run, rows)
        for num, (lam, gone) in enumerate(pruned.items()):
            cfg = {"seed": seed, "pruning": {"l0_lambda": lam}}
            run = fake_run(ctx.runs_dir / f"l0_seed{seed}", num, cfg, summary={"val/loss": 2.0 * (1 + rise)})
            (run / "pruning.json").write_text(json.dumps({"pruned": gone}))
    return ctx


def test_l0_keeps_the_role_holders_and_quality_holds(tmp_path: Path) -> None:
    # Half the heads closed (all unspecialised), then 3/4 (still all unspecialised), at 1% more loss.
    ctx = voita_runs(tmp_path, {0.02: heads(OTHERS[:16]), 0.1: heads(OTHERS)}, 0.01)
    have, keeps, quality = get_study("voita2019").verdicts(ctx)
    assert (have.holds, keeps.holds, quality.holds) == (True, True, True)
    assert have.ours["best rare-word score"].values == (0.7, 0.7) and have.ours["rare_word"].values == (1, 1)
    assert keeps.ours["lambda 0.02: closed share"].values == (0.5, 0.5)
    assert keeps.ours["lambda 0.02: kept"].values == (0.5, 0.5) and keeps.ours["lambda 0.02: pruned"].values == (0, 0)
    # P(all 8 role-holders among 16 kept of 32) = C(16,8) / C(32,8).
    assert keeps.ours["lambda 0.02: Fisher p"].values == pytest.approx((12870 / 10518300,) * 2)
    assert keeps.ours["lambda 0.02: role families kept"].values == (1.0, 1.0)
    assert "lambda 0.1: role families kept" not in keeps.ours  # 3/4 closed: beyond the paper's 17 of 48
    assert quality.ours["lambda 0.1: closed share"].values == (0.75, 0.75)
    for claim in (have, keeps, quality):
        assert claim.criterion_source


def test_l0_pruning_the_role_holders_first_does_not_hold(tmp_path: Path) -> None:
    role_first = heads([*ROLES, *OTHERS[:8]])
    have, keeps, quality = get_study("voita2019").verdicts(voita_runs(tmp_path, {0.04: role_first}, 0.2))
    assert (have.holds, keeps.holds, quality.holds) == (True, False, False)
    assert keeps.ours["lambda 0.04: kept"].values == (0.0, 0.0)
    assert "every role family kept" in keeps.why and "every seed misses" in keeps.why


def test_too_few_heads_closed_or_no_role_holders_cannot_decide(tmp_path: Path) -> None:
    # lambda 0.01 closes 2 of 32 heads: below the paper's range (10 to 40 of 48 kept), reported, not counted.
    have, keeps, quality = get_study("voita2019").verdicts(voita_runs(tmp_path / "a", {0.01: heads(OTHERS[:2])}, 0.0))
    assert keeps.holds is None and "lambda 0.01 closed 0.06, 0.06" in keeps.why
    assert quality.holds is False and "every seed misses >= 0.666667" in quality.why
    # An encoder without positional, syntactic or rare-word heads: nothing for L0 to keep.
    bare = voita_runs(tmp_path / "b", {0.02: heads(OTHERS[:16])}, 0.0, roles={})
    have, keeps, _ = get_study("voita2019").verdicts(bare)
    assert have.holds is False and keeps.holds is None and "no role-holding head" in keeps.why
    # Two role-holders of 32 with half the heads kept: even keeping both gives p = C(16,2) / C(32,2) = 0.24.
    few = {(0, 0): "positional:-1", (1, 1): "syntactic:nsubj"}
    others = [(layer, h) for layer in range(LAYERS) for h in range(HEADS) if (layer, h) not in few]
    _, keeps, _ = get_study("voita2019").verdicts(voita_runs(tmp_path / "c", {0.03: heads(others[:16])}, 0.0, few))
    assert keeps.holds is None and "keeping every role-holder would give p = 0.242, 0.242" in keeps.why
