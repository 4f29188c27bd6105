"""Benchmark section ``analysis``: what the analysis callback adds to training wall time.

``python -m mhaexp.tools.bench --sections analysis``. The default run (conf/model/small.yaml on the default
grammar data, 1500 steps) is fitted twice with ``Trainer.fit``: without and with
:class:`~mhaexp.analysis.callback.AnalysisCallback` at the default cadence (conf/analysis/default.yaml).
No loggers, checkpoints or validation: the callback is the only difference.

Rows:

* ``per-step analysis / training time`` (target ``<= 0.02``): the wall time of the callback's per-step
  analyses (cheap tier, ``step_probe_sequences``) over the rest of the same fit. Both are measured in one
  process, interleaved every ``every_n_steps`` steps, so load from other processes on a shared machine
  cancels as in the other sections' interleaved ratios.
* ``analysis / training time``: the same with the end-of-run analysis (both tiers and the pictures, on
  ``probe_sequences``), which runs once whatever the run's length.
* ``fit time with/without``: the two fits' wall times, a cross-check that also sees indirect costs
  (caches, allocator); two fits minutes apart on a shared machine differ by more than 5% by
  themselves, so it has no target.
* the time of one cheap and one expensive analysis and of a training step.

``--quick`` fits 60 steps with an analysis every 30 (a smoke test of the section, no target).

Memory: peak memory and wall time of one (cheap) analysis step against T in :data:`MEMORY_SEQ_LENS`, at
B = 64 (8 with ``--quick``) on a 4-layer, 8-head, d = 256 model with a 4096-token vocabulary (the shape of a
BPE text model), on random probe sequences with random dependency arcs (so the syntax metrics run too).
Each step runs alone in a fresh subprocess; its peak is the growth of the process's ``ru_maxrss`` during
the step (torch's CPU allocations are invisible to tracemalloc). Target at B = 64, T = 1024: under 1.5 GB,
where the full patterns of all layers alone would take 8.6 GB. ``python -m mhaexp.tools.bench.analysis
--batch 16`` prints the table for another B.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from mhaexp.config import CONF_DIR
from mhaexp.errors import ArgumentParser
from mhaexp.rundir import ANALYSIS_DIR
from mhaexp.tools.bench.harness import Args, Row, register
from mhaexp.tools.bench.train import default_model_config

CONF = CONF_DIR / ANALYSIS_DIR / "default.yaml"
DEFAULT_RUN_STEPS = 1500  # conf/trainer/cpu.yaml max_steps
TARGET = "<= 0.02"
MEMORY_SEQ_LENS = (128, 512, 1024)
MEMORY_BATCH, QUICK_MEMORY_BATCH = 64, 8
MEMORY_SHAPE = {"n_layers": 4, "d_model": 256, "n_heads": 8, "d_ff": 1024, "vocab_size": 4096}
MEMORY_TARGET = "<= 1536"  # MB, at B = 64 and T = 1024
N_RELATIONS = 8


def _fit(datamodule: Any, steps: int, callback: Any, device: str, seed: int) -> float:
    import pytorch_lightning as pl

    from mhaexp.training.module import LMModule

    pl.seed_everything(seed, verbose=False)
    model_cfg, _ = default_model_config(datamodule.vocab_size)
    tok = datamodule.tokenizer
    optim = {"lr": 3e-3, "warmup_steps": 100}
    module = LMModule(model_cfg, optim, pad_id=tok.pad_id, mask_id=tok.mask_id, seed=seed)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        logger=False,
        callbacks=[callback] if callback is not None else [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return time.perf_counter() - start


@register("analysis")
def bench_analysis_overhead(args: Args | None = None) -> list[Row]:
    """Training wall time with vs without the analysis callback (see the module docstring)."""
    import tempfile

    from mhaexp.analysis.callback import AnalysisCallback
    from mhaexp.data import LMDataModule

    args = args or Args()
    cfg = yaml.safe_load(CONF.read_text())
    steps = 60 if args.quick else DEFAULT_RUN_STEPS
    if args.quick:
        cfg["every_n_steps"] = 30
    datamodule = LMDataModule(kind="grammar", n_probe=cfg["probe_sequences"])  # as conf/data/grammar.yaml
    datamodule.prepare_data()
    datamodule.setup()
    with tempfile.TemporaryDirectory(prefix="mhaexp-bench-analysis-") as tmp:
        without = _fit(datamodule, steps, None, args.device, args.seed)
        callback = AnalysisCallback(cfg, datamodule, Path(tmp))
        with_cb = _fit(datamodule, steps, callback, args.device, args.seed)
    cheap = [s for _, expensive, s in callback.timings if not expensive]
    expensive = [s for _, expensive, s in callback.timings if expensive]
    training = with_cb - callback.seconds
    in_fit = callback.seconds / training
    case = (
        f"default model, grammar, {steps} steps, analysis every {cfg['every_n_steps']} "
        f"(expensive every {cfg['expensive_every']} and at the end)"
    )

    def row(metric: str, values: list[float], unit: str, target: str | None = None, **extra: Any) -> Row:
        return Row("analysis", case, metric, statistics.median(values), min(values), max(values), unit, target, extra)

    return [
        row(
            "per-step analysis / training time",
            [sum(cheap) / training],
            "x",
            None if args.quick else TARGET,
            analyses=len(cheap),
            analysis_s=sum(cheap),
            probe_sequences=min(cfg["step_probe_sequences"], cfg["probe_sequences"]),
        ),
        row(
            "analysis / training time",
            [in_fit],
            "x",
            analyses=callback.analyses,
            analysis_s=callback.seconds,
            probe_sequences=cfg["probe_sequences"],
        ),
        row("fit time with/without analysis", [with_cb / without], "x", fit_with_s=with_cb, fit_without_s=without),
        row("train step (without)", [without / steps * 1e3], "ms"),
        row("cheap analysis", cheap or [float("nan")], "s"),
        row("expensive analysis (pictures included)", expensive or [float("nan")], "s"),
        *memory_rows(QUICK_MEMORY_BATCH if args.quick else MEMORY_BATCH, args.seed),
    ]


def _random_probe(batch: int, seq_len: int, seed: int) -> Any:
    """A probe of random sequences (BOS first) with a random earlier head and relation per token."""
    import torch

    from mhaexp.analysis.collect import ProbeData

    g = torch.Generator().manual_seed(seed)
    vocab = MEMORY_SHAPE["vocab_size"]
    ids = torch.randint(4, vocab, (batch, seq_len), generator=g)
    ids[:, 0] = 1
    pos = torch.arange(seq_len).expand(batch, -1)
    heads = (torch.rand(batch, seq_len, generator=g) * pos).long()
    heads[:, :2] = -1
    rels = torch.where(heads >= 0, torch.randint(N_RELATIONS, (batch, seq_len), generator=g), -1)
    mask = torch.ones(batch, seq_len, dtype=torch.bool)
    return ProbeData(
        batches=[{"input_ids": ids, "attention_mask": mask, "heads": heads, "rels": rels}],
        relations=[f"rel{r}" for r in range(N_RELATIONS)],
        id_to_token=str,
        special_ids=frozenset({0, 1, 2, 3}),
        bos_id=1,
        vocab_size=vocab,
        token_freq=torch.randint(1, 1000, (vocab,), generator=g).float(),
    )


def one_step(batch: int, seq_len: int, seed: int = 0) -> dict[str, float]:
    """Build the model and probe, then time one cheap analysis step and measure its peak memory (this
    process's high-water mark before and after; run it in a fresh process)."""
    import torch

    from mhaexp.analysis.collect import compute_head_metrics
    from mhaexp.nn.model import ModelConfig, Transformer

    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**MEMORY_SHAPE, max_seq_len=seq_len))
    probe = _random_probe(batch, seq_len, seed)
    cfg = yaml.safe_load(CONF.read_text())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    hm = compute_head_metrics(model, probe, cfg, expensive=False)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert "syntactic_accuracy" in hm.metrics and "importance" in hm.metrics
    full = MEMORY_SHAPE["n_layers"] * batch * MEMORY_SHAPE["n_heads"] * seq_len**2 * 4 / 2**20
    return {"peak_mb": (after - before) / 1024, "seconds": took, "full_patterns_mb": full, "baseline_mb": before / 1024}


def _step_in_subprocess(batch: int, seq_len: int, seed: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "mhaexp.tools.bench.analysis", "--step", str(seq_len), "--batch", str(batch)]
    cmd += ["--seed", str(seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ))
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_rows(batch: int, seed: int = 0, seq_lens: tuple[int, ...] = MEMORY_SEQ_LENS) -> list[Row]:
    """Peak memory and time of one analysis step per T (see the module docstring)."""
    rows = []
    for t in seq_lens:
        m = _step_in_subprocess(batch, t, seed)
        case = f"one analysis step, B={batch} T={t}, 4 layers x 8 heads, d=256, V=4096"
        target = MEMORY_TARGET if (batch, t) == (MEMORY_BATCH, 1024) else None
        extra = {"full_patterns_mb": m["full_patterns_mb"], "baseline_mb": m["baseline_mb"]}
        rows.append(Row("analysis", case, "peak memory", m["peak_mb"], m["peak_mb"], m["peak_mb"], "MB", target, extra))
        rows.append(Row("analysis", case, "time per analysis step", m["seconds"], m["seconds"], m["seconds"], "s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Peak memory and time of one analysis step against T.")
    p.add_argument("--batch", type=int, default=MEMORY_BATCH, help=f"probe sequences (default {MEMORY_BATCH})")
    p.add_argument("--step", type=int, help="internal: run one step at this T and print its figures as JSON")
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args(argv)
    if ns.step:
        print(json.dumps(one_step(ns.batch, ns.step, ns.seed)))
        return 0
    for row in memory_rows(ns.batch, ns.seed):
        print(f"{row.case:70s} {row.metric:24s} {row.median:10.2f} {row.unit}  {row.target or ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
