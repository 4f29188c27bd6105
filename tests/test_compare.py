"""``mhaexp-compare`` on a fake sweep: terminal table, report and plots, bad input, and the W&B source.

The fake sweep is written file by file in the run-directory contract (``.hydra/config.yaml``,
``status.json``, ``summary.json``, ``metrics.csv``, ``analysis/head_roles*.csv``, ``pruning_curve.csv``),
with numbers chosen so that the expected table can be worked out by hand.

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
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from mhaexp.analysis.role_families import ROLE_FAMILIES

ROOT = Path(__file__).resolve().parents[1]
WANDB_DATA = Path(__file__).resolve().parent / "data" / "wandb_api"
PROG = "mhaexp-compare"

SWEEP = "12-00-00_ab12cd"  # multirun/<date>/<time>_<uid>; also the W&B group of its runs
WANDB_PATH = "mhaexp-lab/mhaexp"
D_MODEL, N_LAYERS = 64, 2
STEPS = (0, 100, 200)  # analysis steps; the last is the end of training
ROLE_CYCLE = ("positional", "syntactic", "induction", "unassigned")
PARAMS_ATTENTION = N_LAYERS * (4 * D_MODEL * D_MODEL + 4 * D_MODEL)  # fixed width: same for every n_heads
PARAMS_TOTAL = PARAMS_ATTENTION + 70_000


@dataclass(frozen=True)
class FakeRun:
    job: int
    n_heads: int
    seed: int
    best_val_loss: float | None
    wandb_id: str
    status: str = "ok"
    error: str | None = None

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


def job_config(run: FakeRun) -> dict[str, Any]:
    """The resolved job config Hydra writes to .hydra/config.yaml."""
    return {
        "model": {
            "n_layers": N_LAYERS,
            "d_model": D_MODEL,
            "n_heads": run.n_heads,
            "n_kv_heads": None,
            "head_dim": None,
            "d_ff": 256,
            "max_seq_len": 64,
            "dropout": 0.0,
            "pos": "learned",
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
    n_total = N_LAYERS * run.n_heads
    for layer in range(N_LAYERS):
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
        "params/total": PARAMS_TOTAL,
        "params/attention": PARAMS_ATTENTION,
        "kv_cache_bytes_per_token": kv_bytes(run),
        "n_heads_total": N_LAYERS * run.n_heads,
        "global_step": last,
        **role_counts(run, last),
    }


def kv_bytes(run: FakeRun) -> int:
    head_dim = D_MODEL // run.n_heads
    return 2 * N_LAYERS * run.n_heads * head_dim * 2  # K and V, all layers, bf16


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
    n_total = N_LAYERS * run.n_heads
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


def write_run_dir(sweep_dir: Path, run: FakeRun) -> Path:
    """Exactly the files of the run-directory contract."""
    d = sweep_dir / run.dirname
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(job_config(run), sort_keys=False))
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model.n_heads={run.n_heads}", f"seed={run.seed}"]))
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
        for layer in range(N_LAYERS)
        for head in range(run.n_heads)
    ]
    pd.DataFrame(long).to_csv(d / "analysis" / "head_metrics.csv", index=False)
    history = [row for step in STEPS for row in head_roles(run, step)]
    pd.DataFrame(history).to_csv(d / "analysis" / "head_roles_history.csv", index=False)
    pd.DataFrame(head_roles(run, STEPS[-1])).to_csv(d / "analysis" / "head_roles.csv", index=False)
    if run.job == PRUNED_JOB:
        pd.DataFrame(pruning_rows(run)).to_csv(d / "pruning_curve.csv", index=False)
    return d


def make_sweep(root: Path) -> Path:
    sweep = root / "multirun" / "2025-01-01" / SWEEP
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")  # Hydra's own file beside the jobs
    for run in RUNS:
        write_run_dir(sweep, run)
    return sweep


# --------------------------------------------------------------------------- helpers


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mhaexp.cli.compare", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd or ROOT,
    )


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
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
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
    from mhaexp.compare.runs import GROUP_KEYS, load_runs

    runset = load_runs([make_sweep(tmp_path)])
    runs = runset.runs
    assert list(runs.columns[:3]) == ["run", "status", "error"]
    assert runs["run"].tolist() == [r.dirname for r in RUNS]  # sorted by configuration, then seed
    assert runs[list(GROUP_KEYS)].iloc[0].tolist() == [1, 1, 64, 64, "none"]  # nulls resolved
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
        page = recorded("runs.json")
        project = page["data"]["project"]
        if json.loads(variables.get("filters") or "{}") != {"group": SWEEP} or variables.get("cursor"):
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


def test_wandb_source_matches_local_source(
    local_run: tuple[Path, subprocess.CompletedProcess], tmp_path: Path, replay_server: tuple[str, list[dict[str, Any]]]
) -> None:
    sweep, local = local_run
    url, requests = replay_server
    wandb_home = tmp_path / "wandb_home"
    env = {
        "WANDB_BASE_URL": url,
        "WANDB_API_KEY": "0" * 40,
        "WANDB_DIR": str(wandb_home),
        "WANDB_CONFIG_DIR": str(wandb_home / "config"),
        "WANDB_CACHE_DIR": str(wandb_home / "cache"),
        "WANDB_DATA_DIR": str(wandb_home / "data"),
        "NETRC": str(wandb_home / "netrc"),
        "WANDB_SILENT": "true",
    }
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
