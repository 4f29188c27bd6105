"""Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?" (NeurIPS).

On the default causal LM (3 layers x 8 heads, grammar data), trained once per seed and then pruned
iteratively in steps of 10% of all heads (Sec. 4.2, no fine-tuning between steps):

1. pruning by importance keeps quality better than pruning in random order, at every pruned fraction
   (Sec. 4.2, Fig. 3);
2. a large share of heads can go at small cost: the largest fraction pruned with <= 1% val-loss increase
   (by importance, and by random order for reference);
3. the gradient importance ranking agrees with the ablation ranking (Sec. 4.1 proposes the gradient
   proxy for ablation): Spearman correlation over heads at the end of training.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from mhaexp.pruning.curves import read_curve_csv
from mhaexp.rundir import CHECKPOINT_DIR, LAST_CHECKPOINT, PRUNING_CURVE_FILE
from mhaexp.studies.base import Study
from mhaexp.studies.readers import head_metric
from mhaexp.studies.report import figure
from mhaexp.studies.runner import StudyContext, run_config
from mhaexp.studies.verdict import Claim, Measure, all_hold, at_least, decided, greater

FRACTION = 0.85  # 3 layers x 8 heads with at least one head a layer: 21 of 24 can go (0.875)
SMALL_COST = 0.01  # "at small cost": val loss at most 1% above the unpruned model's
LARGE_SHARE = 0.2  # Michel et al. prune 20% (WMT) to 40% (BERT) of heads without a significant drop
AGREE = 0.5  # Spearman correlation counted as agreement


def free_fraction(curve: list[dict]) -> float:
    """Largest pruned fraction whose val loss stays within ``SMALL_COST`` of the unpruned loss, before the
    first fraction that exceeds it."""
    base = curve[0]["val_loss"]
    best = 0.0
    for p in curve:
        if p["val_loss"] > base * (1 + SMALL_COST):
            break
        best = p["fraction_pruned"]
    return best


def spearman(run_dir: Path) -> float:
    """Spearman correlation of gradient importance and ablation over heads, at the last step with both."""
    imp, abl = head_metric(run_dir, "importance"), head_metric(run_dir, "ablation")
    steps = sorted(set(imp) & set(abl))
    if not steps:
        return math.nan
    heads = sorted(abl[steps[-1]])
    frame = pd.DataFrame({"i": [imp[steps[-1]][h] for h in heads], "a": [abl[steps[-1]][h] for h in heads]})
    ranks = frame.rank()  # Spearman = Pearson of the ranks (ties share their mean rank)
    return float(ranks["i"].corr(ranks["a"]))


class Michel2019(Study):
    name = "michel2019"
    title = "Michel et al. 2019: many heads can go, and importance says which"
    summary = "iterative head pruning by importance vs random order; importance vs ablation ranking"
    default_steps = 1500
    minutes = 9

    def run(self, ctx: StudyContext) -> None:
        steps = ctx.budget.n_steps(self.default_steps)
        seeds = ctx.budget.seed_list()
        trained = ctx.sweep("train", [f"seed={','.join(map(str, seeds))}", f"trainer.max_steps={steps}"])
        for seed, run in zip(seeds, trained, strict=True):
            ctx.sweep(
                f"prune_seed{seed}",
                [
                    f"init_from={run / CHECKPOINT_DIR / LAST_CHECKPOINT}",
                    f"seed={seed}",
                    "pruning=iterative",
                    f"pruning.fraction={FRACTION}",
                    "pruning.at_step=0",
                    "pruning.criterion=importance,random",
                    f"pruning.seed={seed}",
                    "trainer.max_steps=1",
                    "analysis=off",
                ],
            )
        self.plot(ctx)

    def curves(self, ctx: StudyContext) -> dict[str, list[tuple[Path, list[dict]]]]:
        out: dict[str, list[tuple[Path, list[dict]]]] = {"importance": [], "random": []}
        for stage in sorted(p.name for p in ctx.runs_dir.glob("prune_seed*")):
            for d in ctx.stage_runs(stage):
                out[str(run_config(d).pruning.criterion)].append((d, read_curve_csv(d / PRUNING_CURVE_FILE)))
        return out

    def plot(self, ctx: StudyContext) -> None:
        with figure(ctx.out / "pruning_curves.png", (5, 3.2)) as (fig, ax):
            for (crit, runs), color in zip(self.curves(ctx).items(), ("C0", "C3"), strict=True):
                for i, (_, c) in enumerate(runs):
                    ax.plot(
                        [p["fraction_pruned"] for p in c],
                        [p["val_loss"] for p in c],
                        color=color,
                        marker=".",
                        label=crit if i == 0 else None,
                    )
            ax.set(xlabel="fraction of heads pruned", ylabel="val loss")
            ax.legend(fontsize=8)

    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        curves = self.curves(ctx)
        fractions = sorted({round(p["fraction_pruned"], 6) for _, c in curves["importance"] for p in c} - {0.0})

        def loss_at(crit: str, f: float) -> Measure:
            return Measure.of(
                next((p["val_loss"] for p in c if round(p["fraction_pruned"], 6) == f), math.nan)
                for _, c in curves[crit]
            )

        per_fraction = {f: greater(loss_at("random", f), loss_at("importance", f)) for f in fractions}
        better = all_hold(list(per_fraction.values())) if fractions else (None, "no pruning curve")
        free_imp = Measure.of(free_fraction(c) for _, c in curves["importance"])
        free_rand = Measure.of(free_fraction(c) for _, c in curves["random"])
        large = at_least(free_imp, LARGE_SHARE)
        trained = ctx.stage_runs("train")
        rho = Measure.of(spearman(d) for d in trained)
        agree = at_least(rho, AGREE)
        prune_runs = [ctx.rel(d) for runs in curves.values() for d, _ in runs]
        gap = {
            f"{f:.2f}": Measure.of(
                [r - i for r, i in zip(loss_at("random", f).values, loss_at("importance", f).values, strict=True)]
            )
            for f in fractions
        }
        return [
            Claim(
                claim="Pruning heads by importance keeps quality better than random order, at every fraction",
                source="Michel et al. 2019, Sec. 4.2 and Fig. 3",
                metric="val loss after pruning, random order minus importance order, per pruned fraction",
                ours=gap,
                criterion="at every fraction > 0, every seed's random-order loss above every seed's importance loss",
                **decided(better),
                paper="importance-ordered pruning stays near the unpruned quality far longer than random order",
                runs=prune_runs,
                plot="pruning_curves.png",
            ),
            Claim(
                claim="A large share of heads can be pruned at small cost",
                source="Michel et al. 2019, Sec. 4.2 (20% of WMT's and 40% of BERT's heads)",
                metric=f"largest fraction pruned with val loss <= {1 + SMALL_COST:g} x the unpruned loss",
                ours={"importance": free_imp, "random": free_rand},
                criterion=f"importance order: every seed >= {LARGE_SHARE:g}",
                **decided(large),
                paper="20-40% of heads",
                runs=prune_runs,
                plot="pruning_curves.png",
            ),
            Claim(
                claim="The gradient importance ranks heads as ablation does",
                source="Michel et al. 2019, Sec. 4.1 (importance as a proxy for the ablation effect)",
                metric="Spearman correlation over heads of gradient importance and ablation Δloss, end of training",
                ours=rho,
                criterion=f"every seed >= {AGREE:g}",
                **decided(agree),
                paper="the proxy is used in place of ablation",
                runs=[ctx.rel(d) for d in trained],
            ),
        ]


STUDY = Michel2019()
