"""Smoke tests of the benchmark and the GPU check: they run and report. No timing is asserted:
the CPUs tests run on are shared, so only the shape and sanity of the numbers are checked."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    env.pop("OUT", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_bench_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # One thread: on a loaded machine two OpenMP threads can stall on each other and take minutes.
    # Only this module's sections: the ones other modules register are theirs to test, and take minutes.
    args = ["--quick", "--threads", "1", "--sections", "attention,gqa,train", "--out", str(out)]
    p = run_module("mhaexp.tools.bench", *args, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads(out.read_text())
    assert {"env", "sections", "skipped", "errors", "missed"} <= data.keys()
    assert set(data["sections"]) == {"attention", "gqa", "train"}
    assert data["errors"] == {}
    assert data["env"]["threads"] == 1
    metrics = {(r["section"], r["metric"]) for rows in data["sections"].values() for r in rows}
    assert {
        ("attention", "ours/nanoGPT"),
        ("attention", "ours/torch.nn.MHA"),
        ("attention", "ours/ours explicit"),
        ("gqa", "GQA/MHA"),
        ("train", "ours tokens/s"),
        ("train", "ours MFU"),
        ("train", "nanoGPT MFU"),
        ("train", "ours/nanoGPT MFU"),
    } <= metrics
    for name in ("attention", "gqa", "train"):
        for r in data["sections"][name]:
            assert {"case", "metric", "median", "min", "max", "unit", "target", "ok"} <= r.keys()
            for key in ("median", "min", "max"):
                assert math.isfinite(r[key]) and r[key] > 0, r
            assert r["min"] <= r["median"] <= r["max"], r
    # The benchmark's references must compute the function it compares them with.
    agree = [r["extra"]["max_abs_diff_outputs"] for r in data["sections"]["attention"] if r["metric"] == "ours/nanoGPT"]
    assert agree and max(agree) < 1e-4


def test_bench_unknown_section_is_a_usage_error(tmp_path: Path) -> None:
    p = run_module("mhaexp.tools.bench", "--sections", "nope", timeout=60)
    assert p.returncode == 2
    assert "unknown section" in p.stderr


def test_bench_register_adds_a_section() -> None:
    from mhaexp.tools import bench

    @bench.register("test_only")
    def fake(args: bench.Args) -> list[bench.Row]:
        return [bench.Row("test_only", "c", "m", 1.0, 0.5, 2.0, target="<= 1.5")]

    try:
        names, skipped = bench.resolve_sections(["test_only", "analysis"])
        assert names == ["test_only"] or names == ["test_only", "analysis"]
        assert "analysis" in skipped or "analysis" in bench.SECTIONS
        row = bench.SECTIONS["test_only"](bench.Args())[0]
        assert row.ok is True and row.to_dict()["ok"] is True
    finally:
        bench.SECTIONS.pop("test_only", None)


def test_flops_per_token_formula() -> None:
    from mhaexp.tools.bench.reference import NanoGPT, matmul_flops_per_token

    model = NanoGPT(vocab_size=100, block_size=16, n_layer=2, n_embd=32, n_head=4)
    weights = 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32) + 100 * 32  # per block: c_attn, c_proj, c_fc, c_proj
    assert matmul_flops_per_token(model, 2, 16, 32) == 6 * weights + 12 * 2 * 16 * 32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_check_without_cuda_exits_1_quickly(tmp_path: Path) -> None:
    p = run_module("mhaexp.tools.bench.gpu_check", "--out", str(tmp_path / "g.json"), timeout=60)
    assert p.returncode == 1
    assert "no CUDA device" in p.stdout + p.stderr
    assert not (tmp_path / "g.json").exists()


def _no_constants(name: str) -> None:
    raise ValueError(f"not JSON: {name}")


@pytest.mark.slow
def test_gpu_check_tiny_runs_every_performance_section_on_cpu(tmp_path: Path) -> None:
    """``gpu_check --tiny``: the GPU check's layer timing, compile, MFU and sweep code end to end on the CPU,
    the target table printed, strict JSON written (no NaN/Infinity)."""
    out = tmp_path / "g.json"
    p = run_module("mhaexp.tools.bench.gpu_check", "--tiny", "--out", str(out), timeout=1000)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    doc = json.loads(out.read_text(), parse_constant=_no_constants)
    assert doc["mode"] == "tiny" and doc["ok"] is True
    assert doc["status"] == {"layer_timing": "PASS", "compile": "PASS", "sweep": "PASS"}
    rows = {r["target"]: r for r in doc["targets"]}
    assert len(rows) == 5 and all(isinstance(r["value"], float) and r["value"] > 0 for r in rows.values())
    assert {r["bound"] for r in rows.values()} == {"<= 1", ">= 1.5", ">= 0.4", ">= 3"}
    res = doc["results"]
    assert all(t["max_abs_diff_outputs"] < 1e-5 for t in res["layer_timing"]["fwd_bwd"].values())
    comp = res["compile"]
    assert comp["eager"]["tokens_per_s"] > 0 and comp["compiled"]["tokens_per_s"] > 0 and comp["compile_s"] > 0
    assert 0 < comp["compiled"]["mfu_measured"] < 1
    assert res["sweep"]["finished_jobs"] == {"seq": 2, "par": 2}
    assert "targets (issue 14) -- TINY MODE" in p.stdout and "trainer.compile tokens/s compiled/eager" in p.stdout


def test_sweep_ceiling_times_a_step_of_each_jobs_own_model(tmp_path: Path, cli, tiny) -> None:
    """The sweep section's ceiling rebuilds each sequential job's model from its checkpoint, at that job's
    batch shape, and times it at a given thread count, alone and side by side."""
    from mhaexp.tools.bench.sweep import ceiling

    jobs = []
    for heads in (1, 4):
        run = tmp_path / f"h{heads}"
        p = cli(
            "mhaexp-train",
            *tiny,
            "trainer.max_steps=2",
            f"model.n_heads={heads}",
            "logger=csv",
            f"hydra.run.dir={run}",
            cwd=tmp_path,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        jobs.append(run)
    p = run_module("mhaexp.tools.bench.sweep", "--threads", "1", "--steps", "1", *map(str, jobs), timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    step_s = json.loads(p.stdout.strip().splitlines()[-1])["step_s"]
    assert math.isfinite(step_s) and step_s > 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    value = ceiling(jobs, slots=2, steps=1, env=env)
    assert math.isfinite(value) and value > 0
    with pytest.raises(RuntimeError, match="step timing failed"):
        ceiling([tmp_path / "no-such-job"], slots=2, steps=1, env=env)
