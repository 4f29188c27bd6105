"""Benchmark section ``analysis``: what the analysis callback adds to training wall time.

``python -m mhaexp.bench --sections analysis``. Two short ``Trainer.fit`` runs of the default model
(conf/model/small.yaml) on the default grammar data, without and with :class:`AnalysisCallback` at
the default cadence (conf/analysis/default.yaml: every 100 steps, the expensive tier every 5th
analysis and at the end), alternated (A B, then B A). No loggers, no checkpoints, no validation: the
only difference between the two fits is the callback.

Rows: the fit-time ratio with/without (target ``<= 1.05``), the time of one cheap and one expensive
analysis, the training step time, and the overhead projected for the default 1500-step run from
those (16 analyses: 13 cheap, 3 expensive). ``--quick`` fits 60 steps with an analysis every 30:
a smoke test of the section, not the default cadence, so it has no target.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from mhaexp.bench import Args, Row, default_model_config, register

CONF = Path(__file__).resolve().parents[3] / "conf" / "analysis" / "default.yaml"
DEFAULT_RUN_STEPS = 1500  # conf/trainer/cpu.yaml max_steps


def _fit(datamodule: Any, steps: int, callback: Any, device: str, seed: int) -> float:
    import pytorch_lightning as pl

    from mhaexp.lightning_module import LMModule

    pl.seed_everything(seed, verbose=False)
    model_cfg, _ = default_model_config(datamodule.vocab_size)
    tok = datamodule.tokenizer
    module = LMModule(model_cfg, {"lr": 3e-3, "warmup_steps": 100}, pad_id=tok.pad_id, mask_id=tok.mask_id, seed=seed)
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


def projected_overhead(
    cheap_s: float, expensive_s: float, step_s: float, steps: int, every: int, expensive_every: int
) -> float:
    """Analysis time over training time for a run of ``steps`` at this cadence (analysis at step 0 too)."""
    at = list(range(0, steps + 1, every))
    n_exp = sum(1 for s in at if s > 0 and ((s // every) % expensive_every == 0 or s == at[-1]))
    return ((len(at) - n_exp) * cheap_s + n_exp * expensive_s) / (steps * step_s)


@register("analysis")
def bench_analysis_overhead(args: Args | None = None) -> list[Row]:
    """Training wall time with vs without the analysis callback (see the module docstring)."""
    import tempfile

    from mhaexp.analysis.callback import AnalysisCallback
    from mhaexp.data import LMDataModule

    args = args or Args()
    cfg = yaml.safe_load(CONF.read_text())
    default_every = int(cfg["every_n_steps"])
    steps, every = (60, 30) if args.quick else (5 * default_every, default_every)
    cfg["every_n_steps"] = every
    repeats = 1 if args.quick else 2
    datamodule = LMDataModule(kind="grammar")
    datamodule.prepare_data()
    datamodule.setup()
    ratios, cheap, expensive, step_s = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="mhaexp-bench-analysis-") as tmp:
        for r in range(repeats):
            times: dict[str, float] = {}
            for name in ("without", "with") if r % 2 == 0 else ("with", "without"):
                cb = AnalysisCallback(cfg, datamodule, Path(tmp) / f"{name}{r}") if name == "with" else None
                times[name] = _fit(datamodule, steps, cb, args.device, args.seed)
                if cb is not None:
                    cheap += [s for _, exp, s in cb.timings if not exp]
                    expensive += [s for _, exp, s in cb.timings if exp]
            ratios.append(times["with"] / times["without"])
            step_s.append(times["without"] / steps)
    case = f"default model, grammar, {steps} steps, analysis every {every}, expensive every {cfg['expensive_every']}"
    target = None if args.quick else "<= 1.05"

    def row(metric: str, values: list[float], unit: str, tgt: str | None = None, **extra: Any) -> Row:
        return Row("analysis", case, metric, statistics.median(values), min(values), max(values), unit, tgt, extra)

    proj = projected_overhead(
        statistics.median(cheap),
        statistics.median(expensive),
        statistics.median(step_s),
        DEFAULT_RUN_STEPS,
        default_every,
        int(cfg["expensive_every"]),
    )
    return [
        row("fit time with/without analysis", ratios, "x", target),
        row("train step (without)", [s * 1e3 for s in step_s], "ms"),
        row("cheap analysis", cheap, "s"),
        row("expensive analysis (with pictures)", expensive, "s"),
        Row(
            "analysis",
            f"projected: {DEFAULT_RUN_STEPS}-step default run",
            "analysis time / training time",
            proj,
            proj,
            proj,
            "x",
            None,
        ),
    ]
