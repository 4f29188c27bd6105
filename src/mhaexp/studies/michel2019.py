"""Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?" (NeurIPS).

On a causal LM of the default width with the paper's head count, 6 layers x 16 heads (:data:`MODEL`;
grammar data), trained once per seed; each trained model is then pruned iteratively, 10% of all heads per
step, without fine-tuning (Sec. 4.2), in several orders:

* by importance (eq. 2, ``E_x |dL/dxi_h|``) normalised per layer by its L2 norm (Sec. 4.1), re-ranked at
  every step: the paper's method, and the one the verdicts judge;
* by importance without the normalisation, for reference (on the default 3 x 8 model the normalisation
  ranked a costly layer-0 head, small in gradient, lowest of all);
* by each head's own ablation Delta-loss on the unpruned model (ranked once): what a good order achieves;
* in :data:`RANDOM_ORDERS` random orders: the distribution the importance order is compared with, within
  the same model (paired).

Heads are ranked on one half of the validation split and every curve is measured on the other half
(:func:`mhaexp.pruning.held_out.split_held_out`), so no order is flattered by the sequences it was fitted to.
The curves are written to ``eval/pruning_curves.json``; the verdicts read only that file and the runs.

1. pruning by importance keeps quality better than random order at the same fraction (Sec. 4.2, Fig. 3);
2. a large share of heads can go at small cost: the largest fraction pruned with <= 1% val-loss increase
   (Sec. 4.2: 20% of WMT's and 40% of BERT's heads without a noticeable drop);
3. the gradient importance ranks heads as ablation does (Sec. 4.1 proposes it as the proxy for the ablation
   effect): Spearman correlation over heads at the end of training.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

from scipy import stats

from mhaexp.config import instantiate_plain
from mhaexp.heads.importance import normalize_by_layer
from mhaexp.pruning.config import PruningConfig
from mhaexp.pruning.criteria import head_scores
from mhaexp.pruning.curves import compute_pruning_curve
from mhaexp.pruning.held_out import module_objective, split_held_out
from mhaexp.rundir import CHECKPOINT_DIR, LAST_CHECKPOINT
from mhaexp.studies.base import Study
from mhaexp.studies.readers import head_metric
from mhaexp.studies.report import figure
from mhaexp.studies.runner import Budget, StudyContext, run_config
from mhaexp.studies.verdict import Claim, Measure, at_least, decided, significant_in_every_seed
from mhaexp.training.module import load_module

# Michel et al. prune models of 16 heads a layer (the title's sixteen; WMT's Transformer-large: 6 layers x 16
# heads, Sec. 3.1) and 12 (BERT-base); the default model has 3 x 8. The width stays the default's (128, so
# 8 dimensions a head), as Transformer-large's 1024 is split 16 ways.
MODEL = ("model.n_layers=6", "model.n_heads=16")
SMALL_COST = 0.01  # "at small cost": val loss at most 1% above the unpruned model's
LARGE_SHARE = 0.2  # Sec. 4.2: 20% (WMT) to 40% (BERT) of heads pruned without a noticeable drop; the lower one
AGREE = 0.5  # Spearman correlation counted as agreement
ALPHA = 0.05  # significance of the within-seed test of claim 1
RANDOM_ORDERS = 20  # random pruning orders per model
CURVES_FILE = "pruning_curves.json"
# The orders besides random: name -> (criterion, normalise per layer, re-rank at every step).
VERDICT_ORDER = "importance"
ORDERS: dict[str, tuple[str, bool, bool]] = {
    VERDICT_ORDER: ("importance", True, True),  # Michel et al.'s method (Sec. 4.1-4.2)
    "importance, not normalised": ("importance", False, True),
    "ablation": ("ablation", False, False),  # each head's own Delta-loss on the unpruned model
}


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
    return float(stats.spearmanr([imp[steps[-1]][h] for h in heads], [abl[steps[-1]][h] for h in heads]).statistic)


def measure_pruning(run_dir: Path, seed: int) -> dict[str, Any]:
    """Every pruning curve of one trained run (ranked on one half of its val split, measured on the other),
    and the first step's scores of each criterion (for the report's notes)."""
    module = load_module(Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT)
    datamodule = instantiate_plain(run_config(run_dir).data)
    datamodule.prepare_data()
    defaults = PruningConfig()  # the step size, held-out batches and floor of conf/pruning/iterative.yaml
    # Rank on pruning.n_batches val batches, as a pruning run does, and measure on as many others.
    rank, measure = split_held_out(list(itertools.islice(datamodule.val_dataloader(), 2 * defaults.n_batches)))
    model, objective = module.model, module_objective(module)

    def curve(criterion: str, normalize: bool, exact: bool, order_seed: int = 0) -> list[dict[str, Any]]:
        return compute_pruning_curve(
            model,
            rank,
            criterion,
            step_fraction=defaults.step_fraction,
            objective=objective,
            min_heads_per_layer=defaults.min_heads_per_layer,
            normalize=normalize,
            exact=exact,
            seed=order_seed,
            eval_batches=measure,
        )

    importance = head_scores("importance", model, rank, objective)
    return {
        "run": str(run_dir),
        "seed": seed,
        "sequences": {
            "rank": sum(len(b["input_ids"]) for b in rank),
            "measure": sum(len(b["input_ids"]) for b in measure),
        },
        "curves": {name: curve(*spec) for name, spec in ORDERS.items()},
        "random": [curve("random", False, True, seed * RANDOM_ORDERS + k) for k in range(RANDOM_ORDERS)],
        "first_scores": {
            "importance": [s.tolist() for s in importance],
            "importance_normalised": [s.tolist() for s in normalize_by_layer(importance)],
            "ablation": [s.tolist() for s in head_scores("ablation", model, rank, objective)],
        },
    }


def loss_at(curve: list[dict], fraction: float) -> float:
    return next((p["val_loss"] for p in curve if math.isclose(p["fraction_pruned"], fraction)), math.nan)


def against_random(result: dict[str, Any]) -> dict[str, Any]:
    """One seed's importance order against its random orders, fraction by fraction (paired: same model, same
    measuring batches): the random orders' mean loss minus the importance loss, the share of random orders
    it beats, and a one-sided Wilcoxon signed-rank test of the gaps over the pruned fractions."""
    imp = result["curves"][VERDICT_ORDER]
    fractions = [p["fraction_pruned"] for p in imp if p["fraction_pruned"] > 0]
    gaps, beaten = [], []
    for f in fractions:
        mine = loss_at(imp, f)
        others = [loss_at(c, f) for c in result["random"]]
        gaps.append(sum(others) / len(others) - mine)
        beaten.append(sum(o > mine for o in others) / len(others))
    testable = len(gaps) >= 2 and any(g != 0 for g in gaps)  # all-zero gaps: no ranks to test
    p = float(stats.wilcoxon(gaps, alternative="greater").pvalue) if testable else math.nan
    return {"fractions": fractions, "gaps": gaps, "beaten": beaten, "p": p}


class Michel2019(Study):
    name = "michel2019"
    title = "Michel et al. 2019: many heads can go, and importance says which"
    summary = "iterative head pruning by importance vs random orders (paired), ablation order as reference"
    default_steps = 1500
    minutes = 10

    def preflight_overrides(self, budget: Budget) -> list[str]:
        return list(MODEL)

    def run(self, ctx: StudyContext) -> None:
        steps = ctx.budget.n_steps(self.default_steps)
        seeds = ctx.budget.seed_list()
        trained = ctx.sweep("train", [*MODEL, f"seed={','.join(map(str, seeds))}", f"trainer.max_steps={steps}"])
        start = time.perf_counter()
        ctx.echo(f"[{self.name}] prune: {len(ORDERS)} orders and {RANDOM_ORDERS} random orders per model")
        results = [measure_pruning(d, seed) for seed, d in zip(seeds, trained, strict=True)]
        ctx.eval_path(CURVES_FILE).write_text(json.dumps(results, indent=1))
        ctx.stage_seconds["prune"] = round(time.perf_counter() - start, 1)
        self.plot(ctx)

    def results(self, ctx: StudyContext) -> list[dict[str, Any]]:
        path = ctx.out / "eval" / CURVES_FILE
        return json.loads(path.read_text()) if path.is_file() else []

    def plot(self, ctx: StudyContext) -> None:
        results = self.results(ctx)
        n = max(1, len(results))
        with figure(ctx.out / "pruning_curves.png", (4.2 * n, 3.4), ncols=n) as (fig, axes):
            for ax, r in zip([axes] if n == 1 else list(axes), results, strict=False):
                xs = lambda c: [p["fraction_pruned"] for p in c]  # noqa: E731
                ys = lambda c: [p["val_loss"] for p in c]  # noqa: E731
                for i, c in enumerate(r["random"]):
                    label = f"random ({len(r['random'])} orders)" if i == 0 else None
                    ax.plot(xs(c), ys(c), color="0.75", lw=0.7, label=label)
                for (name, c), style in zip(r["curves"].items(), ("C0-", "C1--", "C2-."), strict=False):
                    ax.plot(xs(c), ys(c), style, marker=".", label=name)
                base = r["curves"][VERDICT_ORDER][0]["val_loss"]
                ax.axhline(base * (1 + SMALL_COST), color="k", lw=0.6, ls=":", label=f"+{SMALL_COST:.0%} loss")
                ax.set(xlabel="fraction of heads pruned", ylabel="val loss (measuring half)", title=f"seed {r['seed']}")
                ax.set_ylim(base * 0.98, base * 1.6)
                ax.legend(fontsize=7)

    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        results = self.results(ctx)
        vs = [against_random(r) for r in results]
        runs = [ctx.rel(ctx.run_path(r["run"])) for r in results]
        fractions = vs[0]["fractions"] if vs else []
        better_ours: dict[str, Measure] = {
            "Wilcoxon p over fractions": Measure.of(v["p"] for v in vs),
            "random mean minus importance, mean over fractions": Measure.of(
                sum(v["gaps"]) / len(v["gaps"]) if v["gaps"] else math.nan for v in vs
            ),
        }
        for i, f in enumerate(fractions):
            better_ours[f"share of random orders beaten at {f:.2f}"] = Measure.of(
                v["beaten"][i] if i < len(v["beaten"]) else math.nan for v in vs
            )
        effect = Measure.of(sum(v["gaps"]) / len(v["gaps"]) if v["gaps"] else math.nan for v in vs)
        better = significant_in_every_seed(Measure.of(v["p"] for v in vs), effect, ALPHA)
        free = {name: Measure.of(free_fraction(r["curves"][name]) for r in results) for name in ORDERS}
        free["random (mean of the orders)"] = Measure.of(
            sum(free_fraction(c) for c in r["random"]) / len(r["random"]) for r in results
        )
        large = at_least(free[VERDICT_ORDER], LARGE_SHARE)
        trained = ctx.stage_runs("train")
        rho = Measure.of(spearman(d) for d in trained)
        return [
            Claim(
                claim="Pruning heads by importance keeps quality better than pruning them in random order, "
                "at the same fraction pruned",
                source="Michel et al. 2019, Sec. 4.2 and Fig. 3",
                metric=f"val loss after iterative pruning (steps of 10% of heads, no fine-tuning), importance "
                f"order (normalised per layer) against {RANDOM_ORDERS} random orders of the same model, per "
                "fraction; ranked on one half of the val split, measured on the other",
                ours=better_ours,
                criterion=f"in every seed, a one-sided Wilcoxon signed-rank test over the pruned fractions of the "
                f"random orders' mean loss minus the importance order's loss gives p < {ALPHA:g}",
                criterion_source="Sec. 4.2 and Fig. 3: the importance-ordered curve keeps accuracy/BLEU flat while "
                "a large share of heads goes; the paired test over fractions is ours",
                **decided(better),
                paper="importance-ordered pruning keeps WMT BLEU and MNLI accuracy near the unpruned model up to "
                "20-40% of heads pruned",
                runs=runs,
                plot="pruning_curves.png",
            ),
            Claim(
                claim="A large share of heads can be pruned at small cost",
                source="Michel et al. 2019, Sec. 4.2 and Fig. 3 (20% of WMT's and 40% of BERT's heads)",
                metric=f"largest fraction pruned with val loss <= {1 + SMALL_COST:g} x the unpruned loss "
                "(measuring half of the val split), per order",
                ours=free,
                criterion=f"importance order (normalised per layer, the paper's method): every seed >= {LARGE_SHARE:g}",
                criterion_source="Sec. 4.2, Fig. 3: 20% (WMT) and 40% (BERT) of heads pruned without a noticeable "
                "drop; the bar is the lower of the two, and +1% val loss is our reading of 'no noticeable drop'",
                **decided(large),
                paper="20-40% of heads",
                runs=runs,
                plot="pruning_curves.png",
            ),
            Claim(
                claim="The gradient importance ranks heads as ablation does",
                source="Michel et al. 2019, Sec. 4.1 (importance as a proxy for the ablation effect)",
                metric="Spearman correlation over heads of gradient importance and ablation Delta-loss, end of "
                "training (scipy.stats.spearmanr)",
                ours=rho,
                criterion=f"every seed >= {AGREE:g}",
                criterion_source="Sec. 4.1, eq. 2: I_h estimates the loss change of masking head h, so it should "
                "order heads as masking them one at a time (Sec. 2, Table 1) does; the bar 0.5 is ours",
                **decided(at_least(rho, AGREE)),
                paper="the proxy is used in place of ablation",
                runs=[ctx.rel(d) for d in trained],
            ),
        ]

    def notes(self, ctx: StudyContext) -> list[str]:
        return [
            "Changed for issue 29. Heads were ranked and measured on the same 4 val batches, with one random order "
            "per model compared across seeds unpaired (random minus importance per fraction: seed 0 -0.019 to "
            "+0.47, seed 1 -0.76 to +0.32: inconclusive), and the importance order was not normalised per layer. "
            f"Now heads are ranked on one half of the val split and measured on the other, {RANDOM_ORDERS} random "
            "orders per model are compared within the seed, the verdict's order is the paper's (normalised per "
            "layer), and the unnormalised and ablation orders are drawn beside it. The old share within +1%: "
            "importance 0.17, 0.083 (does not hold).",
            "Changed for issue 29 (2026-12-06): the model is 6 layers x 16 heads (MODEL), the paper's head count "
            "a layer, instead of the default 3 x 8, chosen from the paper before the run. On 3 x 8 (1500 steps, "
            "seeds 0, 1): claim 1 p = 0.120, 0.051 (does not hold: the normalised order lost to most random "
            "orders at 83% and 88% pruned, with each layer down to 1-2 heads); claim 2 0.25, 0.17 (inconclusive; "
            "unnormalised 0.33, 0.25, ablation 0.42, 0.25); claim 3 Spearman 0.71, 0.85 (holds).",
            *(first_pruned_note(r) for r in self.results(ctx)),
        ]


def first_pruned_note(result: dict[str, Any]) -> str:
    """Which head each importance ranking prunes first, and how costly that head is to ablate: per-layer
    normalisation can rank lowest a head of a layer whose gradients are all large (issue 29)."""
    first = result["first_scores"]
    heads = [(i, h) for i, layer in enumerate(first["ablation"]) for h in range(len(layer))]

    def score(key: str, head: tuple[int, int]) -> float:
        return first[key][head[0]][head[1]]

    abl = [score("ablation", ih) for ih in heads]

    def costliest(head: tuple[int, int]) -> str:
        return f"L{head[0]}H{head[1]}, {1 + sum(a > score('ablation', head) for a in abl)} of {len(heads)}"

    lowest = min(heads, key=lambda ih: score("importance_normalised", ih))
    raw = min(heads, key=lambda ih: score("importance", ih))
    rho = stats.spearmanr([score("importance", ih) for ih in heads], abl).statistic
    return (
        f"seed {result['seed']}: ranked on {result['sequences']['rank']} val sequences, measured on "
        f"{result['sequences']['measure']} others. First head pruned by normalised importance: {costliest(lowest)} "
        f"by ablation Delta-loss (1 = costliest to ablate); without the normalisation: {costliest(raw)}. "
        f"Importance vs ablation Spearman on the ranking half: {rho:.2f}."
    )


STUDY = Michel2019()
