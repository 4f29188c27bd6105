"""The seed's "What Different Heads Learn" table, filled from head roles: unit rules, the CLI, and the
closing report of a real grammar run."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from mhaexp.analysis.seed_roles import SEED_ROWS, fill, format_table, read_roles

FIELDS = ("step", "layer", "head", "role", "family", "score", "margin")


def role(layer: int, head: int, name: str, score: float | str, margin: float | str) -> dict[str, str]:
    return {"step": "10", "layer": str(layer), "head": str(head), "role": name, "family": name.split(":")[0],
            "score": str(score), "margin": str(margin)}  # fmt: skip


def write_run(path: Path, rows: list[dict[str, str]]) -> Path:
    (path / "analysis").mkdir(parents=True)
    with (path / "analysis" / "head_roles.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


CAUSAL = [
    role(0, 1, "syntactic:nsubj", 0.8, 0.3),
    role(1, 2, "syntactic:nsubj", 1.0, 0.6),  # the larger margin wins the row
    role(1, 2, "coreference", 0.9, 0.2),
    role(0, 4, "syntactic:pobj", 0.95, 0.25),
    role(2, 0, "unassigned", "", ""),
    role(2, 1, "positional:0", 0.95, 0.05),  # attending to itself is not "adjacent"
]
ENCODER = [role(0, 3, "positional:1", 0.92, 0.02), role(0, 5, "syntactic:amod:pred", 0.7, 0.12)]


def test_fill_picks_the_best_head_per_row_and_reports_gaps() -> None:
    filled = dict((seed.label, found) for seed, found in fill([("causal", CAUSAL)]))
    assert list(filled) == [seed.label for seed in SEED_ROWS]
    best = filled["syntactic: subject-verb"]
    assert best is not None and (best.layer, best.head, best.margin) == (1, 2, 0.6)
    assert filled["coreference"] is not None and filled["prepositional"] is not None
    assert filled["positional: adjacent"] is None and filled["noun-adjective"] is None
    lines = format_table(fill([("causal", CAUSAL)]))
    assert lines[0].endswith("3 of 5 rows reproduced")
    assert "  positional: adjacent     not found" in lines


def test_cli_merges_runs(tmp_path: Path) -> None:
    a, b = write_run(tmp_path / "causal", CAUSAL), write_run(tmp_path / "encoder", ENCODER)
    out = subprocess.run(
        [sys.executable, "-m", "mhaexp.analysis.seed_roles", str(a), str(b)], capture_output=True, text=True, check=True
    ).stdout
    assert "5 of 5 rows reproduced" in out
    assert f"{b}: L0H3 positional:1 0.92 (+0.02)" in out and f"{a}: L1H2 syntactic:nsubj 1.00 (+0.60)" in out


def test_cli_bad_run_dir_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mhaexp.analysis.seed_roles", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: run_dir={tmp_path / 'nope'} is invalid: must be a run directory trained with analysis on "
        "(it has analysis/head_roles.csv)"
    ]


def test_grammar_run_ends_with_the_seed_table(
    tmp_path: Path, tiny: list[str], cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    run_dir = tmp_path / "run"
    args = [*tiny, "data.n_train=1000", "data.n_val=128", "trainer.val_check_interval=15"]
    args += ["analysis=default", "analysis.every_n_steps=30", "logger=csv", f"hydra.run.dir={run_dir}"]
    proc = cli("mhaexp-train", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    expected = format_table(fill([(run_dir.name, read_roles(run_dir))]))
    lines = proc.stdout.splitlines()
    start = lines.index(expected[0])
    assert lines[start : start + len(expected)] == expected and len(expected) == 1 + len(SEED_ROWS)
    assert lines.index("head roles    :") < start < lines.index(f"run directory : {run_dir}")
