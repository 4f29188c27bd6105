"""The GPU check's printed summary: one line per figure, and issue 14's target table."""

from __future__ import annotations

import json
from typing import Any

from mhaexp.tools.bench.gpu_profile import COMPILE_TARGET, LAYER_TARGET, MFU_TARGET, SWEEP_TARGET, Mode


def targets(results: dict[str, Any], mode: Mode) -> list[dict[str, Any]]:
    """Issue 14's targets against what this run measured: one row each (value None when not measured)."""
    rows: list[dict[str, Any]] = []

    def row(name: str, value: Any, op: str, bound: float, unit: str = "x") -> None:
        ok = None if value is None else (value <= bound if op == "<=" else value >= bound)
        rows.append({"target": name, "value": value, "unit": unit, "bound": f"{op} {bound:g}", "ok": ok})

    layer = _g(results, "layer", "fwd_bwd_bf16") or _g(results, "layer_timing", "fwd_bwd") or {}
    for B, T, d, nh in mode.layer_shapes:
        row(
            f"layer fwd+bwd ours/nanoGPT B{B} T{T} d{d}",
            _g(layer, f"B{B} T{T} d{d} h{nh}", "ours/nanoGPT", "median"),
            "<=",
            LAYER_TARGET,
        )
    comp = results.get("compile", {})
    row(
        "trainer.compile tokens/s compiled/eager",
        _g(comp, "compiled/eager tokens_per_s", "median"),
        ">=",
        COMPILE_TARGET,
    )
    peak = "fp32" if mode.tiny else "bf16"
    row(
        f"MFU compiled, of measured {peak} matmul peak",
        _g(comp, "compiled", "mfu_measured"),
        ">=",
        MFU_TARGET,
        "of peak",
    )
    jobs = len(mode.sweep_heads.split(","))
    row(
        f"sweep {jobs} jobs parallel/sequential jobs per hour",
        _g(results, "sweep", "parallel/sequential"),
        ">=",
        SWEEP_TARGET,
    )
    return rows


def target_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ("target", "measured", "unit", "bound", "")
    body = [
        (
            r["target"],
            "not measured" if r["value"] is None else f"{r['value']:.3f}",
            r["unit"],
            r["bound"],
            {True: "ok", False: "MISSED", None: "-"}[r["ok"]],
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in (head, *body)]


def short(value: Any) -> str:
    """One line of a section's result for the summary."""
    text = json.dumps(value, default=str)
    return text if len(text) < 400 else text[:400] + " ..."


def _g(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def report(results: dict[str, Any]) -> list[str]:
    """The figures a report needs, one line each (the JSON holds everything)."""
    lines: list[str] = []
    env = results.get("env", {})
    if "torch" in env:
        names = ", ".join(d["name"] for d in env["devices"])
        lines.append(
            f"env: torch {env['torch']} CUDA {env['cuda']} cuDNN {env['cudnn']} NCCL {env['nccl']}; "
            f"{env['device_count']} x [{names}]; bf16 {env['bf16_supported']}"
        )
    for label in ("MHA", "GQA"):
        lay = _g(results, "layer", label)
        if lay:
            fp = lay["fp32_fast_vs_explicit"]
            bf = " ".join(f"{k} {v:.1e}" for k, v in lay["bf16_fast_vs_fp32_explicit_rel"].items())
            lines.append(
                f"layer {label}: fp32 fast-vs-explicit max|diff| y {fp['y']['max_abs']:.2e} "
                f"dx {fp['dx']['max_abs']:.2e} dWq {fp['dWq']['max_abs']:.2e}; bf16-vs-fp32 rel {bf}"
            )
    timing = _g(results, "layer", "fwd_bwd_bf16") or _g(results, "layer_timing", "fwd_bwd") or {}
    for shape, t in timing.items():
        r = t["ours/nanoGPT"]
        lines.append(
            f"layer fwd+bwd {shape}: ours {t['ours_ms']:.3f} ms, nanoGPT {t['nanoGPT_ms']:.3f} ms, "
            f"ours/nanoGPT {r['min']:.3f}-{r['median']:.3f}-{r['max']:.3f}"
        )
    for label in ("MHA", "GQA"):
        sd = _g(results, "sdpa", label)
        if sd:
            parts = [f"default={sd['default']['backend']}"]
            for b in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
                r = sd.get(b, {})
                parts.append(
                    f"{b}=" + (f"runs {r['ms_fwd_bwd']:.2f}ms" if r.get("runs") else f"refused ({r.get('error')})")
                )
            lines.append(f"sdpa {label}: " + "; ".join(parts))
    th = results.get("throughput", {})
    if "measured_bf16_matmul_tflops" in th:
        lines.append(
            f"peak bf16: datasheet {th['datasheet_bf16_tflops']} TFLOP/s, measured matmul "
            f"{th['measured_bf16_matmul_tflops']:.0f} TFLOP/s"
        )
        for case in ("model_small", "gpt2_small_shape"):
            c = th.get(case)
            if not c:
                continue
            for m in ("ours", "nanoGPT"):
                r = c[m]
                mfu_d = f"{r['mfu_datasheet']:.1%}" if r["mfu_datasheet"] is not None else "n/a"
                lines.append(
                    f"train {case} {m}: {r['tokens_per_s']:,.0f} tok/s, {r['step_ms']:.2f} ms/step, "
                    f"{r['achieved_tflops']:.1f} TFLOP/s, MFU {mfu_d} of datasheet, {r['mfu_measured']:.1%} of measured"
                )
            lines.append(f"train {case} ours/nanoGPT tokens/s: {c['ours/nanoGPT tokens_per_s']:.3f}")
    comp = results.get("compile", {})
    if "compiled" in comp:
        for m in ("eager", "compiled"):
            r = comp[m]
            lines.append(
                f"compile {m}: {r['tokens_per_s']:,.0f} tok/s, {r['step_ms']:.2f} ms/step, "
                f"{r['achieved_tflops']:.2f} TFLOP/s, MFU {r['mfu_measured']:.1%} of measured peak"
            )
        be = comp["break_even_steps"]
        lines.append(
            f"compile: compiled/eager tokens/s {comp['compiled/eager tokens_per_s']['median']:.3f}, "
            f"compile time {comp['compile_s']:.1f}s, pays off after " + ("never" if be is None else f"{be:,.0f} steps")
        )
    sw = results.get("sweep", {})
    if "parallel_s" in sw:
        lines.append(
            f"sweep {sw['jobs']} jobs: sequential {sw['sequential_s']:.0f}s ({sw['sequential_jobs_per_hour']:.0f}/h), "
            f"parallel {sw['parallel_s']:.0f}s ({sw['parallel_jobs_per_hour']:.0f}/h), "
            f"ratio {sw['parallel/sequential']:.2f}, finished {sw['finished_jobs']}"
        )
    ddp = results.get("ddp", {})
    if "ranks" in ddp:
        reduced = ", ".join(f"r{r['rank']}={r.get('all_reduce')}/{r.get('all_reduce_expected')}" for r in ddp["ranks"])
        norms = [round(g, 6) for g in ddp["ranks"][0].get("grad_norms", [])] if ddp["ranks"] else []
        lines.append(f"ddp: world {ddp['world_size']}, {ddp['seconds']:.1f}s, all_reduce {reduced}, grad norms {norms}")
    cli = results.get("cli", {})
    if "exit_code" in cli:
        lines.append(f"cli: exit {cli['exit_code']} after {cli['seconds']:.0f}s: {' | '.join(cli['tail'][-3:])}")
    for name, res in results.items():
        if isinstance(res, dict) and "error" in res:
            lines.append(f"{name} error: {res['error']}")
    return lines
