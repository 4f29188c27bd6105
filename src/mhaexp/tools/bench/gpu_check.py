"""``python -m mhaexp.tools.bench.gpu_check``: does mhaexp work, and work fast, on this machine's CUDA GPUs?

Written for a GPU lent for a few minutes: every section is small, runs under
its own time limit, and reports PASS or FAIL without stopping the others; the
whole check stays under :data:`DEADLINE_S` (9 minutes) on one H200. It ends with one
table of the performance targets (issue 14) and writes everything as JSON. Sections:

* ``env``           torch / CUDA / cuDNN / NCCL versions, the devices, bf16 support.
* ``layer``         our layer forward + backward in bf16; fast (SDPA) path against the
                    explicit path in fp32 (TF32 off); ours against nanoGPT's layer, timed.
* ``sdpa``          which SDPA backend our fast path runs on, and whether it runs with
                    only FLASH_ATTENTION allowed, for MHA and for GQA (``enable_gqa``).
* ``throughput``    training tokens/s and MFU (bf16 autocast) of model=small and of a
                    GPT-2-small shape, ours beside a nanoGPT model of the same shape.
* ``compile``       ``trainer.compile``: tokens/s of LMModule's compiled training forward
                    against the eager one at the GPT-2-small shape in bf16 (AdamW step
                    included), the compile time, and MFU against the measured bf16 matmul peak.
* ``sweep``         a 4-job sweep of the default model (real ``mhaexp-train -m``, trainer=gpu)
                    sharing one GPU through ``hydra/launcher=parallel``, against sequential:
                    jobs per hour.
* ``ddp``           NCCL all-reduce and one DDP step of our model on every visible GPU
                    (torch.multiprocessing spawn; world size 1 works too).
* ``cli``           the real ``mhaexp-train trainer=ddp`` for 30 steps; reported, never
                    fatal (the CLI may be mid-development).

Exit code: 0 when every required section passed, 1 otherwise (and at once, with
"no CUDA device", when there is no GPU). Targets are reported, not enforced.

``--tiny`` runs the performance sections (layer timing, compile, MFU, sweep) on the CPU
at toy sizes, in about two minutes: it proves the script and its JSON end to end on a
machine without a GPU. Its figures mean nothing for a GPU. Results also go to ``--out`` as JSON
(default ``$OUT/gpu_check.json`` when ``OUT`` is set, else ``gpu_check.json``).

It is the benchmark's profile for a lent GPU: a :class:`~mhaexp.tools.bench.gpu_profile.Mode` (``GPU``
or ``TINY``, :mod:`~mhaexp.tools.bench.gpu_profile`) sets the sizes, and the timing, the matmul peak, the
references and the sweep are the bench's own (:mod:`~mhaexp.tools.bench.harness`,
:mod:`~mhaexp.tools.bench.reference`, :mod:`~mhaexp.tools.bench.sweep`). What is its own: the pass/fail
checks and each section's time limit (here), the summary and issue 14's target table
(:mod:`~mhaexp.tools.bench.gpu_report`).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mhaexp.errors import ArgumentParser
from mhaexp.tools.bench import train as train_section
from mhaexp.tools.bench.gpu_profile import DEADLINE_S, GPU, TINY, TINY_DEADLINE_S, Mode, datasheet_peak
from mhaexp.tools.bench.gpu_report import report, short, target_table, targets
from mhaexp.tools.bench.harness import (
    SectionTimeoutError,
    block_seconds,
    interleave,
    measured_peak,
    median_call_seconds,
)
from mhaexp.tools.bench.reference import GPT2_LAYER, GPT2_SMALL
from mhaexp.tools.bench.sweep import (
    cli_env,
    common_overrides,
    finished_jobs,
    sequential_and_parallel,
    train_command,
    warm_up,
)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise SectionTimeoutError in the main thread after ``seconds`` (checked between CUDA calls)."""

    def on_alarm(signum: int, frame: object) -> None:
        raise SectionTimeoutError(f"over its {seconds:.0f}s limit")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---- sections -----------------------------------------------------------------------------------


def check_env() -> dict[str, Any]:
    n = torch.cuda.device_count()
    devices = []
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        devices.append(
            {
                "index": i,
                "name": p.name,
                "capability": f"{p.major}.{p.minor}",
                "memory_gib": round(p.total_memory / 2**30, 1),
                "sms": p.multi_processor_count,
            }
        )
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None,
        "device_count": n,
        "devices": devices,
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "flash_sdp_enabled": torch.backends.cuda.flash_sdp_enabled(),
        "python": sys.version.split()[0],
    }
    try:  # read-only query; the card's settings are left alone
        q = "name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu,memory.used"
        smi = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        info["nvidia_smi"] = smi.stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError) as e:
        info["nvidia_smi"] = f"unavailable: {e}"
    info["ok"] = n > 0 and info["bf16_supported"]
    return info


def _fwd_bwd(layer: torch.nn.Module, x: torch.Tensor, need_weights: bool = False) -> list[torch.Tensor]:
    """Output, dL/dx and dL/dW_qkv of one forward + backward with a fixed upstream gradient."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    y, _ = layer(x, need_weights=need_weights)
    g = torch.Generator(device=x.device).manual_seed(1)
    y.backward(torch.randn(y.shape, generator=g, device=x.device, dtype=y.dtype))
    return [y.detach(), x.grad, layer.qkv_proj.weight.grad]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check_layer() -> dict[str, Any]:
    from mhaexp.nn.attention import MultiHeadAttention

    dev = torch.device("cuda")
    out: dict[str, Any] = {}
    ok = True
    B, T, d, nh = GPT2_LAYER
    for label, nkv in (("MHA", nh), ("GQA", nh // 4)):
        torch.manual_seed(0)
        layer = MultiHeadAttention(d, nh, nkv).to(dev)
        x = torch.randn(B, T, d, device=dev)
        # fp32 with TF32 off: the two paths must agree to fp32 rounding.
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            fast = _fwd_bwd(layer, x)
            explicit = _fwd_bwd(layer, x, need_weights=True)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        diffs = {
            name: {"max_abs": (a - b).abs().max().item(), "rel": _rel(a, b)}
            for name, a, b in zip(("y", "dx", "dWq"), fast, explicit, strict=True)
        }
        # bf16: the fast path against the fp32 explicit one; bf16 rounding allows ~1e-2 relative.
        bf = _fwd_bwd(layer.to(torch.bfloat16), x.to(torch.bfloat16))
        bf_rel = {name: _rel(a, b) for name, a, b in zip(("y", "dx", "dWq"), bf, explicit, strict=True)}
        finite = all(torch.isfinite(t).all().item() for t in bf)
        passed = finite and all(v["rel"] < 1e-4 for v in diffs.values()) and all(v < 3e-2 for v in bf_rel.values())
        ok &= passed
        out[label] = {"fp32_fast_vs_explicit": diffs, "bf16_fast_vs_fp32_explicit_rel": bf_rel, "ok": passed}
    out["fwd_bwd_bf16"] = layer_timing(GPU)
    out["ok"] = ok
    return out


def _backend_kernels(fn: Callable[[], object]) -> list[str]:
    """Names of the attention kernels ``fn`` launches (profiler), to tell which SDPA backend ran."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    keys = ("flash", "fmha", "attention", "attn", "sdpa", "cudnn", "softmax")
    names = {e.key for e in prof.key_averages() if any(k in e.key.lower() for k in keys)}
    return sorted(n[:120] for n in names)


def _classify(kernels: list[str]) -> str:
    joined = " ".join(kernels).lower()
    if "cudnn" in joined:
        return "CUDNN_ATTENTION"
    if "flash" in joined:
        return "FLASH_ATTENTION"
    if "fmha" in joined or "efficient" in joined or "cutlass" in joined:
        return "EFFICIENT_ATTENTION"
    return "MATH (no fused attention kernel seen)"


def check_sdpa() -> dict[str, Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mhaexp.nn.attention import MultiHeadAttention

    dev = torch.device("cuda")
    B, T, d, nh = GPT2_LAYER
    out: dict[str, Any] = {}
    for label, nkv in (("MHA", nh), ("GQA", nh // 4)):
        torch.manual_seed(0)
        layer = MultiHeadAttention(d, nh, nkv).to(dev, torch.bfloat16)
        x = torch.randn(B, T, d, device=dev, dtype=torch.bfloat16, requires_grad=True)

        def step(layer: torch.nn.Module = layer, x: torch.Tensor = x) -> None:
            layer(x)[0].sum().backward()

        res: dict[str, Any] = {}
        step()
        default_kernels = _backend_kernels(step)
        res["default"] = {"backend": _classify(default_kernels), "kernels": default_kernels}
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            try:
                # A refusing backend explains itself in several UserWarnings; its error message is enough.
                with sdpa_kernel(backend), warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    step()
                    kernels = _backend_kernels(step)
                    ms = median_call_seconds(step, 10) * 1e3
                res[backend.name] = {"runs": True, "ms_fwd_bwd": ms, "kernels": kernels}
            except Exception as e:  # refusal is an answer here, not a failure of the check
                res[backend.name] = {"runs": False, "error": str(e).strip().splitlines()[0][:300]}
        out[label] = res
    out["flash_runs_mha"] = out["MHA"]["FLASH_ATTENTION"]["runs"]
    out["flash_runs_gqa"] = out["GQA"]["FLASH_ATTENTION"]["runs"]
    out["gqa_default_backend"] = out["GQA"]["default"]["backend"]
    out["ok"] = out["flash_runs_mha"] and "MATH" not in out["MHA"]["default"]["backend"]
    return out


def _throughput_case(cfg_kw: dict[str, Any], batch: int, seq: int, steps: int, peak: float | None) -> dict[str, Any]:
    from mhaexp.nn.model import ModelConfig, Transformer
    from mhaexp.tools.bench.reference import NanoGPT, matmul_flops_per_token, train_step_fn

    dev = torch.device("cuda")
    cfg = ModelConfig(**cfg_kw)
    res: dict[str, Any] = {"shape": {**cfg_kw, "batch": batch, "seq_len": seq}}
    models = {
        "ours": Transformer(cfg),
        "nanoGPT": NanoGPT(cfg.vocab_size, cfg.max_seq_len, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.ffn_dim),
    }
    for name, model in models.items():
        torch.manual_seed(0)
        model = model.to(dev)
        step = train_step_fn(model, batch, seq, cfg.vocab_size, dev, torch.bfloat16)
        warm = max(3, steps // 4)
        for _ in range(warm):
            step()
        dt = block_seconds(step, steps - warm, dev)
        fpt = matmul_flops_per_token(model, cfg.n_layers, seq, cfg.n_heads * cfg.head_dim)
        tok_s = batch * seq / dt
        res[name] = {
            "step_ms": dt * 1e3,
            "tokens_per_s": tok_s,
            "flops_per_token": fpt,
            "achieved_tflops": fpt * tok_s / 1e12,
            "mfu_datasheet": fpt * tok_s / peak if peak else None,
        }
        del model, step
        torch.cuda.empty_cache()
    res["ours/nanoGPT tokens_per_s"] = res["ours"]["tokens_per_s"] / res["nanoGPT"]["tokens_per_s"]
    return res


def check_throughput() -> dict[str, Any]:
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    peak = datasheet_peak(name)
    measured = measured_peak(GPU.peak_n, dev, GPU.dtype)  # the ceiling this card reaches
    out: dict[str, Any] = {
        "device": name,
        "datasheet_bf16_tflops": peak and peak / 1e12,
        "measured_bf16_matmul_tflops": measured / 1e12,
    }
    small = {"vocab_size": train_section.VOCAB, **train_section.SMALL_SHAPE}
    out["model_small"] = _throughput_case(small, train_section.BATCH, train_section.SEQ, 20, peak)
    out["gpt2_small_shape"] = _throughput_case(GPT2_SMALL, GPU.batch, GPU.seq, 20, peak)
    for case in ("model_small", "gpt2_small_shape"):
        for m in ("ours", "nanoGPT"):
            out[case][m]["mfu_measured"] = out[case][m]["achieved_tflops"] * 1e12 / measured
    out["ok"] = all(math.isfinite(out[c]["ours"]["tokens_per_s"]) for c in ("model_small", "gpt2_small_shape"))
    return out


def layer_timing(mode: Mode) -> dict[str, Any]:
    """Our layer's forward + backward against nanoGPT's, same weights, at each of ``mode.layer_shapes``."""
    from mhaexp.nn.attention import MultiHeadAttention
    from mhaexp.tools.bench.reference import NanoCausalSelfAttention, copy_into_nano_attention

    dev, dt = mode.device, mode.dtype
    iters = 3 if mode.tiny else 20
    timing = {}
    for B, T, d, nh in mode.layer_shapes:
        torch.manual_seed(0)
        ours = MultiHeadAttention(d, nh).to(dev, dt)
        nano = NanoCausalSelfAttention(d, nh).to(dev, dt)
        copy_into_nano_attention(ours, nano)
        x = torch.randn(B, T, d, device=dev, dtype=dt, requires_grad=True)
        g = torch.randn(B, T, d, device=dev, dtype=dt)
        with torch.no_grad():
            diff = (ours(x)[0] - nano(x)).abs().max().item()

        def step_ours(ours: torch.nn.Module = ours, x: torch.Tensor = x, g: torch.Tensor = g) -> None:
            ours(x)[0].backward(g)

        def step_nano(nano: torch.nn.Module = nano, x: torch.Tensor = x, g: torch.Tensor = g) -> None:
            nano(x).backward(g)

        steps = {"ours": step_ours, "nanoGPT": step_nano}
        t = interleave(list(steps), 5, lambda name, steps=steps: median_call_seconds(steps[name], iters))
        t_ours, t_nano = t["ours"], t["nanoGPT"]
        ratios = sorted(a / b for a, b in zip(t_ours, t_nano, strict=True))
        timing[f"B{B} T{T} d{d} h{nh}"] = {
            "ours_ms": sorted(t_ours)[2] * 1e3,
            "nanoGPT_ms": sorted(t_nano)[2] * 1e3,
            "ours/nanoGPT": {"min": ratios[0], "median": ratios[2], "max": ratios[-1]},
            "max_abs_diff_outputs": diff,
        }
    return timing


def check_layer_timing(mode: Mode) -> dict[str, Any]:
    """--tiny: the layer timing alone (the numerics checks of ``layer`` need CUDA)."""
    timing = layer_timing(mode)
    return {"fwd_bwd": timing, "ok": all(math.isfinite(t["ours/nanoGPT"]["median"]) for t in timing.values())}


def check_compile(mode: Mode) -> dict[str, Any]:
    """``trainer.compile``: LMModule's training forward (``forward_fn``, exactly what the flag compiles)
    eager and compiled, each in a full step (cross-entropy, backward, fused AdamW on CUDA, bf16 autocast),
    timed in interleaved repeats; the compile time; MFU of both against the matmul peak measured here."""
    import torch.nn.functional as F

    from mhaexp.nn.model import ModelConfig
    from mhaexp.tools.bench.reference import matmul_flops_per_token
    from mhaexp.training.module import LMModule

    dev, B, T = mode.device, mode.batch, mode.seq
    cfg = ModelConfig(**mode.gpt2)
    ids = torch.randint(cfg.vocab_size, (B, T + 1), device=dev, generator=torch.Generator(dev).manual_seed(0))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    peak = measured_peak(mode.peak_n, mode.device, mode.dtype)
    steps: dict[str, Callable[[], None]] = {}
    res: dict[str, Any] = {
        "shape": {**mode.gpt2, "batch": B, "seq_len": T},
        "dtype": "bf16 autocast" if mode.autocast else "float32",
        f"measured_{'fp32' if mode.tiny else 'bf16'}_matmul_tflops": peak / 1e12,
    }
    fpt = 0.0
    for name, flag in (("eager", False), ("compiled", True)):
        torch.manual_seed(0)
        module = LMModule(cfg, {}, compile=flag).to(dev).train()
        fpt = matmul_flops_per_token(module.model, cfg.n_layers, T, cfg.n_heads * cfg.head_dim)
        fwd = module.forward_fn()
        opt = torch.optim.AdamW(module.parameters(), lr=3e-4, betas=(0.9, 0.95), fused=dev.type == "cuda" or None)

        def step(fwd: Callable[..., Any] = fwd, opt: torch.optim.Optimizer = opt) -> None:
            with torch.autocast(dev.type, dtype=mode.autocast or torch.bfloat16, enabled=mode.autocast is not None):
                logits, _ = fwd(inputs)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        # The first calls compile (forward, backward, then a steady shape): their wall time, all three.
        res[f"{name}_first_3_steps_s"] = 3 * block_seconds(step, 3, dev)
        steps[name] = step
    calls = mode.compile_steps  # timed steps per repeat, after one warm-up step
    times = interleave(["eager", "compiled"], mode.compile_repeats, lambda k: median_call_seconds(steps[k], calls, 1))
    for name, ts in times.items():
        tok_s = sorted(B * T / t for t in ts)
        med = tok_s[len(tok_s) // 2]
        res[name] = {
            "step_ms": sorted(ts)[len(ts) // 2] * 1e3,
            "tokens_per_s": med,
            "achieved_tflops": fpt * med / 1e12,
            "mfu_measured": fpt * med / peak,
        }
    ratios = sorted(e / c for e, c in zip(times["eager"], times["compiled"], strict=True))
    res["compiled/eager tokens_per_s"] = {"min": ratios[0], "median": ratios[len(ratios) // 2], "max": ratios[-1]}
    steady = res["compiled"]["step_ms"] / 1e3
    res["compile_s"] = res["compiled_first_3_steps_s"] - 3 * steady
    # Steps after which compiling has paid for itself (None: it never does).
    saved = res["eager"]["step_ms"] / 1e3 - steady
    res["break_even_steps"] = res["compile_s"] / saved if saved > 0 else None
    res["flops_per_token"] = fpt
    res["ok"] = all(math.isfinite(res[n]["tokens_per_s"]) for n in ("eager", "compiled"))
    return res


def check_sweep(mode: Mode, limit: float) -> dict[str, Any]:
    """The same sweep (4 jobs; 2 in --tiny) through the real ``mhaexp-train -m``: Hydra's basic launcher
    (one job after another) and ``hydra/launcher=parallel`` with one slot per job (side by side on the one
    device). The data cache is built first, so neither pays for it. Jobs per hour = jobs * 3600 / wall s."""
    deadline = time.perf_counter() + limit
    common = common_overrides(mode.sweep_steps, mode.sweep_overrides)
    n = len(mode.sweep_heads.split(","))
    out: dict[str, Any] = {"overrides": [*common, f"model.n_heads={mode.sweep_heads}"], "jobs": n}
    with tempfile.TemporaryDirectory(prefix="mhaexp-gpu-sweep-") as tmp:
        root = Path(tmp)
        env = cli_env(root)
        out["warm_s"] = warm_up(root, env, common, deadline)
        out["sequential_s"], out["parallel_s"] = sequential_and_parallel(
            root, env, common, mode.sweep_heads, n, deadline=deadline
        )
        out["finished_jobs"] = {k: finished_jobs(root / k) for k in ("seq", "par")}
    out["sequential_jobs_per_hour"] = n * 3600 / out["sequential_s"]
    out["parallel_jobs_per_hour"] = n * 3600 / out["parallel_s"]
    out["parallel/sequential"] = out["sequential_s"] / out["parallel_s"]
    out["ok"] = True
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, result_dir: str) -> None:
    """One rank: an NCCL all-reduce with a known answer, then one DDP step of a small model of ours."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mhaexp.nn.model import ModelConfig, Transformer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    res: dict[str, Any] = {"rank": rank}
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=dev)
    try:
        t = torch.full((1024,), float(rank + 1), device=dev)
        dist.all_reduce(t)
        res["all_reduce"] = t[0].item()
        res["all_reduce_expected"] = world * (world + 1) / 2
        torch.manual_seed(0)  # same initial weights on every rank
        cfg = ModelConfig(vocab_size=150, n_layers=2, d_model=128, n_heads=8, n_kv_heads=2, max_seq_len=64)
        model = DistributedDataParallel(Transformer(cfg).to(dev), device_ids=[rank])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        torch.manual_seed(100 + rank)  # different data on every rank
        ids = torch.randint(150, (16, 33), device=dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, _ = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        # After DDP's all-reduce every rank must hold the same gradient.
        gnorm = torch.stack([p.grad.norm() for p in model.parameters()]).norm()
        gathered = [torch.zeros_like(gnorm) for _ in range(world)]
        dist.all_gather(gathered, gnorm)
        opt.step()
        res["loss"] = loss.item()
        res["grad_norms"] = [g.item() for g in gathered]
        res["ok"] = res["all_reduce"] == res["all_reduce_expected"] and max(res["grad_norms"]) - min(
            res["grad_norms"]
        ) <= 1e-6 * max(res["grad_norms"])
    finally:
        dist.destroy_process_group()
        Path(result_dir, f"rank{rank}.json").write_text(json.dumps(res))


def check_ddp(limit: float) -> dict[str, Any]:
    import torch.multiprocessing as mp

    world = torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ctx = mp.start_processes(
            _ddp_worker, args=(world, _free_port(), tmp), nprocs=world, join=False, start_method="spawn"
        )
        done = False
        while not done and time.perf_counter() - t0 < limit:
            done = ctx.join(timeout=1)
        if not done:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            raise SectionTimeoutError(f"DDP workers still running after {limit:.0f}s")
        ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"))]
    return {
        "world_size": world,
        "seconds": time.perf_counter() - t0,
        "ranks": ranks,
        "ok": len(ranks) == world and all(r.get("ok") for r in ranks),
    }


def check_cli(limit: float) -> dict[str, Any]:
    cmd = train_command() + [
        "trainer=ddp",
        "trainer.devices=-1",
        "trainer.max_steps=30",
        "logger=csv",
        "analysis=off",
        "data.n_train=2000",
    ]
    with tempfile.TemporaryDirectory() as tmp:  # Hydra's run directories go here, not into the checkout
        env = cli_env(Path(tmp), WANDB_MODE="disabled")
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=limit)
            rc, text = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            rc = "timeout"
            text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    return {
        "command": " ".join(cmd),
        "exit_code": rc,
        "seconds": time.perf_counter() - t0,
        "tail": text.strip().splitlines()[-15:],
        "ok": rc == 0,
    }


# ---- driver -------------------------------------------------------------------------------------


def default_out() -> Path:
    return Path(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else Path("gpu_check.json")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m mhaexp.tools.bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="JSON results (default $OUT/gpu_check.json or ./)")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out, e.g. cli")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="CPU, toy sizes: run the performance sections end to end without a GPU (figures meaningless)",
    )
    ns = p.parse_args(argv)
    if not ns.tiny and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda})")
        return 1
    mode = TINY if ns.tiny else GPU
    started = time.perf_counter()
    skip = {s.strip() for s in ns.skip.split(",") if s.strip()}
    # (name, function, its own time limit in seconds, required for exit code 0). The targets' sections
    # come first, so a slow machine cuts the diagnostics, not the figures.
    sections: list[tuple[str, Callable[..., dict[str, Any]], float, bool]]
    if mode.tiny:
        sections = [
            ("layer_timing", lambda: check_layer_timing(mode), 60, True),
            ("compile", lambda: check_compile(mode), 240, True),
            # Three CLI runs (warm-up, sequential, parallel): about a minute idle, several on a loaded box.
            ("sweep", lambda limit: check_sweep(mode, limit), 480, True),
        ]
    else:
        sections = [
            ("env", check_env, 20, True),
            ("layer", check_layer, 60, True),
            ("compile", lambda: check_compile(mode), 150, True),
            ("sweep", lambda limit: check_sweep(mode, limit), 200, True),
            ("sdpa", check_sdpa, 30, True),
            ("throughput", check_throughput, 45, True),
            ("ddp", check_ddp, 45, True),
            ("cli", check_cli, 60, False),
        ]
    results: dict[str, Any] = {}
    status: dict[str, str] = {}
    for name, fn, limit, _ in sections:
        left = (TINY_DEADLINE_S if mode.tiny else DEADLINE_S) - (time.perf_counter() - started)
        if name in skip or left < 5:
            status[name] = "SKIP"
            results[name] = {"skipped": "asked" if name in skip else "out of time"}
            print(f"[{name}] SKIP", flush=True)
            continue
        limit = min(limit, left)
        t0 = time.perf_counter()
        try:
            if name in ("ddp", "cli", "sweep"):  # they wait on child processes with their own timeouts
                res = fn(limit)
            else:
                with time_limit(limit):
                    res = fn()
            status[name] = "PASS" if res.get("ok") else "FAIL"
        except Exception as e:  # every section reports; none stops the others
            res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc().splitlines()[-6:]}
            status[name] = "FAIL"
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        res["seconds"] = round(time.perf_counter() - t0, 2)
        results[name] = res
        print(f"[{name}] {status[name]} ({res['seconds']}s) {short(res)}", flush=True)
    required = [name for name, _, _, req in sections if req and name not in skip]
    ok = all(status[n] == "PASS" for n in required)
    try:
        print("\n" + "\n".join(report(results)))
    except Exception as e:  # the JSON below still has everything
        print(f"(report failed: {type(e).__name__}: {e})")
    goals = targets(results, mode)
    title = "targets (issue 14)" + (" -- TINY MODE on the CPU: checks the script, not a GPU" if mode.tiny else "")
    print(f"\n{title}\n" + "\n".join(target_table(goals)))
    print(
        "\nsummary: "
        + "  ".join(f"{n}={s}" for n, s in status.items())
        + f"  total={time.perf_counter() - started:.0f}s"
    )
    out = ns.out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"mode": "tiny" if mode.tiny else "gpu", "status": status, "ok": ok, "targets": goals, "results": results}
    out.write_text(json.dumps(doc, indent=2, default=str))
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    # Run the importable module's main: spawned DDP workers unpickle mhaexp.tools.bench.gpu_check._ddp_worker,
    # which must not be a __main__ attribute.
    from mhaexp.tools.bench.gpu_check import main as _main

    sys.exit(_main())
