"""Every study, end to end at the smoke budget (STUDY_SMOKE=1): it runs, and writes a well-formed
verdict.json and report.md. The verdicts' values say nothing at this budget and are not checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mhaexp.studies import STUDIES
from mhaexp.studies.verdict import UNTESTABLE

BIN = Path(sys.executable).parent
CLAIM_KEYS = {
    "claim",
    "source",
    "metric",
    "ours",
    "criterion",
    "criterion_source",
    "holds",
    "why",
    "paper",
    "runs",
    "plot",
}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One data cache for all studies: most train on the same grammar data.
    return str(tmp_path_factory.mktemp("study-cache"))


@pytest.mark.parametrize("study", list(STUDIES))
def test_study_runs_end_to_end_at_the_smoke_budget(study: str, cli, shared_cache: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = cli(
        "mhaexp-study",
        study,
        "--out",
        str(out),
        # One job at a time: beside the suite's other worker the second sweep worker only adds its start-up
        # (about a fifth of a smoke study's CPU time); the parallel launcher is proven by the stop tests below.
        "--jobs",
        "1",
        cwd=tmp_path,
        timeout=900,
        extra_env={"STUDY_SMOKE": "1", "MHAEXP_CACHE": shared_cache},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads((out / "verdict.json").read_text())
    assert doc["study"] == study and doc["budget"]["smoke"] is True and doc["runtime_s"] > 0
    assert doc["claims"], "a study makes at least one claim"
    for claim in doc["claims"]:
        assert set(claim) == CLAIM_KEYS
        assert claim["holds"] in (True, False, None, UNTESTABLE)
        assert claim["holds"] not in (None, UNTESTABLE) or claim["why"], "an undecided verdict says why"
        assert claim["source"] and claim["criterion"] and claim["criterion_source"] and claim["metric"]
        for run in claim["runs"]:
            assert (out / run / "status.json").is_file(), run
        if claim["plot"]:
            assert (out / claim["plot"]).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert report.startswith(f"# {doc['title']}") and report.count("\n## ") >= len(doc["claims"])
    # Every run of the study carries its W&B tag.
    for run in {r for c in doc["claims"] for r in c["runs"]}:
        config = (out / run / ".hydra" / "config.yaml").read_text()
        assert f"study:{study}" in config
    # A study directory moved elsewhere recomputes the same verdicts from its own runs (eval files record
    # the runs' old absolute paths; the old place is gone, so reading it would fail).
    moved = out.rename(tmp_path / "moved")
    again = cli("mhaexp-study", study, "--verdict-only", "--out", str(moved), cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    redone = json.loads((moved / "verdict.json").read_text())["claims"]
    fields = lambda claims: json.dumps([[c[k] for k in ("claim", "holds", "runs", "ours")] for c in claims])  # noqa: E731
    assert fields(redone) == fields(doc["claims"])  # as JSON text: NaN is not equal to itself


def _processes() -> dict[int, int]:
    """Every live process: pid -> parent pid, from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z":  # a zombie has exited; its parent has yet to reap it
                out[int(d.name)] = int(fields[1])
    return out


def _descendants(pid: int) -> set[int]:
    procs, found = _processes(), {pid}
    while True:
        more = {p for p, parent in procs.items() if parent in found} - found
        if not more:
            return found - {pid}
        found |= more


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stop_ends_the_running_sweep_and_its_parallel_workers(
    signum: signal.Signals, shared_cache: str, tmp_path: Path
) -> None:
    """``kill <mhaexp-study>`` (or scancel, or Ctrl-C) mid-sweep ends the sweep's mhaexp-train and its joblib
    workers too; Ctrl-C says so in one line, and the stopped study's runs are refused to ``--verdict-only``."""
    env = {**os.environ, "WANDB_MODE": "offline", "STUDY_SMOKE": "1", "MHAEXP_CACHE": shared_cache}
    cmd = [str(BIN / "mhaexp-study"), "olsson2022", "--out", str(tmp_path / "out"), "--jobs", "2"]
    study = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, group = time.monotonic() + 240, set()
        while time.monotonic() < deadline and study.poll() is None:
            group = _descendants(study.pid)
            if len(group) >= 3:  # mhaexp-train and both workers
                break
            time.sleep(0.2)
        assert len(group) >= 3, f"no parallel sweep seen: {group}, study exit {study.poll()}"
        study.send_signal(signum)
        assert study.wait(timeout=30) == 128 + signum
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and group & set(_processes()):
            time.sleep(0.2)
        assert not group & set(_processes()), "processes of the sweep outlived the study"
        said = study.stdout.read().decode()
        assert "Traceback" not in said, said[-3000:]
        if signum == signal.SIGINT:
            assert said.strip().splitlines()[-1].startswith("mhaexp-study: error: interrupted; "), said[-2000:]
        again = subprocess.run([*cmd, "--verdict-only"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert again.returncode == 2 and "Traceback" not in again.stderr
        assert "is invalid: a study whose runs finished (these were stopped part way" in again.stderr, again.stderr
    finally:
        study.kill()
        study.wait()
