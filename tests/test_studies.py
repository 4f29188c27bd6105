"""Studies: the decision rules, the verdict code of each study on fixture results (a passing and a failing
case per claim), the report files, and the CLI's errors. The smoke runs of every study live in
tests/test_study_smoke.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mhaexp.studies import STUDIES, get_study
from mhaexp.studies.base import Study
from mhaexp.studies.report import report_markdown, verdict_document, write_report
from mhaexp.studies.runner import Budget, StudyContext, StudyError, prepare_out
from mhaexp.studies.verdict import Claim, Measure, all_hold, at_least, at_most, every, greater, untestable


# ---- decision rules ----------------------------------------------------------------------------
def test_measure_mean_spread_and_nan() -> None:
    m = Measure.of([1.0, 3.0, math.nan])
    assert m.n == 2 and m.mean == 2.0 and m.std == pytest.approx(math.sqrt(2))
    assert m.to_json() == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2, "values": [1.0, 3.0, None]}
    assert math.isnan(Measure.of(5.0).std) and str(Measure.of([])) == "n/a"


def test_bars_need_every_seed() -> None:
    assert at_least(Measure.of([0.6, 0.7]), 0.5) == (True, "")
    assert at_least(Measure.of([0.4, 0.3]), 0.5)[0] is False
    verdict, why = at_least(Measure.of([0.6, 0.4]), 0.5)
    assert verdict is None and "disagree" in why
    assert at_most(Measure.of([0.04]), 0.05)[0] is True
    assert at_least(Measure.of([math.nan]), 0.5)[0] is None


def test_greater_is_inconclusive_inside_the_seed_spread() -> None:
    assert greater(Measure.of([0.9, 0.8]), Measure.of([0.2, 0.3])) == (True, "")
    assert greater(Measure.of([0.2, 0.3]), Measure.of([0.8, 0.9]))[0] is False
    verdict, why = greater(Measure.of([0.5, 0.9]), Measure.of([0.6, 0.7]))
    assert verdict is None and "inside the seed spread" in why
    verdict, why = greater(Measure.of([0.9]), Measure.of([0.1]))  # one seed: spread unknown
    assert verdict is None and "2 seeds" in why


def test_all_hold_takes_the_first_part_that_is_not_true() -> None:
    assert all_hold([(True, ""), (True, "")]) == (True, "")
    assert all_hold([(None, "precondition"), (False, "x")]) == (None, "precondition")
    assert all_hold([(True, ""), (False, "x"), (None, "y")]) == (False, "x")


def test_every_fails_a_conjunction_on_any_failed_part() -> None:
    # voita2019's "positional, syntactic and rare-word heads": seeds disagreeing on positional heads must not
    # hide that neither seed has a rare-word head (all_hold would stop at the undecided part).
    assert all_hold([(None, "positional"), (True, ""), (False, "rare")]) == (None, "positional")
    assert every([(None, "positional"), (True, ""), (False, "rare")]) == (False, "rare")
    assert every([(True, ""), (None, "y"), (True, "")]) == (None, "y")
    assert every([(True, "a"), (True, "b")]) == (True, "a; b")
    assert every([(True, ""), untestable("by construction")]) == untestable("by construction")
    assert every([untestable("by construction"), (False, "x")]) == (False, "x")


# ---- report files ------------------------------------------------------------------------------
def test_report_and_verdict_files(tmp_path: Path) -> None:
    claims = [
        Claim("A holds", "Paper 2024, Sec. 1", "metric a", Measure.of([0.9, 0.8]), ">= 0.5", True, runs=["runs/x"]),
        Claim("B | piped", "Paper, Tab. 2", "metric b", {"x": Measure.of([1.0])}, "> y", None, why="one seed"),
    ]
    doc = verdict_document("demo", "Demo study", claims, Budget(seeds=2), {"train": 12.0}, 30.0)
    write_report(tmp_path, doc, claims, notes=["a note"])
    written = json.loads((tmp_path / "verdict.json").read_text())
    assert written["claims"][0] == {
        "claim": "A holds",
        "source": "Paper 2024, Sec. 1",
        "metric": "metric a",
        "ours": {"mean": pytest.approx(0.85), "std": pytest.approx(0.0707, abs=1e-4), "n": 2, "values": [0.9, 0.8]},
        "criterion": ">= 0.5",
        "criterion_source": "",
        "holds": True,
        "why": "",
        "paper": "",
        "runs": ["runs/x"],
        "plot": None,
    }
    assert written["claims"][1]["holds"] is None and written["runtime_s"] == 30.0
    md = (tmp_path / "report.md").read_text()
    assert md == report_markdown(doc, claims, ["a note"])
    assert "2 claims, 1 hold, 0 do not, 1 inconclusive" in md and "B \\| piped" in md
    assert "**inconclusive**" in md and "Ran in 0.5 min" in md and "- a note" in md


def test_a_rerun_empties_only_its_own_directory(tmp_path: Path) -> None:
    from mhaexp.errors import ConfigError

    mine = tmp_path / "study"
    prepare_out(mine)
    (mine / "runs").mkdir()
    prepare_out(mine)
    assert not (mine / "runs").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(ConfigError, match="--out"):
        prepare_out(other)
    assert (other / "precious.txt").exists()


class _StepsStudy(Study):
    """A study whose one verdict is the step count it reads from its budget."""

    name, title, default_steps, minutes, summary = "steps", "Steps", 100, 1.0, "test"

    def run(self, ctx: StudyContext) -> None:
        (ctx.runs_dir / "train").mkdir(parents=True)

    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        steps = ctx.budget.n_steps(self.default_steps)
        return [Claim("steps", "test", "steps", Measure.of([steps]), "> 0", steps > 0)]


def test_verdict_only_reads_the_budget_the_runs_were_trained_with(tmp_path: Path) -> None:
    from mhaexp.errors import ConfigError

    out = tmp_path / "study"
    _StepsStudy().execute(out, Budget(steps=500, seeds=3), echo=lambda _: None)
    assert json.loads((out / "budget.json").read_text())["steps"] == 500
    again = _StepsStudy().execute(out, Budget(), rerun=False)  # as `--verdict-only` without --steps
    assert again["budget"]["steps"] == 500 and again["claims"][0]["ours"]["values"] == [500]
    assert _StepsStudy().execute(out, Budget(steps=500), rerun=False)["budget"]["seeds"] == 3
    with pytest.raises(ConfigError, match=r"--steps=100 is invalid: 500, as the runs in .* had"):
        _StepsStudy().execute(out, Budget(steps=100), rerun=False)
    with pytest.raises(ConfigError, match=r"--seeds=2 is invalid: 3"):
        _StepsStudy().execute(out, Budget(seeds=2), rerun=False)
    # A study stopped part way (Ctrl-C, a failed stage) left budget.json unfinished: its runs are not all of them.
    budget_doc = json.loads((out / "budget.json").read_text())
    assert budget_doc["finished"] is True
    (out / "budget.json").write_text(json.dumps({**budget_doc, "finished": False}))
    with pytest.raises(ConfigError, match=r"--out=.* is invalid: a study whose runs finished \(these were stopped"):
        _StepsStudy().execute(out, Budget(), rerun=False)
    # A study directory from before budget.json: the budget in its verdict.json.
    (out / "budget.json").unlink()
    assert _StepsStudy().execute(out, Budget(), rerun=False)["budget"]["steps"] == 500
    for empty in (tmp_path / "none", tmp_path):
        with pytest.raises(ConfigError, match="--out=.* is invalid: a directory a study run wrote"):
            _StepsStudy().execute(empty, Budget(), rerun=False)
    assert not (tmp_path / "none").exists()


# ---- wu2024 on fixture results ----------------------------------------------------------------
def _wu_fixture(tmp_path: Path, rows: list[dict]) -> list[Claim]:
    ctx = StudyContext("wu2024", tmp_path, Budget())
    for i, r in enumerate(rows):
        r.setdefault("run", str(tmp_path / "runs" / "train" / f"{i}_x"))
        r.setdefault("n_heads", 24)
        r.setdefault("n_scored", 24)
        r.setdefault("retrieval_bar", 0.1)  # the runs' analysis.thresholds.retrieval, recorded by measure_masking
    ctx.eval_path("masking.json").write_text(json.dumps(rows))
    return get_study("wu2024").verdicts(ctx)


def test_wu2024_verdicts_hold_on_a_clear_case(tmp_path: Path) -> None:
    rows = [
        {"retrieval_heads": [[1, 2]], "acc_full": 0.95, "acc_retrieval_masked": 0.1, "acc_random_masked": [0.9, 0.93]},
        {"retrieval_heads": [[1, 5]], "acc_full": 0.9, "acc_retrieval_masked": 0.2, "acc_random_masked": [0.88, 0.9]},
    ]
    exists, sparse, collapse, control = _wu_fixture(tmp_path, rows)
    assert (exists.holds, sparse.holds, collapse.holds, control.holds) == (True, True, True, True)
    get_study("wu2024").plot(StudyContext("wu2024", tmp_path, Budget()), rows)
    assert (tmp_path / "masking.png").stat().st_size > 1000
    assert sparse.ours["share"].values == (1 / 24, 1 / 24)
    assert collapse.ours["ratio"].values == pytest.approx((0.1 / 0.95, 0.2 / 0.9))
    assert sparse.runs == ["runs/train/0_x", "runs/train/1_x"]


def test_wu2024_retrieval_heads_are_those_above_the_runs_own_bar(tmp_path: Path) -> None:
    """The bar is the run's analysis.thresholds.retrieval (its .hydra/config.yaml), not a copy in the study."""
    from mhaexp.studies.wu2024 import retrieval_heads

    rows = [(100, 0, h, "retrieval", v) for h, v in enumerate((0.05, 0.15, 0.4))]
    paper = fake_run(tmp_path / "a", 0, {"analysis": {"thresholds": {"retrieval": 0.1}}}, rows)
    strict = fake_run(tmp_path / "b", 0, {"analysis": {"thresholds": {"retrieval": 0.3}}}, rows)
    assert retrieval_heads(paper) == ([(0, 1), (0, 2)], 3, 0.4)
    assert retrieval_heads(strict) == ([(0, 2)], 3, 0.4)


def test_wu2024_verdicts_fail_on_a_clear_counter_case(tmp_path: Path) -> None:
    heads = [[0, h] for h in range(4)]  # 4 of 24 heads: not sparse
    rows = [
        {"retrieval_heads": heads, "acc_full": 0.95, "acc_retrieval_masked": 0.9, "acc_random_masked": [0.2, 0.3]},
        {"retrieval_heads": heads, "acc_full": 0.9, "acc_retrieval_masked": 0.85, "acc_random_masked": [0.1, 0.2]},
    ]
    exists, sparse, collapse, control = _wu_fixture(tmp_path, rows)
    assert (exists.holds, sparse.holds, collapse.holds, control.holds) == (True, False, False, False)


def test_wu2024_a_model_without_retrieval_heads_is_not_sparse_and_has_nothing_to_mask(tmp_path: Path) -> None:
    """Learned the task by another route (no head copies the needle): 'they exist' does not hold; their
    share says nothing about sparsity and masking has nothing to act on, so those are inconclusive."""
    rows = [
        {
            "retrieval_heads": [],
            "best_retrieval": 0.08,
            "acc_full": 0.9,
            "acc_retrieval_masked": math.nan,
            "acc_random_masked": [],
        },
        {
            "retrieval_heads": [],
            "best_retrieval": 0.05,
            "acc_full": 0.8,
            "acc_retrieval_masked": math.nan,
            "acc_random_masked": [],
        },
    ]
    exists, sparse, collapse, control = _wu_fixture(tmp_path, rows)
    assert (exists.holds, sparse.holds, collapse.holds, control.holds) == (False, None, None, None)
    assert "no head reaches a retrieval score of 0.1" in exists.why and "0.08" in exists.why
    assert "no retrieval heads to count" in sparse.why
    assert "no retrieval head to mask" in collapse.why and "no retrieval head to mask" in control.why


def test_wu2024_is_inconclusive_when_the_task_was_not_learned(tmp_path: Path) -> None:
    rows = [
        {"retrieval_heads": [], "acc_full": 0.1, "acc_retrieval_masked": math.nan, "acc_random_masked": []},
        {"retrieval_heads": [], "acc_full": 0.05, "acc_retrieval_masked": math.nan, "acc_random_masked": []},
    ]
    claims = _wu_fixture(tmp_path, rows)
    assert [c.holds for c in claims] == [None, None, None, None]
    assert all("did not learn the task" in c.why for c in claims)


# ---- the command line -------------------------------------------------------------------------
def test_study_cli_lists_and_refuses_bad_input(cli, tmp_path: Path) -> None:
    listed = cli("mhaexp-study", "list", cwd=tmp_path)
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(STUDIES)
    bad = cli("mhaexp-study", "wu2025", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"mhaexp-study: error: study='wu2025' is invalid: one of {', '.join(STUDIES)} (or list)"
    ]
    bad = cli("mhaexp-study", "wu2024", "trainer=tpu", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "trainer" in bad.stderr and "tpu" in bad.stderr
    assert not (tmp_path / "o").exists()  # refused before anything was written
    # Options and overrides mix in any order, as in `experiments/x.sh --steps 5000 trainer=gpu`.
    mixed = cli("mhaexp-study", "wu2024", "--steps", "5", "trainer=tpu", "--seeds", "1", cwd=tmp_path)
    assert mixed.returncode == 2 and "trainer" in mixed.stderr and "unrecognized" not in mixed.stderr


def test_every_study_has_its_experiments_script(tmp_path: Path) -> None:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    scripts = {p.stem for p in (root / "experiments").glob("*.sh")}
    assert scripts == set(STUDIES)
    # The script is the documented command: it hands its arguments to mhaexp-study.
    proc = subprocess.run(
        [str(root / "experiments" / "gu2024.sh"), "trainer=tpu", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("mhaexp-study: error: ")
    assert "tpu" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ---- fixture runs: the files a finished job leaves, written by hand --------------------------
def fake_run(
    stage_dir: Path,
    num: int,
    config: dict,
    head_rows: list[tuple[int, int, int, str, float]] = (),
    scalars: list[dict] = (),
    summary: dict | None = None,
) -> Path:
    """A run directory as the readers see it: .hydra/{config,overrides}.yaml, status.json, the tidy head
    table (step, layer, head, metric, value), metrics.csv and summary.json."""
    import csv

    import yaml

    run = stage_dir / f"{num}_fixture"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([]))
    (run / "status.json").write_text(json.dumps({"status": "ok"}))
    (run / "summary.json").write_text(json.dumps(summary or {}))
    (run / "analysis").mkdir()
    with (run / "analysis" / "head_metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "layer", "head", "metric", "value"])
        w.writerows(head_rows)
    keys = sorted({k for r in scalars for k in r} | {"step"})
    with (run / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(scalars)
    return run


def _olsson_runs(tmp_path: Path, jump: int, gap_drop_at: int, final_2l: float, bar: float = 0.5) -> StudyContext:
    """Two seeds of 1 and 2 layers over 1500 steps, analysed every 50; the 2-layer runs' best prefix
    matching jumps from 0.05 to ``final_2l`` at step ``jump``; the in-context gap falls at ``gap_drop_at``.
    The runs were trained with ``analysis.thresholds.induction=bar``."""
    ctx = StudyContext("olsson2022", tmp_path, Budget(steps=1500, seeds=2))
    steps = range(0, 1501, 50)
    num = 0
    for layers in (1, 2):
        for seed in (0, 1):
            pm = [(s, 0, 0, "prefix_matching", 0.05 if layers == 1 or s < jump else final_2l) for s in steps]
            pm += [(s, 0, 1, "prefix_matching", 0.01) for s in steps]
            gap = [{"step": s - 1, "val/icl_gap": 0.0 if s < gap_drop_at or layers == 1 else -1.5} for s in steps if s]
            config = {"seed": seed, "model": {"n_layers": layers}, "analysis": {"thresholds": {"induction": bar}}}
            fake_run(ctx.runs_dir / "train", num, config, pm, gap)
            num += 1
    return ctx


def test_olsson2022_verdicts_hold_when_heads_and_the_gap_jump_together(tmp_path: Path) -> None:
    ctx = _olsson_runs(tmp_path, 600, 600, 0.9)
    formed, phase, icl = get_study("olsson2022").verdicts(ctx)
    assert (formed.holds, phase.holds, icl.holds) == (True, True, True)
    get_study("olsson2022").plot(ctx)
    assert (tmp_path / "phase_change.png").stat().st_size > 1000
    assert formed.ours["2 layers"].values == (0.9, 0.9) and formed.ours["1 layer"].values == (0.05, 0.05)
    assert phase.ours["window"].values == (0.0, 0.0)  # the whole climb between two analyses: 600 -> 600
    assert icl.ours.values == (1.0, 1.0)


def test_olsson2022_verdicts_fail_when_they_do_not(tmp_path: Path) -> None:
    # No induction head: claim 1 fails, and the other two have nothing to be about.
    claims = get_study("olsson2022").verdicts(_olsson_runs(tmp_path / "a", 600, 600, 0.3))
    assert [c.holds for c in claims] == [False, None, None]
    # Heads form at 600 but the in-context gap falls only at 1400: claim 3 fails.
    claims = get_study("olsson2022").verdicts(_olsson_runs(tmp_path / "b", 600, 1400, 0.9))
    assert [c.holds for c in claims] == [True, True, False]


def test_olsson2022_judges_heads_by_the_runs_own_induction_bar(tmp_path: Path) -> None:
    """The bar is each run's analysis.thresholds.induction, not a copy in the study: the same heads (best
    prefix matching 0.9) are induction heads under the paper's 0.5 and not under a bar of 0.95."""
    formed = get_study("olsson2022").verdicts(_olsson_runs(tmp_path / "a", 600, 600, 0.9, bar=0.5))[0]
    assert formed.holds is True and ">= 0.5 " in formed.criterion
    formed = get_study("olsson2022").verdicts(_olsson_runs(tmp_path / "b", 600, 600, 0.9, bar=0.95))[0]
    assert formed.holds is False and ">= 0.95 " in formed.criterion


def _roles_file(run: Path, rows: list[tuple[int, int, str, float]]) -> None:
    import csv

    with (run / "analysis" / "head_roles.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "layer", "head", "role", "family", "score", "margin"])
        w.writerows([(300, layer, h, role, role.split(":")[0], 0.9, margin) for layer, h, role, margin in rows])


def test_seed_table_verdicts_pass_and_fail(tmp_path: Path) -> None:
    ctx = StudyContext("seed_table", tmp_path, Budget(seeds=2))
    for seed in (0, 1):
        causal = fake_run(ctx.runs_dir / "train", 2 * seed, {"seed": seed, "model": {"causal": True}})
        _roles_file(causal, [(1, 2, "syntactic:nsubj", 0.6), (0, 1, "coreference", 0.2)])
        encoder = fake_run(ctx.runs_dir / "train", 2 * seed + 1, {"seed": seed, "model": {"causal": False}})
        _roles_file(encoder, [(0, 3, "positional:-1", 0.3)] + ([(1, 1, "syntactic:pobj", 0.1)] if seed == 0 else []))
    verdict = {c.claim: c.holds for c in get_study("seed_table").verdicts(ctx)}
    assert list(verdict.values()) == [True, True, False, True, None]  # prepositional: seed 0 only


def test_a_recorded_run_path_is_read_inside_this_study_directory(tmp_path: Path) -> None:
    # A copied study must read its own runs, never the original's: old absolute paths are re-rooted.
    ctx = StudyContext("x", tmp_path / "copy", Budget())
    own = tmp_path / "copy" / "runs" / "train" / "0_job"
    assert ctx.run_path(str(tmp_path / "original" / "runs" / "train" / "0_job")) == own
    assert ctx.run_path("runs/train/0_job") == own
    assert ctx.run_path("/data/runs/studies/wu/runs/prune/3_job") == tmp_path / "copy" / "runs" / "prune" / "3_job"
    with pytest.raises(StudyError, match="no 'runs/' in the path"):
        ctx.run_path("/data/elsewhere/0_job")
