"""seed_table (issue 29): every row's criterion cites the seed text's own words for it, and the best head is
reported with its score's standard error from the run's head_roles.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mhaexp.analysis.seed_roles import SEED_ROWS
from mhaexp.cli.study import preflight
from mhaexp.errors import ConfigError
from mhaexp.studies import get_study
from mhaexp.studies.runner import Budget, StudyContext


def _run(
    stage: Path, num: int, seed: int, causal: bool, roles: list[tuple[int, int, str, float, float, float]]
) -> None:
    """A run directory as the seed_table verdicts read it: its config and analysis/head_roles.csv."""
    import yaml

    run = stage / f"{num}_fixture"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "model": {"causal": causal}}))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([]))
    (run / "status.json").write_text(json.dumps({"status": "ok"}))
    (run / "analysis").mkdir()
    with (run / "analysis" / "head_roles.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "layer", "head", "role", "family", "score", "margin", "se"])
        w.writerows(
            [
                (300, layer, h, role, role.split(":")[0], score, margin, se)
                for layer, h, role, score, margin, se in roles
            ]
        )


def test_every_row_cites_the_seed_text_and_reports_the_error_bar(tmp_path: Path) -> None:
    ctx = StudyContext("seed_table", tmp_path, Budget(seeds=2))
    for seed in (0, 1):
        _run(ctx.runs_dir / "train", 2 * seed, seed, True, [(1, 2, "syntactic:nsubj", 0.92, 0.6, 0.03)])
        _run(ctx.runs_dir / "train", 2 * seed + 1, seed, False, [(0, 3, "positional:-1", 0.97, 0.07, 0.01)])
    claims = get_study("seed_table").verdicts(ctx)
    assert [c.holds for c in claims] == [True, True, False, False, False]
    for claim, row in zip(claims, SEED_ROWS, strict=True):
        assert "shared/seed/multi-head-attention.txt" in claim.criterion_source
        assert row.example and row.example in claim.criterion_source
        assert "HEAD" in row.example
    assert '"cat" <-> "was"' in claims[0].criterion_source
    assert "L1H2 syntactic:nsubj 0.92 ± 0.03 (+0.60)" in claims[0].metric
    assert "not found" in claims[2].metric and "every seed misses" in claims[2].why


def test_the_preflight_refuses_a_probe_smaller_than_the_study_reads() -> None:
    study = get_study("seed_table")
    with pytest.raises(ConfigError, match="data.n_probe=1000 is invalid"):
        preflight(study.preflight_overrides(Budget()) + ["data.n_probe=1000"])
    preflight(study.preflight_overrides(Budget(smoke=True)) + ["data.n_probe=1000"])  # smoke: the default probe
