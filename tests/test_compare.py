"""``mhaexp-compare`` on a fake sweep: terminal table, report and plots, bad input, and the W&B source.

The fake sweep is written file by file in the run-directory contract (``.hydra/config.yaml``,
``status.json``, ``summary.json``, ``metrics.csv``, ``analysis/head_roles*.csv``, ``pruning_curve.csv``),
with numbers chosen so that the expected table can be worked out by hand: a head-count sweep (``RUNS``)
and an ``n_layers`` x ``pos`` sweep (``LAYER_RUNS``) whose four configurations must stay four rows.
Real ``mhaexp-train -m`` sweeps over ``model.n_layers``, ``model.pos`` and ``data`` check the same on
the files training actually writes.

The W&B source is tested against a real ``wandb.Api`` talking to a local HTTP server that replays the
recorded GraphQL responses of ``tests/data/wandb_api/`` (see its README): the same sweep as the fake run
directories, so both sources must give the same runs table.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from mhaexp.analysis.role_families import ROLE_FAMILIES

# Module-scoped fixtures: one worker runs the whole module under pytest-xdist (make test).
pytestmark = pytest.mark.xdist_group("test_compare")

ROOT = Path(__file__).resolve().parents[1]
WANDB_DATA = Path(__file__).resolve().parent / "data" / "wandb_api"
PROG = "mhaexp-compare"

SWEEP = "12-00-00_ab12cd"  # multirun/<date>/<time>_<uid>; also the W&B group of its runs
WANDB_PATH = "mhaexp-lab/mhaexp"
D_MODEL, N_LAYERS = 64, 2
STEPS = (0, 100, 200)  # analysis steps; the last is the end of training
ROLE_CYCLE = ("positional", "syntactic", "induction", "unassigned")
LAYER_SWEEP = "12-30-00_ef34gh"  # a second sweep: n_layers x pos x seed at 2 heads, its own W&B group


@dataclass(frozen=True)
class FakeRun:
    job: int
    n_heads: int
    seed: int
    best_val_loss: float | None
    wandb_id: str
    status: str = "ok"
    error: str | None = None
    n_layers: int = N_LAYERS
    pos: str = "learned"
    group: str = SWEEP

    @property
    def name(self) -> str:
        return f"grammar_small_h{self.n_heads}"

    @property
    def dirname(self) -> str:
        return f"{self.job}_{self.name}"


# mhaexp-train -m model.n_heads=1,2,4,8 seed=0,1 ... where the 8-head job diverged; (8, seed 1) never ran.
RUNS = (
    FakeRun(0, 1, 0, 2.50, "k3v9x1a0"),
    FakeRun(1, 1, 1, 2.60, "p7q2m4d8"),
    FakeRun(2, 2, 0, 2.20, "b5n1c6z2"),
    FakeRun(3, 2, 1, 2.32, "t0w8e3r5"),
    FakeRun(4, 4, 0, 2.10, "y6u2i9o4"),
    FakeRun(5, 4, 1, 2.16, "h1j7k5l3"),
    FakeRun(6, 8, 0, None, "f4g8s2a6", "failed", "FloatingPointError: val/loss is nan at step 120"),
)
PRUNED_JOB = 4  # the one run with a pruning curve


def layer_loss(n_layers: int, pos: str, seed: int) -> float:
    """Best val loss of the n_layers x pos sweep: 2.0, +0.3 for one layer, +0.1 for learned positions, +0.02 seed 1."""
    return round(2.0 + 0.3 * (n_layers == 1) + 0.1 * (pos == "learned") + 0.02 * seed, 4)


# mhaexp-train -m model.n_heads=2 model.n_layers=1,2 model.pos=learned,rope seed=0,1: four configurations,
# which GROUP_KEYS (n_heads, n_kv_heads, head_dim, d_model, pruning) once merged into one row.
LAYER_RUNS = tuple(
    FakeRun(
        job,
        2,
        seed,
        layer_loss(n_layers, pos, seed),
        f"ly{n_layers}{pos[0]}{seed}q7z",
        n_layers=n_layers,
        pos=pos,
        group=LAYER_SWEEP,
    )
    for job, (n_layers, pos, seed) in enumerate((n, p, s) for n in (1, 2) for p in ("learned", "rope") for s in (0, 1))
)


def params_attention(run: FakeRun) -> int:
    return run.n_layers * (4 * D_MODEL * D_MODEL + 4 * D_MODEL)  # fixed width: same for every n_heads


def params_total(run: FakeRun) -> int:
    return params_attention(run) + 70_000


PARAMS_TOTAL = params_total(RUNS[0])


def job_config(run: FakeRun) -> dict[str, Any]:
    """The resolved job config Hydra writes to .hydra/config.yaml."""
    return {
        "model": {
            "n_layers": run.n_layers,
            "d_model": D_MODEL,
            "n_heads": run.n_heads,
            "n_kv_heads": None,
            "head_dim": None,
            "d_ff": 256,
            "max_seq_len": 64,
            "dropout": 0.0,
            "pos": run.pos,
            "attn_only": False,
            "causal": True,
            "bias": True,
            "tie_embeddings": True,
            "rope_base": 10000.0,
            "layer_n_heads": None,
            "layer_n_kv_heads": None,
        },
        "data": {"kind": "grammar", "seq_len": 32, "batch_size": 64, "n_train": 20000, "n_val": 1000, "seed": 0},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": STEPS[-1], "val_check_interval": 100},
        "logger": {
            "kind": "wandb",
            "mode": "offline",
            "project": "mhaexp",
            "entity": None,
            "group": None,
            "tags": ["head_count_sweep"],
            "name": run.name,
        },
        "optim": {"lr": 0.003, "weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_steps": 100},
        "analysis": {"enabled": True, "every_n_steps": 100},
        "pruning": {"kind": "none"},
        "name": run.name,
        "seed": run.seed,
        "init_from": None,
        "resume": None,
    }


def head_roles(run: FakeRun, step: int) -> list[dict[str, Any]]:
    """Roles of every head at ``step``: none at first, half the heads midway, all at the end.

    Head k (= layer * n_heads + head) takes ROLE_CYCLE[(k + seed) % 4]; at the end L0H0 also holds
    previous_token, so one head has two rows.
    """
    rows = []
    n_total = run.n_layers * run.n_heads
    for layer in range(run.n_layers):
        for head in range(run.n_heads):
            k = layer * run.n_heads + head
            assigned = step == STEPS[-1] or (step > 0 and k < n_total // 2)
            role = ROLE_CYCLE[(k + run.seed) % len(ROLE_CYCLE)] if assigned else "unassigned"
            score = 0.0 if role == "unassigned" else round(0.6 + 0.01 * k, 3)
            rows.append(
                {
                    "step": step,
                    "layer": layer,
                    "head": head,
                    "role": role,
                    "score": score,
                    "margin": round(score - 0.5, 3) if score else 0.0,
                }
            )
            if step == STEPS[-1] and k == 0:
                rows.append(
                    {"step": step, "layer": 0, "head": 0, "role": "previous_token", "score": 0.93, "margin": 0.03}
                )
    return rows


def role_counts(run: FakeRun, step: int) -> dict[str, int]:
    """``roles/<role>`` for every family, zeros included, as the analysis callback logs them."""
    counts = dict.fromkeys(ROLE_FAMILIES, 0)
    for row in head_roles(run, step):
        counts[row["role"]] += 1
    return {f"roles/{role}": n for role, n in counts.items()}


def val_losses(run: FakeRun) -> dict[int, float]:
    """Validation loss at each check; the best is the last for a finished run."""
    if run.best_val_loss is None:
        return {100: 3.9}
    return {100: round(run.best_val_loss + 0.4, 4), 200: run.best_val_loss}


def summary(run: FakeRun) -> dict[str, Any]:
    """summary.json of a finished run."""
    last = STEPS[-1]
    return {
        "best_val_loss": run.best_val_loss,
        "val/loss": run.best_val_loss,
        "val/acc": round(0.9 - run.best_val_loss / 10, 4),
        "train/loss": round(run.best_val_loss - 0.05, 4),
        "params/total": params_total(run),
        "params/attention": params_attention(run),
        "kv_cache_bytes_per_token": kv_bytes(run),
        "n_heads_total": run.n_layers * run.n_heads,
        "global_step": last,
        **role_counts(run, last),
    }


def kv_bytes(run: FakeRun) -> int:
    head_dim = D_MODEL // run.n_heads
    return 2 * run.n_layers * run.n_heads * head_dim * 2  # K and V, all layers, bf16


def metrics_rows(run: FakeRun) -> list[dict[str, Any]]:
    """metrics.csv as CSVLogger writes it: train rows every 50 steps, val rows apart (sparse)."""
    rows: list[dict[str, Any]] = []
    end = STEPS[-1] if run.status == "ok" else 120
    for step in range(49, end, 50):
        rows.append({"step": step, "train/loss": round(4.0 - step / 100, 4), "train/acc": 0.1, "lr": 0.003})
    for step, loss in val_losses(run).items():
        rows.append({"step": step - 1, "val/loss": loss, "val/acc": 0.5})
    return rows


def pruning_rows(run: FakeRun) -> list[dict[str, Any]]:
    n_total = run.n_layers * run.n_heads
    rows = []
    for criterion, slope in (("importance", 0.2), ("random", 0.9)):
        for pruned in range(n_total):
            frac = pruned / n_total
            rows.append(
                {
                    "criterion": criterion,
                    "frac_pruned": frac,
                    "heads_remaining": n_total - pruned,
                    "val_loss": round(run.best_val_loss + slope * frac**2, 4),
                    "val_acc": round(0.7 - 0.5 * slope * frac**2, 4),
                }
            )
    return rows


def overrides(run: FakeRun) -> list[str]:
    if run.group == LAYER_SWEEP:
        return [
            f"model.n_heads={run.n_heads}",
            f"model.n_layers={run.n_layers}",
            f"model.pos={run.pos}",
            f"seed={run.seed}",
        ]
    return [f"model.n_heads={run.n_heads}", f"seed={run.seed}"]


def write_run_dir(sweep_dir: Path, run: FakeRun) -> Path:
    """Exactly the files of the run-directory contract."""
    d = sweep_dir / run.dirname
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(job_config(run), sort_keys=False))
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides(run)))
    status: dict[str, Any] = {"status": run.status}
    if run.status == "ok":
        status["best_val_loss"] = run.best_val_loss
    else:
        status["error"] = run.error
    (d / "status.json").write_text(json.dumps(status, indent=2))
    pd.DataFrame(metrics_rows(run)).to_csv(d / "metrics.csv", index=False)
    if run.status != "ok":
        return d  # the trainer raised: no summary, no final analysis
    (d / "summary.json").write_text(json.dumps(summary(run), indent=2, sort_keys=True))
    (d / "analysis").mkdir()
    long = [
        {"step": s, "layer": layer, "head": head, "metric": "entropy", "value": 0.5}
        for s in STEPS
        for layer in range(run.n_layers)
        for head in range(run.n_heads)
    ]
    pd.DataFrame(long).to_csv(d / "analysis" / "head_metrics.csv", index=False)
    history = [row for step in STEPS for row in head_roles(run, step)]
    pd.DataFrame(history).to_csv(d / "analysis" / "head_roles_history.csv", index=False)
    pd.DataFrame(head_roles(run, STEPS[-1])).to_csv(d / "analysis" / "head_roles.csv", index=False)
    if run.job == PRUNED_JOB and run.group == SWEEP:
        pd.DataFrame(pruning_rows(run)).to_csv(d / "pruning_curve.csv", index=False)
    return d


def make_sweep(root: Path, runs: tuple[FakeRun, ...] = RUNS) -> Path:
    sweep = root / "multirun" / "2025-01-01" / runs[0].group
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")  # Hydra's own file beside the jobs
    for run in runs:
        write_run_dir(sweep, run)
    return sweep


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def run_cli(cli: Callable[..., subprocess.CompletedProcess]) -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli(*args, env=None, cwd=None)``: ``mhaexp-compare`` through the ``cli`` fixture."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return cli("mhaexp-compare", *args, cwd=cwd or ROOT, env={**os.environ, **(env or {})}, timeout=120)

    return run


def section(stdout: str, title: str) -> list[str]:
    """The lines of one block of the terminal output (title line up to the next blank line)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    block = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        block.append(line)
    return block


def parse_table(lines: list[str]) -> list[dict[str, str]]:
    """An aligned text table (header, rule, rows) -> dicts; cells are separated by 2+ spaces."""
    header = re.split(r"\s{2,}", lines[0].strip())
    return [dict(zip(header, re.split(r"\s{2,}", line.strip()), strict=True)) for line in lines[2:]]


def mean_std(values: list[float]) -> str:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4f} ± {std:.4f}"


# --------------------------------------------------------------------------- the local path, end to end


@pytest.fixture(scope="module")
def local_run(
    tmp_path_factory: pytest.TempPathFactory, run_cli: Callable[..., subprocess.CompletedProcess]
) -> tuple[Path, subprocess.CompletedProcess]:
    sweep = make_sweep(tmp_path_factory.mktemp("local"))
    return sweep, run_cli(str(sweep))


def test_terminal_table_aggregates_over_seeds(local_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    _, proc = local_run
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("7 runs (6 ok, 1 failed)")
    rows = {r["n_heads"]: r for r in parse_table(section(proc.stdout, "configurations"))}
    assert set(rows) == {"1", "2", "4"}  # the failed 8-head job is not a configuration
    metric = "best_val_loss (mean ± std)"
    # By hand: (2.50, 2.60) -> 2.55 ± 0.0707; (2.20, 2.32) -> 2.26 ± 0.0849; (2.10, 2.16) -> 2.13 ± 0.0424.
    assert rows["1"][metric] == "2.5500 ± 0.0707" == mean_std([2.50, 2.60])
    assert rows["2"][metric] == "2.2600 ± 0.0849" == mean_std([2.20, 2.32])
    assert rows["4"][metric] == "2.1300 ± 0.0424" == mean_std([2.10, 2.16])
    for h, head_dim in (("1", "64"), ("2", "32"), ("4", "16")):
        row = rows[h]
        assert (row["runs"], row["n_kv_heads"], row["head_dim"], row["d_model"], row["pruning"]) == (
            "2",
            h,
            head_dim,
            "64",
            "none",
        )
        assert row["params"] == f"{PARAMS_TOTAL:,}"
        assert row["KV bytes/token"] == "512"
    # Roles, by hand from head_roles(): 1 head/layer, seeds 0 and 1 -> L0H0 positional|syntactic,
    # L1H0 syntactic|induction, plus previous_token on L0H0 -> means 0.5, 1, 1, 0.5, 0.
    assert (
        rows["1"]["positional"],
        rows["1"]["previous_token"],
        rows["1"]["syntactic"],
        rows["1"]["induction"],
        rows["1"]["unassigned"],
    ) == ("0.5", "1", "1", "0.5", "0")
    assert (rows["4"]["positional"], rows["4"]["induction"], rows["4"]["unassigned"]) == ("2", "2", "2")
    assert "coreference" not in rows["1"]  # no run has a head in it: no column


def test_marginal_gain_per_doubling(local_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    _, proc = local_run
    gains = {r["n_heads"]: r for r in parse_table(section(proc.stdout, "marginal gain per doubling"))}
    assert gains["1"]["Δ vs previous"] == "-"
    assert gains["2"]["Δ vs previous"] == "-0.2900" == f"{2.26 - 2.55:+.4f}"
    assert gains["4"]["Δ vs previous"] == "-0.1300" == f"{2.13 - 2.26:+.4f}"
    assert gains["4"]["Δ per doubling"] == "-0.1300"  # 2 -> 4 is one doubling


def test_failed_job_listed_with_its_error(local_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    sweep, proc = local_run
    failed = parse_table(section(proc.stdout, "failed / invalid runs"))
    assert failed == [
        {
            "run": "6_grammar_small_h8",
            "status": "failed",
            "n_heads": "8",
            "seed": "0",
            "config": "model.n_heads=8",
            "error": "FloatingPointError: val/loss is nan at step 120",
        }
    ]
    report = (sweep / "compare" / "report.md").read_text()
    assert "FloatingPointError: val/loss is nan at step 120" in report
    assert "model.n_heads=8 seed=0" in report  # the overrides that reproduce it


def test_report_and_plots_written(local_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    sweep, proc = local_run
    out = sweep / "compare"
    report = (out / "report.md").read_text()
    assert f"report: {out / 'report.md'}" in proc.stdout
    for name in ("loss_vs_heads.png", "roles_vs_heads.png", "role_emergence.png", "pruning_curves.png"):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1024, name
        assert b"Matplotlib" in png[:400], name  # the Software text chunk matplotlib writes
        assert f"]({name})" in report, name
    assert "| 2 | 2 | 32 | 64 | none | 2 | 2.2600 ± 0.0849 |" in report
    assert "## Marginal gain per doubling of heads" in report
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == len(RUNS)
    history = pd.read_csv(out / "role_history.csv")
    # Role emergence, run 0: everything unassigned at step 0, 1 of 2 heads assigned at 100, all at 200.
    run0 = history[history["run"] == "0_grammar_small_h1"].set_index(["step", "role"])["heads"].to_dict()
    assert run0 == {
        (0, "unassigned"): 2,
        (100, "positional"): 1,
        (100, "unassigned"): 1,
        (200, "positional"): 1,
        (200, "previous_token"): 1,
        (200, "syntactic"): 1,
    }


# --------------------------------------------------------------------------- in-process: formats, bad input


def call_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from mhaexp.cli.compare import main

    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_html_report_and_metric_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = make_sweep(tmp_path)
    run_dirs = [str(sweep / r.dirname) for r in RUNS[:4]]  # run directories, not the sweep
    code, out, err = call_main(
        capsys, *run_dirs, "--out", str(tmp_path / "cmp"), "--format", "html", "--metric", "val/acc"
    )
    assert code == 0, err
    assert "val/acc (mean ± std)" in out
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "<img src='loss_vs_heads.png'" in html and "<table" in html
    # val/acc = 0.9 - best_val_loss / 10: 0.65 and 0.64 for the 1-head runs.
    assert f"<td>{mean_std([0.65, 0.64])}</td>" in html and "<td>0.6450 ± 0.0071</td>" in html
    assert not (tmp_path / "cmp" / "pruning_curves.png").exists()  # no curve among these runs


def test_pruning_curve_as_mhaexp_pruning_writes_it(tmp_path: Path) -> None:
    from mhaexp.compare.runs import load_runs

    sweep = make_sweep(tmp_path)
    # mhaexp.pruning.curves.write_curve_csv's columns (CURVE_COLUMNS), written here so that this test does
    # not need torch and Lightning: "fraction_pruned", and no criterion on the unpruned first point.
    (sweep / RUNS[5].dirname / "pruning_curve.csv").write_text(
        "step,fraction_pruned,heads_pruned,heads_remaining,val_loss,val_acc,criterion\n"
        "200,0.0,0,8,2.16,0.68,\n"
        "200,0.25,2,6,2.2,0.66,iterative/importance\n"
        "200,0.5,4,4,2.4,0.6,iterative/importance\n"
    )
    curves = load_runs([sweep]).pruning
    own = curves[curves["run"] == RUNS[5].dirname]
    assert own["frac_pruned"].tolist() == [0.0, 0.25, 0.5]
    assert own["heads_remaining"].tolist() == [8, 6, 4]
    # An empty criterion is the run's pruning kind.
    assert own["criterion"].tolist() == ["none", "iterative/importance", "iterative/importance"]


def test_corrupt_and_missing_files_skip_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = make_sweep(tmp_path)
    (sweep / RUNS[1].dirname / "summary.json").write_text("{not json")
    (sweep / RUNS[2].dirname / ".hydra" / "config.yaml").unlink()
    (sweep / RUNS[5].dirname / "analysis" / "head_roles.csv").write_text("step,layer\n0,0\n")
    code, out, err = call_main(capsys, str(sweep))
    assert code == 0, err
    warnings = err.splitlines()
    assert len(warnings) == 3
    assert all(w.startswith(f"{PROG}: warning: skipped run ") for w in warnings)
    assert f"{sweep / RUNS[1].dirname / 'summary.json'}: not valid JSON" in err
    assert f"{sweep / RUNS[2].dirname / '.hydra' / 'config.yaml'}: missing" in err
    assert "head_roles.csv: missing column(s) head, role" in err
    assert out.startswith("4 runs (3 ok, 1 failed)")
    rows = {r["n_heads"]: r for r in parse_table(section(out, "configurations"))}
    assert rows["1"]["runs"] == "1" and rows["1"]["best_val_loss (mean ± std)"] == "2.5000 ± n/a"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no runs given"),
        (("does/not/exist",), "no such file or directory: does/not/exist"),
        (("--group", "g", "x"), "--group needs --wandb"),
        (("--wandb", "no-slash"), "--wandb wants ENTITY/PROJECT"),
        (("--format", "pdf", "x"), "invalid choice"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, out, err = call_main(capsys, *args)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"{PROG}: error: ") and message in err


def test_directory_without_runs_and_unknown_metric(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = call_main(capsys, str(tmp_path))
    assert code == 2 and err.strip() == f"{PROG}: error: no runs found in {tmp_path}"
    sweep = make_sweep(tmp_path / "s")
    code, _, err = call_main(capsys, str(sweep), "--metric", "val/los")
    assert code == 2 and "--metric 'val/los' is not a summary key" in err and len(err.splitlines()) == 1


def test_loaded_frame_has_config_summary_and_status(tmp_path: Path) -> None:
    from mhaexp.compare.runs import SHAPE_COLUMNS, load_runs

    runset = load_runs([make_sweep(tmp_path)])
    runs = runset.runs
    assert list(runs.columns[:5]) == ["run", "status", "error", "config_id", "config"]
    assert runs["run"].tolist() == [r.dirname for r in RUNS]  # sorted by configuration, then seed
    # Only n_heads differs (name and logger.name follow from it, seed is aggregated).
    assert runset.axes == ["model.n_heads"]
    assert runs["config_id"].tolist() == [0, 0, 1, 1, 2, 2, 3]
    assert runs["config"].iloc[0] == "model.n_heads=1"
    assert runs[list(SHAPE_COLUMNS)].iloc[0].tolist() == [1, 1, 64, 64, "none"]  # nulls resolved
    assert runs["model.n_kv_heads"].isna().all()  # the config as written is kept too
    assert runs.loc[0, "roles/syntactic"] == 1 and runs.loc[0, "val/acc"] == 0.65
    assert runs.loc[6, "status"] == "failed" and pd.isna(runs.loc[6, "best_val_loss"])
    assert set(runset.pruning["criterion"]) == {"importance", "random"}
    assert runset.warnings == []


# --------------------------------------------------------------------------- the W&B path, replayed


class ReplayHandler(BaseHTTPRequestHandler):
    """Answers wandb's GraphQL queries from the recorded responses; anything unrecorded is an error."""

    requests: list[dict[str, Any]]

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/graphql":  # wandb-core's telemetry: accept and ignore
            return self._send(200, {})
        request = json.loads(body)
        self.requests.append(request)
        self._send(200, replay(request["query"], request.get("variables") or {}))

    def _send(self, code: int, payload: dict[str, Any]) -> None:
        out = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


def recorded(name: str) -> dict[str, Any]:
    return json.loads((WANDB_DATA / name).read_text())


def replay(query: str, variables: dict[str, Any]) -> dict[str, Any]:
    if "viewer" in query:
        return recorded("viewer.json")
    if "query Runs(" in query:
        filters = json.loads(variables.get("filters") or "{}")
        group = filters.get("group") if list(filters) == ["group"] else None
        page = recorded(f"runs_{group if group in (SWEEP, LAYER_SWEEP) else SWEEP}.json")
        project = page["data"]["project"]
        if group not in (SWEEP, LAYER_SWEEP) or variables.get("cursor"):
            project["runCount"], project["runs"]["edges"] = 0, []  # other groups / past the one page
        return page
    if "query Run(" in query:
        return recorded(f"run_{variables['name']}.json")
    if "sampledHistory" in query:
        # The server keeps the rows holding every requested key, projected to those keys.
        spec = json.loads(variables["specs"][0])
        keys = spec["keys"]
        lines = recorded(f"history_{variables['name']}.json")["data"]["project"]["run"]["history"]
        rows = [json.loads(line) for line in lines]
        sampled = [{k: row[k] for k in keys} for row in rows if all(k in row for k in keys)]
        return {"data": {"project": {"run": {"sampledHistory": [sampled]}}}}
    return {"errors": [{"message": f"not recorded: {query[:80]!r}"}], "data": None}


@pytest.fixture
def replay_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    requests: list[dict[str, Any]] = []
    handler = type("Handler", (ReplayHandler,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def wandb_env(url: str, tmp_path: Path) -> dict[str, str]:
    """A real wandb.Api talking to the replay server, with nothing of this machine's W&B login."""
    wandb_home = tmp_path / "wandb_home"
    return {
        "WANDB_BASE_URL": url,
        "WANDB_API_KEY": "0" * 40,
        "WANDB_DIR": str(wandb_home),
        "WANDB_CONFIG_DIR": str(wandb_home / "config"),
        "WANDB_CACHE_DIR": str(wandb_home / "cache"),
        "WANDB_DATA_DIR": str(wandb_home / "data"),
        "NETRC": str(wandb_home / "netrc"),
        "WANDB_SILENT": "true",
    }


def test_wandb_source_matches_local_source(
    local_run: tuple[Path, subprocess.CompletedProcess],
    tmp_path: Path,
    replay_server: tuple[str, list[dict[str, Any]]],
    run_cli: Callable[..., subprocess.CompletedProcess],
) -> None:
    sweep, local = local_run
    url, requests = replay_server
    env = wandb_env(url, tmp_path)
    out = tmp_path / "wb"
    proc = run_cli("--wandb", WANDB_PATH, "--group", SWEEP, "--out", str(out), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert any(
        json.loads(r.get("variables", {}).get("filters") or "{}") == {"group": SWEEP}
        for r in requests
        if "query Runs(" in r["query"]
    )

    # The same aggregate table and gains, to the digit.
    for title in ("configurations", "marginal gain per doubling"):
        assert section(proc.stdout, title) == section(local.stdout, title), title
    assert proc.stdout.startswith("7 runs (6 ok, 1 failed)")
    assert "f4g8s2a6" in proc.stdout and "W&B run failed" in proc.stdout

    local_runs = pd.read_csv(sweep / "compare" / "runs.csv")
    wandb_runs = pd.read_csv(out / "runs.csv")
    source_only = {"run", "error", "path", "overrides", "wandb_id"}
    shared = [c for c in local_runs.columns if c in wandb_runs.columns and c not in source_only]
    assert {
        "n_heads",
        "head_dim",
        "best_val_loss",
        "val/loss",
        "params/total",
        "kv_cache_bytes_per_token",
        "roles/induction",
        "global_step",
        "model.d_model",
        "seed",
        "status",
    } <= set(shared)
    ok = local_runs["status"] == "ok"
    pd.testing.assert_frame_equal(
        local_runs.loc[ok, shared].reset_index(drop=True),
        wandb_runs.loc[ok, shared].reset_index(drop=True),
        check_dtype=False,
    )
    ids = ["status", "n_heads", "n_kv_heads", "head_dim", "d_model", "pruning", "seed", "name"]
    pd.testing.assert_frame_equal(local_runs[ids], wandb_runs[ids])

    def by_config(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
        keyed = frame.merge(runs[["run", "n_heads", "seed"]], on="run").drop(columns="run")
        return keyed.sort_values(["n_heads", "seed", "step", "role"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(
        by_config(pd.read_csv(sweep / "compare" / "role_history.csv"), local_runs),
        by_config(pd.read_csv(out / "role_history.csv"), wandb_runs),
    )
    assert (out / "role_emergence.png").stat().st_size > 1024

    # The pruning steps logged to W&B are the local curve of the same criterion.
    curve_cols = ["frac_pruned", "heads_remaining", "val_loss", "val_acc"]
    local_curve = pd.read_csv(sweep / "compare" / "pruning.csv").query("criterion == 'importance'")
    pd.testing.assert_frame_equal(
        local_curve[curve_cols].reset_index(drop=True),
        pd.read_csv(out / "pruning.csv")[curve_cols],
        check_dtype=False,
    )


# --------------------------------------------------------------------------- a row is one configuration


def test_config_axes_rule() -> None:
    from mhaexp.compare.runs import config_axes

    base = {"seed": 0, "name": "a", "logger.name": "a", "data.cache_dir": "/x", "resume": None, "model.n_layers": 2}
    # Names, logging, paths and resume differ without making another configuration.
    other = {**base, "seed": 1, "name": "b", "logger.name": "b", "data.cache_dir": "/y", "resume": "auto"}
    assert config_axes([base, other]) == []
    assert config_axes([base, {**other, "model.n_layers": 1}]) == ["model.n_layers"]
    # Missing is a value, and not null: three configurations.
    assert config_axes([{"model.head_dim": None}, {"model.head_dim": 8}, {}]) == ["model.head_dim"]
    # data.seed resolved from ${seed} (W&B's resolved config) is the seed again ...
    assert config_axes([{"seed": s, "data.seed": s} for s in (0, 1)]) == []
    # ... unresolved, it is the same text in every run; held fixed, it never differs ...
    assert config_axes([{"seed": s, "data.seed": "${seed}"} for s in (0, 1)]) == []
    assert config_axes([{"seed": s, "data.seed": 0} for s in (0, 1)]) == []
    # ... and swept on its own it is an axis.
    assert config_axes([{"seed": s, "data.seed": d} for s in (0, 1) for d in (0, 1)]) == ["data.seed"]
    # Lists compare by content, 1 and "1" differ.
    assert config_axes([{"optim.betas": [0.9, 0.95]}, {"optim.betas": [0.9, 0.95]}]) == []
    assert config_axes([{"k": 1}, {"k": "1"}]) == ["k"]


def test_missing_key_is_its_own_configuration(tmp_path: Path) -> None:
    from mhaexp.compare.runs import MISSING, load_runs

    sweep = make_sweep(tmp_path, LAYER_RUNS[:4])  # one layer, learned and rope, seeds 0 and 1
    for run in LAYER_RUNS[2:4]:  # the rope runs come from an older mhaexp without model.rope_base
        path = sweep / run.dirname / ".hydra" / "config.yaml"
        config = yaml.safe_load(path.read_text())
        del config["model"]["rope_base"]
        path.write_text(yaml.safe_dump(config))
    runset = load_runs([sweep])
    assert runset.axes == ["model.pos", "model.rope_base"]
    assert runset.runs["model.rope_base"].tolist() == [10000.0, 10000.0, MISSING, MISSING]
    assert runset.runs["config"].tolist()[2] == f"model.pos=rope, model.rope_base={MISSING}"


def test_layer_sweep_rows_are_configurations_in_both_sources(
    tmp_path: Path, replay_server: tuple[str, list[dict[str, Any]]], run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    sweep = make_sweep(tmp_path / "local", LAYER_RUNS)
    local = run_cli(str(sweep))
    assert local.returncode == 0, local.stderr
    url, _ = replay_server
    wandb = run_cli(
        "--wandb", WANDB_PATH, "--group", LAYER_SWEEP, "--out", str(tmp_path / "wb"), env=wandb_env(url, tmp_path)
    )
    assert wandb.returncode == 0, wandb.stderr
    metric = "best_val_loss (mean ± std)"
    rows = parse_table(section(local.stdout, "configurations"))
    # By hand from layer_loss: 2.0 + 0.3 (1 layer) + 0.1 (learned), seeds +0 and +0.02; the merged row
    # of GROUP_KEYS was "2.2200 ± 0.1604" over all eight runs.
    assert [(r["model.n_layers"], r["model.pos"], r["n_heads"], r["runs"], r[metric]) for r in rows] == [
        ("1", "learned", "2", "2", "2.4100 ± 0.0141"),
        ("1", "rope", "2", "2", "2.3100 ± 0.0141"),
        ("2", "learned", "2", "2", "2.1100 ± 0.0141"),
        ("2", "rope", "2", "2", "2.0100 ± 0.0141"),
    ]
    assert rows[0][metric] == mean_std([2.40, 2.42])
    assert [r["params"] for r in rows] == [f"{params_total(r):,}" for r in LAYER_RUNS[::2]]
    # The W&B group gives the same table, to the digit.
    assert section(wandb.stdout, "configurations") == section(local.stdout, "configurations")
    assert "marginal gain" not in local.stdout  # n_heads is the same in every configuration

    out = sweep / "compare"
    report = (out / "report.md").read_text()
    assert "the runs differ (besides the seed) in `model.n_layers`, `model.pos`" in report
    assert "| 2 | 2 | 32 | 64 | none | 1 | rope | 2 | 2.3100 ± 0.0141 |" in report
    for where in (out, tmp_path / "wb"):
        configs = pd.read_csv(where / "configurations.csv")
        assert configs[["model.n_layers", "model.pos", "runs"]].values.tolist() == [
            [1, "learned", 2],
            [1, "rope", 2],
            [2, "learned", 2],
            [2, "rope", 2],
        ]
        assert configs["best_val_loss_mean"].round(6).tolist() == [2.41, 2.31, 2.11, 2.01]
        runs = pd.read_csv(where / "runs.csv")
        assert runs.groupby("config_id")["model.n_layers"].nunique().eq(1).all()


def test_plots_draw_a_series_per_configuration(tmp_path: Path) -> None:
    from mhaexp.compare.report.aggregation import aggregate, role_points
    from mhaexp.compare.runs import load_runs

    runset = load_runs([make_sweep(tmp_path, LAYER_RUNS)])
    agg = aggregate(runset.runs, "best_val_loss", runset.axes)
    # loss vs n_heads: one line per (n_layers, pos), each point one configuration.
    assert agg[["series", "n_heads", "runs"]].values.tolist() == [
        ["model.n_layers=1, model.pos=learned", 2, 2],
        ["model.n_layers=1, model.pos=rope", 2, 2],
        ["model.n_layers=2, model.pos=learned", 2, 2],
        ["model.n_layers=2, model.pos=rope", 2, 2],
    ]
    # Roles vs n_heads, by hand from head_roles(): 1 layer has 0.5 induction heads (seed 1's L0H1),
    # 2 layers have 1 (one per seed); averaging over n_layers would draw 0.75.
    points = role_points(runset.runs, runset.axes, "n_heads")
    assert points["series"].tolist() == agg["series"].tolist()
    assert points["roles/induction:mean"].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert points["roles/unassigned:mean"].tolist() == [0.0, 0.0, 1.0, 1.0]
    out = tmp_path / "report"
    from mhaexp.compare.report import write_report

    report = write_report(runset, out)
    assert {p.name for p in report.plots} >= {"loss_vs_heads.png", "roles_vs_heads.png"}


# --------------------------------------------------------------------------- real sweeps through the CLI

TRAIN_SMALL = [
    "model=tiny",
    "data.n_train=500",
    "data.n_val=64",
    "analysis.probe_sequences=16",
    "trainer.max_steps=10",
    "trainer.val_check_interval=5",
    "analysis=off",
    "logger=csv",
]
REAL_SWEEPS = {
    # Four configurations of two seeds each; GROUP_KEYS merged all eight into one row.
    "model": ["model.n_layers=1,2", "model.pos=learned,rope", "seed=0,1"],
    # data changes vocab and seq_len: a sweep of its own.
    "data": ["data=grammar,induction", "seed=0,1"],
}


@pytest.fixture(scope="module")
def real_sweeps(
    tmp_path_factory: pytest.TempPathFactory, run_cli: Callable[..., subprocess.CompletedProcess]
) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Both sweeps trained at once (``mhaexp-train -m``), then compared; each has its own data cache."""
    root = tmp_path_factory.mktemp("real")
    procs = {}
    for name, args in REAL_SWEEPS.items():
        env = {**os.environ, "WANDB_MODE": "offline", "MHAEXP_CACHE": str(root / f"cache_{name}")}
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "mhaexp.cli.train", "-m", *TRAIN_SMALL, *args, f"hydra.sweep.dir={root / name}"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    out = {}
    for name, proc in procs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, log[-3000:]
        out[name] = (root / name, run_cli(str(root / name)))
    return out


def own_best(sweep: Path, *keys: str) -> dict[tuple[Any, ...], list[float]]:
    """best_val_loss of each run from its own summary.json, by the values of ``keys`` in its config."""
    found: dict[tuple[Any, ...], list[float]] = {}
    for run in sorted(sweep.glob("*/summary.json")):
        config = yaml.safe_load((run.parent / ".hydra" / "config.yaml").read_text())
        key = tuple(config[group][field] for group, field in (k.split(".") for k in keys))
        found.setdefault(key, []).append(json.loads(run.read_text())["best_val_loss"])
    return found


@pytest.mark.slow
def test_real_sweep_over_n_layers_and_pos(real_sweeps: dict[str, tuple[Path, subprocess.CompletedProcess]]) -> None:
    sweep, proc = real_sweeps["model"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("8 runs (8 ok)")
    rows = parse_table(section(proc.stdout, "configurations"))
    expected = own_best(sweep, "model.n_layers", "model.pos")
    assert sorted(expected) == [(1, "learned"), (1, "rope"), (2, "learned"), (2, "rope")]
    assert [(int(r["model.n_layers"]), r["model.pos"]) for r in rows] == sorted(expected)
    for row in rows:
        values = expected[(int(row["model.n_layers"]), row["model.pos"])]
        assert row["runs"] == "2" and len(values) == 2
        assert row["best_val_loss (mean ± std)"] == mean_std(values)
    configs = pd.read_csv(sweep / "compare" / "configurations.csv")
    for _, row in configs.iterrows():
        values = expected[(row["model.n_layers"], row["model.pos"])]
        assert row["best_val_loss_mean"] == pytest.approx(sum(values) / 2, abs=1e-12)
    assert configs["best_val_loss_mean"].nunique() == 4
    report = (sweep / "compare" / "report.md").read_text()
    assert "| n_heads | n_kv_heads | head_dim | d_model | pruning | model.n_layers | model.pos | runs |" in report


@pytest.mark.slow
def test_real_sweep_over_data(real_sweeps: dict[str, tuple[Path, subprocess.CompletedProcess]]) -> None:
    sweep, proc = real_sweeps["data"]
    assert proc.returncode == 0, proc.stderr
    rows = parse_table(section(proc.stdout, "configurations"))
    expected = own_best(sweep, "data.kind")
    # The two data groups differ in many keys: a name per configuration, the keys once in its key table.
    keys = key_table(proc.stdout)
    assert [r["name"] for r in rows] == ["A", "B"]
    assert keys["data.kind"] == {"A": "grammar", "B": "induction"}
    for row in rows:
        assert row["runs"] == "2"
        assert row["best_val_loss (mean ± std)"] == mean_std(expected[(keys["data.kind"][row["name"]],)])
    # Every key the two data groups do not share shows, absent where a group lacks it.
    assert keys["data.seq_len"] == {"A": "37", "B": "41"}
    assert keys["data.variant"] == {"A": "(missing)", "B": "repeat"}
    assert keys["data.probe_conllu"] == {"A": "null", "B": "(missing)"}


def test_compare_html_report_loads_with_every_plot(
    tmp_path: Path,
    show: Any,
    browser: Any,
    ink: Any,
    page_resolves: Any,
    cli: Callable[..., subprocess.CompletedProcess],
) -> None:
    sweep = make_sweep(tmp_path)
    out = tmp_path / "cmp"
    proc = cli("mhaexp-compare", str(sweep), "--out", str(out), "--format", "html", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = out / "report.html"
    with browser(1280, 900) as b:
        refs = page_resolves(b, page)
        assert sum(tag == "img" for tag, _ in refs) >= 2, refs
        assert b.eval("document.querySelectorAll('table.compare').length") >= 1
        assert b.eval("document.querySelectorAll('table.compare tr').length") > 2
        shot = b.screenshot(tmp_path / "compare_report.png", full_page=True)
    show("mhaexp-compare --format html", shot)
    assert ink(shot) > 0.02


# --------------------------------------------------------------------------- runs that differ in many keys

MANY_SWEEP = "13-00-00_mn56op"
# Three unrelated configurations (grammar trained for 200 and 1000 steps, a byte-level text model), as
# the data/trainer config keys their runs differ in. Every other key is job_config's.
MANY_CONFIGS = (
    {"trainer.max_steps": 200},
    {"trainer.max_steps": 1000},
    {
        "data": {"kind": "text", "seq_len": 33, "batch_size": 32, "n_train": 20000, "n_val": 1000, "seed": 0},
        "data.path": "/data/corpus",
        "data.tokenizer": "bytes",
        "data.vocab_size": 4096,
        "data.split": "train",
    },
)
SHORT_NAMES = ["A", "B", "C"]


def make_many_key_runs(root: Path, heads: tuple[int, ...]) -> Path:
    """Run directories of MANY_CONFIGS, one run per configuration and head count."""
    runs = tuple(
        FakeRun(job, h, 0, round(2.0 + 0.1 * c - 0.05 * i, 4), f"mk{job:02d}q7z", group=MANY_SWEEP)
        for job, (c, (i, h)) in enumerate((c, ih) for c in range(len(MANY_CONFIGS)) for ih in enumerate(heads))
    )
    sweep = make_sweep(root, runs)
    for run in runs:
        path = sweep / run.dirname / ".hydra" / "config.yaml"
        config = yaml.safe_load(path.read_text())
        for key, value in MANY_CONFIGS[run.job // len(heads)].items():
            *parents, leaf = key.split(".")
            node = config
            for p in parents:
                node = node[p]
            node[leaf] = value
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return sweep


def key_table(stdout: str) -> dict[str, dict[str, str]]:
    """The terminal's configuration-names table: key -> {name: value}."""
    return {r.pop("key"): r for r in parse_table(section(stdout, "configuration names"))}


def test_runs_differing_in_many_keys_get_short_names_and_one_key_table(
    tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    from mhaexp.compare.report.aggregation import LABEL_MAX_CHARS, aggregate, role_points
    from mhaexp.compare.runs import load_runs

    sweep = make_many_key_runs(tmp_path, heads=(2,))
    out = tmp_path / "report"
    proc = run_cli(str(sweep), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    table = section(proc.stdout, "configurations")
    rows = parse_table(table)
    roles = ["positional", "previous_token", "syntactic", "induction", "unassigned"]
    # Shape, the name, runs, metric, params, KV bytes and one column per role: no column per differing key.
    assert re.split(r"\s{2,}", table[0].strip()) == [
        *("n_heads", "n_kv_heads", "head_dim", "d_model", "pruning", "name", "runs"),
        *("best_val_loss (mean ± std)", "params", "KV bytes/token", *roles),
    ]
    assert [r["name"] for r in rows] == SHORT_NAMES
    assert [r["best_val_loss (mean ± std)"] for r in rows] == ["2.0000 ± n/a", "2.1000 ± n/a", "2.2000 ± n/a"]
    # The key table: each differing key once, its value per name (absent keys are "(missing)").
    keys = key_table(proc.stdout)
    assert list(keys) == [
        *("data.kind", "data.seq_len", "data.batch_size", "trainer.max_steps"),
        *("data.path", "data.tokenizer", "data.vocab_size", "data.split"),
    ]
    assert keys["data.kind"] == {"A": "grammar", "B": "grammar", "C": "text"}
    assert keys["trainer.max_steps"] == {"A": "200", "B": "1000", "C": "200"}
    assert keys["data.path"] == {"A": "(missing)", "B": "(missing)", "C": "/data/corpus"}
    # One head count: nothing per doubling to show, in the terminal or the report.
    assert "marginal gain" not in proc.stdout
    report = (out / "report.md").read_text()
    assert "## Marginal gain" not in report
    assert "## Validation loss\n\n![Validation loss vs number of heads](loss_vs_heads.png)" in report
    assert report.count("| data.kind | grammar | grammar | text |") == 1
    assert "| trainer.max_steps |" not in report.split("## Configuration names")[0]
    # Legends and panel titles use the same labels: the names, not key=value text past LABEL_MAX_CHARS.
    runset = load_runs([sweep])
    assert aggregate(runset.runs, "best_val_loss", runset.axes)["series"].tolist() == SHORT_NAMES
    assert role_points(runset.runs, runset.axes, "n_heads")["series"].tolist() == SHORT_NAMES
    long_label = ", ".join(f"{k}={v['C']}" for k, v in keys.items())
    assert len(long_label) > LABEL_MAX_CHARS  # what the label would have been
    assert {p.name for p in out.glob("*.png")} == {"loss_vs_heads.png", "roles_vs_heads.png", "role_emergence.png"}


def test_doubling_section_needs_two_head_counts(
    tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    sweep = make_many_key_runs(tmp_path, heads=(2, 4))
    out = tmp_path / "report"
    proc = run_cli(str(sweep), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    gains = parse_table(section(proc.stdout, "marginal gain per doubling"))
    # A series per name; 2 -> 4 heads is one doubling, -0.05 in every configuration.
    assert [(g["series"], g["n_heads"], g["Δ per doubling"]) for g in gains] == [
        (name, h, d) for name in SHORT_NAMES for h, d in (("2", "-"), ("4", "-0.0500"))
    ]
    # Rows in config_id order (model.n_heads is the first axis); the names keep one meaning across them.
    rows = parse_table(section(proc.stdout, "configurations"))
    assert [(r["n_heads"], r["name"]) for r in rows] == [(h, n) for h in ("2", "4") for n in SHORT_NAMES]
    report = (out / "report.md").read_text()
    assert "## Marginal gain per doubling of heads" in report and "## Validation loss" not in report
    assert "![Validation loss vs number of heads](loss_vs_heads.png)" in report
