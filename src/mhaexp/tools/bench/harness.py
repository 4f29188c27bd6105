"""The benchmark harness: results, the section registry, timing, the matmul peak, and the driver.

Method, for every section: the candidates are built in this one process and
timed interleaved (A B B A A B ... so neither always runs first), after
warmup, each repeat timing a block of calls long enough to dwarf the timer.
Ratios are taken per repeat (ours in repeat r over the reference in repeat r)
and reported as min / median / max over repeats. Absolute times are printed
for orientation only: the CPUs this runs on are shared and noisy, ratios of
interleaved blocks are what carries over between machines.

Sections live in :data:`SECTIONS`; a module adds one with::

    from mhaexp.tools.bench import Args, Row, register

    @register("analysis")
    def bench_analysis(args: Args) -> list[Row]: ...

and names itself in :data:`SECTION_MODULES`, or is imported before :func:`main` runs.
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mhaexp.errors import ArgumentParser

DESCRIPTION = "``python -m mhaexp.tools.bench``: our attention layer and model against plain references, side by side."

# ---- results ------------------------------------------------------------------------------------


@dataclass
class Row:
    """One measured quantity: min / median / max over repeats, and the target it is held to, if any."""

    section: str
    case: str
    metric: str
    median: float
    min: float
    max: float
    unit: str = "x"
    target: str | None = None  # "<= 1.05", ">= 0.40": compared against the median
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool | None:
        if self.target is None:
            return None
        op, bound = self.target.split()
        return self.median <= float(bound) if op == "<=" else self.median >= float(bound)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class Args:
    """What every section is given (the parsed command line)."""

    quick: bool = False
    repeats: int = 15
    min_block_s: float = 0.2
    warmup: int = 3
    threads: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    data_mb: float | None = None  # section data: size of the generated corpus (None: its default)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]


Section = Callable[[Args], list[Row]]
SECTIONS: dict[str, Section] = {}
# Every section's module, in the order a default run takes them; each registers itself when imported.
SECTION_MODULES: dict[str, str] = {
    "attention": "mhaexp.tools.bench.attention",
    "gqa": "mhaexp.tools.bench.gqa",
    "train": "mhaexp.tools.bench.train",
    "analysis": "mhaexp.tools.bench.analysis",
    "pruning": "mhaexp.tools.bench.pruning",
    "sweep": "mhaexp.tools.bench.sweep",
    "data": "mhaexp.tools.bench.data",
    "import": "mhaexp.tools.bench.model_import",
    "tlens": "mhaexp.tools.bench.tlens",
}


def register(name: str) -> Callable[[Section], Section]:
    """Decorator: make ``fn(args) -> list[Row]`` runnable as ``--sections name``."""

    def deco(fn: Section) -> Section:
        SECTIONS[name] = fn
        return fn

    return deco


# ---- timing -------------------------------------------------------------------------------------


class SectionTimeoutError(Exception):
    """A section ran past its own time limit."""


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock reading after it includes that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _no_gc() -> Iterator[None]:
    # A collection in the middle of one block would land on one candidate only.
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def block_seconds(fn: Callable[[], object], n: int, device: torch.device) -> float:
    """Seconds per call of ``n`` back-to-back calls, the device synchronized before and after the block."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n


def median_call_seconds(fn: Callable[[], object], iters: int, warmup: int = 3) -> float:
    """Median seconds per call over ``iters`` calls, each bracketed by CUDA events (CPU: the wall clock)."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        cpu_times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            cpu_times.append(time.perf_counter() - t0)
        return sorted(cpu_times)[len(cpu_times) // 2]
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return times[len(times) // 2]


def interleave(names: list[str], repeats: int, measure: Callable[[str], float]) -> dict[str, list[float]]:
    """``measure(name)`` of every candidate in each of ``repeats`` rounds, the order reversed every other
    round (A B B A A B ...) so neither always runs first: ratios within a round cancel load drift."""
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(measure(name))
    return out


def time_interleaved(
    fns: dict[str, Callable[[], object]], args: Args, device: torch.device | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each function, one entry per repeat, the candidates interleaved.

    Each candidate gets its own block length (calls per repeat), calibrated so a
    block lasts about ``args.min_block_s``: blocks of similar length see similar
    slices of the machine's background load.
    """
    dev = device or args.torch_device
    inner: dict[str, int] = {}
    with _no_gc():
        for name, fn in fns.items():
            for _ in range(args.warmup):
                fn()
            once = max(block_seconds(fn, 1, dev), 1e-6)
            inner[name] = max(1, math.ceil(args.min_block_s / once))
        return interleave(list(fns), args.repeats, lambda name: block_seconds(fns[name], inner[name], dev))


def matmul_peak_fn(n: int, device: torch.device, dtype: torch.dtype) -> tuple[Callable[[], object], float]:
    """A square ``torch.mm`` on random data (zeros run faster and flatter the card) and its FLOPs: the
    peak an MFU is measured against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b, out=c)), 2.0 * n**3


def measured_peak(n: int, device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of :func:`matmul_peak_fn`'s matmul: the median of 10 calls."""
    fn, flops = matmul_peak_fn(n, device, dtype)
    return flops / median_call_seconds(fn, 10)


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def ratio_row(section: str, case: str, metric: str, num: list[float], den: list[float], **kw: Any) -> Row:
    """Per-repeat ratios num[r] / den[r]: both were timed next to each other, so load drift cancels."""
    med, lo, hi = spread([a / b for a, b in zip(num, den, strict=True)])
    return Row(section, case, metric, med, lo, hi, **kw)


def time_row(section: str, case: str, name: str, secs: list[float]) -> Row:
    med, lo, hi = spread([s * 1e3 for s in secs])
    return Row(section, case, f"{name} ms/iter", med, lo, hi, unit="ms")


# ---- driver -------------------------------------------------------------------------------------


def resolve_sections(requested: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """Section names to run (requested ones, else every section whose module imports),
    and the reason each one that cannot run is skipped."""
    skipped: dict[str, str] = {}
    names = requested if requested is not None else list(SECTION_MODULES)
    for name in names:
        if name in SECTIONS:
            continue
        if name in SECTION_MODULES:
            module = SECTION_MODULES[name]
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as e:
                # Absent is quiet; present but missing one of its own imports is a failure.
                absent = e.name is not None and module.startswith(e.name)
                why = "not available" if absent else "failed to import"
                skipped[name] = f"module {module} {why} (no module {e.name})"
                continue
            except Exception as e:  # a broken section must not stop the others
                skipped[name] = f"module {module} failed to import: {type(e).__name__}: {e}"
                continue
        if name not in SECTIONS:
            skipped.setdefault(name, f"unknown section; known: {sorted({*SECTIONS, *SECTION_MODULES})}")
    run = [n for n in names if n in SECTIONS]
    if requested is None:  # the default run stays quiet about sections whose module is absent
        skipped = {k: v for k, v in skipped.items() if k not in SECTION_MODULES or "failed" in v}
    return run, skipped


def fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"


def print_table(name: str, rows: list[Row]) -> None:
    header = ("case", "metric", "median", "min", "max", "unit", "target", "")
    body = [
        (
            r.case,
            r.metric,
            fmt(r.median),
            fmt(r.min),
            fmt(r.max),
            r.unit,
            r.target or "",
            "" if r.ok is None else ("ok" if r.ok else "MISSED"),
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    print(f"\n== {name} ==")
    for line in (header, *body):
        print(
            "  ".join(
                str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )


def environment(args: Args) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "dtype": args.dtype,
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "quick": args.quick,
        "repeats": args.repeats,
        "min_block_s": args.min_block_s,
    }


def parse_args(argv: list[str] | None = None) -> tuple[Args, list[str] | None, Path | None]:
    p = ArgumentParser(prog="python -m mhaexp.tools.bench", description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="few, short repeats: a smoke test, not a measurement")
    p.add_argument("--sections", help=f"comma-separated, default all: {','.join(SECTION_MODULES)}")
    p.add_argument("--out", type=Path, help="also write the results here as JSON")
    p.add_argument("--repeats", type=int, help="timed repeats per candidate (default 15, quick 3)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronize the device)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-mb", type=float, help="section data: MB of generated text (default 200, quick 8)")
    ns = p.parse_args(argv)
    args = Args(
        quick=ns.quick,
        repeats=ns.repeats or (2 if ns.quick else 15),
        min_block_s=0.0 if ns.quick else 0.2,
        warmup=1 if ns.quick else 3,
        threads=ns.threads,
        device=ns.device,
        dtype=ns.dtype,
        seed=ns.seed,
        data_mb=ns.data_mb,
    )
    sections = [s.strip() for s in ns.sections.split(",") if s.strip()] if ns.sections else None
    return args, sections, ns.out


def main(argv: list[str] | None = None) -> int:
    """Run the sections, print a table each, write JSON; exit 0 even when a target is missed
    (a benchmark reports, it does not gate), 1 when a section crashed, 2 on bad arguments."""
    args, requested, out = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names, skipped = resolve_sections(requested)
    if requested is not None and not names:
        print(f"bench: nothing to run: {skipped}", file=sys.stderr)
        return 2
    env = environment(args)
    print("bench: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    print("ratios are per-repeat (interleaved) ours/reference: min / median / max over repeats")
    load, cores = env["loadavg_1min"], os.cpu_count() or 1
    if args.device == "cpu" and load is not None and load > 0.5 * cores and torch.get_num_threads() > 1:
        # OpenMP threads that share busy cores wait on each other at every op: blocks slow down 2-10x at random.
        print(f"note: load average {load:.1f} on {cores} cores; --threads 1 gives steadier numbers here")
    results: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            rows = SECTIONS[name](args)
        except Exception as e:  # report it and go on to the next section
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"\n== {name} == FAILED: {errors[name]}", file=sys.stderr)
            continue
        print_table(f"{name} ({time.perf_counter() - t0:.1f}s)", rows)
        results[name] = [r.to_dict() for r in rows]
    for name, why in skipped.items():
        print(f"\n== {name} == skipped: {why}")
    missed = [
        f"{r['section']}/{r['case']}/{r['metric']}" for rows in results.values() for r in rows if r["ok"] is False
    ]
    print("\ntargets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {"env": env, "sections": results, "skipped": skipped, "errors": errors, "missed": missed}, indent=2
            )
        )
        print(f"wrote {out}")
    return 1 if errors else 0
