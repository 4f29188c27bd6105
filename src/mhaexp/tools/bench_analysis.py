"""Benchmark section ``analysis``: what the analysis callback adds to training wall time.

``python -m mhaexp.tools.bench --sections analysis``. The default run (conf/model/small.yaml on the default
grammar data, 1500 steps) is fitted twice with ``Trainer.fit``: without and with
:class:`~mhaexp.analysis.callback.AnalysisCallback` at the default cadence (conf/analysis/default.yaml).
No loggers, checkpoints or validation: the callback is the only difference.

Rows:

* ``analysis / training time`` (target ``<= 0.05``): the callback's own wall time over the rest of the
  same fit. Both are measured in one process, interleaved every ``every_n_steps`` steps, so load
  from other processes on a shared machine cancels as in the other sections' interleaved ratios.
* ``fit time with/without``: the two fits' wall times, a cross-check that also sees indirect costs
  (caches, allocator); two fits minutes apart on a shared machine differ by more than 5% by
  themselves, so it has no target.
* the time of one cheap and one expensive analysis and of a training step.

``--quick`` fits 60 steps with an analysis every 30 (a smoke test of the section, no target).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from mhaexp.rundir import ANALYSIS_DIR
from mhaexp.tools.bench import Args, Row, default_model_config, register

CONF = Path(__file__).resolve().parents[3] / "conf" / ANALYSIS_DIR / "default.yaml"
DEFAULT_RUN_STEPS = 1500  # conf/trainer/cpu.yaml max_steps
TARGET = "<= 0.05"


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
    datamodule = LMDataModule(kind="grammar")
    datamodule.prepare_data()
    datamodule.setup()
    with tempfile.TemporaryDirectory(prefix="mhaexp-bench-analysis-") as tmp:
        without = _fit(datamodule, steps, None, args.device, args.seed)
        callback = AnalysisCallback(cfg, datamodule, Path(tmp))
        with_cb = _fit(datamodule, steps, callback, args.device, args.seed)
    cheap = [s for _, expensive, s in callback.timings if not expensive]
    expensive = [s for _, expensive, s in callback.timings if expensive]
    in_fit = callback.seconds / (with_cb - callback.seconds)
    case = (
        f"default model, grammar, {steps} steps, analysis every {cfg['every_n_steps']} "
        f"(expensive every {cfg['expensive_every']} and at the end)"
    )

    def row(metric: str, values: list[float], unit: str, target: str | None = None, **extra: Any) -> Row:
        return Row("analysis", case, metric, statistics.median(values), min(values), max(values), unit, target, extra)

    return [
        row(
            "analysis / training time",
            [in_fit],
            "x",
            None if args.quick else TARGET,
            analyses=callback.analyses,
            analysis_s=callback.seconds,
        ),
        row("fit time with/without analysis", [with_cb / without], "x", fit_with_s=with_cb, fit_without_s=without),
        row("train step (without)", [without / steps * 1e3], "ms"),
        row("cheap analysis", cheap or [float("nan")], "s"),
        row("expensive analysis (pictures included)", expensive or [float("nan")], "s"),
    ]
