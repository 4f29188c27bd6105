"""Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
Checkpoints" (EMNLP).

The default causal LM (8 heads) is trained as MHA, then converted to fewer K/V heads (``init_from`` with
``gqa_init``) and uptrained for 5% of its steps (Sec. 2.1: "a small fraction of the original steps"):

1. mean-pooling the K/V heads beats keeping the first head and random initialization, at conversion time
   before any uptraining (Sec. 2.1, Fig. 4);
2. uptraining with about 5% of the original steps closes most of the gap to MHA (Sec. 3, Fig. 5);
3. uptrained GQA (2 K/V heads) lies between MQA (1) and MHA (8) in quality, at a KV cache between theirs.

Before uptraining the gap is ``init/converted_val_loss - init/source_val_loss`` (both on the same held-out
batches, ``init_conversion.json``); after, it is the uptrained run's final val loss minus the MHA run's
(both on the whole val split).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mhaexp.rundir import CHECKPOINT_DIR, INIT_CONVERSION_FILE, LAST_CHECKPOINT
from mhaexp.studies.base import Study
from mhaexp.studies.readers import summary
from mhaexp.studies.runner import StudyContext, run_config
from mhaexp.studies.verdict import Claim, Measure, all_hold, at_least, decided, greater

UPTRAIN_SHARE = 0.05  # Ainslie et al. uptrain with alpha = 5% of the pre-training steps
MOST = 0.5  # "closes most of the gap": more than half
GQA_KV = 2


class Ainslie2023(Study):
    name = "ainslie2023"
    title = "Ainslie et al. 2023: mean-pooled MHA -> GQA conversion and uptraining"
    summary = "conversion by mean/first/random, 5% uptraining, GQA between MQA and MHA"
    default_steps = 1500
    minutes = 12

    def run(self, ctx: StudyContext) -> None:
        steps = ctx.budget.n_steps(self.default_steps)
        up = ctx.budget.scaled(self.default_steps, UPTRAIN_SHARE)
        seeds = ctx.budget.seed_list()
        mha = ctx.sweep("mha", [f"seed={','.join(map(str, seeds))}", f"trainer.max_steps={steps}"])
        for seed, run in zip(seeds, mha, strict=True):
            common = [
                f"init_from={run / CHECKPOINT_DIR / LAST_CHECKPOINT}",
                f"seed={seed}",
                f"trainer.max_steps={up}",
                f"trainer.val_check_interval={up}",  # validate once, at the end of uptraining
                "analysis=off",
            ]
            ctx.sweep(f"gqa_seed{seed}", [*common, f"model.n_kv_heads={GQA_KV}", "gqa_init=mean,first,random"])
            ctx.sweep(f"mqa_seed{seed}", [*common, "model.n_kv_heads=1", "gqa_init=mean"])

    def converted(self, ctx: StudyContext) -> dict[tuple[int, str], list[Path]]:
        """``{(n_kv_heads, gqa_init): run dirs over seeds}``."""
        out: dict[tuple[int, str], list[Path]] = {}
        for stage in sorted(p.name for p in ctx.runs_dir.glob("*_seed*")):
            for d in ctx.stage_runs(stage):
                cfg = run_config(d)
                out.setdefault((int(cfg.model.n_kv_heads), str(cfg.gqa_init)), []).append(d)
        return out

    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        conv = self.converted(ctx)
        mha = ctx.stage_runs("mha")

        def init(d: Path, key: str) -> float:
            path = d / INIT_CONVERSION_FILE
            return float(json.loads(path.read_text())[key]) if path.is_file() else math.nan

        def final_loss(d: Path) -> float:
            v = summary(d).get("val/loss")
            return float(v) if v is not None else math.nan

        at_conversion = {
            g: Measure.of(init(d, "init/converted_val_loss") for d in conv.get((GQA_KV, g), []))
            for g in ("mean", "first", "random")
        }
        pooling = all_hold(
            [
                greater(at_conversion["first"], at_conversion["mean"]),
                greater(at_conversion["random"], at_conversion["mean"]),
            ]
        )
        gqa = conv.get((GQA_KV, "mean"), [])
        mqa = conv.get((1, "mean"), [])
        mha_loss = Measure.of(final_loss(d) for d in mha)
        closed = []
        for d, m in zip(gqa, mha, strict=False):
            before = init(d, "init/converted_val_loss") - init(d, "init/source_val_loss")
            after = final_loss(d) - final_loss(m)
            closed.append(1 - after / before if before > 0 else math.nan)
        share = Measure.of(closed)
        most = at_least(share, MOST)
        gqa_loss, mqa_loss = Measure.of(final_loss(d) for d in gqa), Measure.of(final_loss(d) for d in mqa)
        between = all_hold([greater(mqa_loss, gqa_loss), greater(gqa_loss, mha_loss)])
        kv = {
            name: summary(runs[0]).get("kv_cache_bytes_per_token") if runs else None
            for name, runs in (("MHA", mha), ("GQA", gqa), ("MQA", mqa))
        }
        rel = lambda runs: [ctx.rel(d) for d in runs]  # noqa: E731
        return [
            Claim(
                claim="Mean-pooling K/V heads beats keeping the first head and random init, before uptraining",
                source="Ainslie et al. 2023, Sec. 2.1 and Fig. 4",
                metric=f"val loss right after converting MHA to {GQA_KV} K/V heads (held-out batches)",
                ours=at_conversion,
                criterion="every seed of first and of random above every seed of mean",
                **decided(pooling),
                paper="mean pooling > first head > random, at conversion",
                runs=rel([d for g in ("mean", "first", "random") for d in conv.get((GQA_KV, g), [])]),
            ),
            Claim(
                claim="Uptraining with about 5% of the original steps closes most of the gap to MHA",
                source="Ainslie et al. 2023, Sec. 3 and Fig. 5 (alpha = 0.05)",
                metric="share of the conversion's loss gap to MHA closed by uptraining "
                f"({ctx.budget.scaled(self.default_steps, UPTRAIN_SHARE)} steps)",
                ours=share,
                criterion=f"every seed >= {MOST:g}",
                **decided(most),
                paper="uptrained GQA close to MHA quality with 5% of the steps",
                runs=rel([*gqa, *mha]),
            ),
            Claim(
                claim="GQA's quality lies between MQA's and MHA's, at a KV cache between theirs",
                source="Ainslie et al. 2023, Sec. 3 and Fig. 3",
                metric=f"final val loss after uptraining; KV-cache bytes per token: {kv}",
                ours={"MQA": mqa_loss, f"GQA-{GQA_KV}": gqa_loss, "MHA": mha_loss},
                criterion="every MQA seed above every GQA seed, and every GQA seed above every MHA seed",
                **decided(between),
                paper="GQA-8 close to MHA, MQA below both, on T5-XXL",
                runs=rel([*mqa, *gqa, *mha]),
            ),
        ]


STUDY = Ainslie2023()
