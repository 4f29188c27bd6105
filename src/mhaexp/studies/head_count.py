"""The seed's pro tip (multi-head-attention.txt, "Pro Tips"): "More heads ≠ always better; diminishing returns
after ~12-16".

A fixed-width head-count sweep (``experiment=head_count_sweep``: d_model 128, head_dim = 128 / n_heads,
so every model has the same parameters) over 1, 4 and 16 heads, 3 seeds. The gain of a step is the fall of
the best val loss from h to 4h heads. The claim: returns diminish, so the last quadrupling (4 -> 16) gains
less than the first (1 -> 4), compared within each seed (the same seed's data order and init stream at
every head count): ``paired_greater`` on first minus last gain. At d_model 128 more than 16 heads leave
fewer than 8 dimensions a head, so the sweep stops at 16.

Doublings (1, 2, 4, 8, 16 at 2 seeds) gained 0.001-0.009 nats each at 600 steps, inside the seed spread;
quadruplings gain about twice as much per step for 3 head counts instead of 5, so the same jobs buy a third
seed.
"""

from __future__ import annotations

import math
from pathlib import Path

from mhaexp.studies.base import Study
from mhaexp.studies.readers import summary
from mhaexp.studies.report import figure
from mhaexp.studies.runner import Budget, StudyContext, run_config
from mhaexp.studies.verdict import Claim, Measure, decided, paired_greater

HEADS = (1, 4, 16)  # quadruplings: each step's gain stands above the seed noise that hid a doubling's
SMOKE_HEADS = (1, 2, 4)  # a smoke run proves the path, with cheaper jobs
SOURCE = (
    'the seed document (multi-head-attention.txt, "Pro Tips"): "More heads ≠ always better; diminishing returns '
    'after ~12-16"'
)


class HeadCount(Study):
    name = "head_count"
    title = "Head count at fixed width: does the gain per doubling of heads shrink?"
    summary = "val loss at 1, 4 and 16 heads at fixed width: the first quadrupling's gain vs the last, paired per seed"
    # 9 jobs (3 head counts x 3 seeds), two at a time, 600 steps each. The old design's 10 jobs (5 head counts
    # x 2 seeds) took 17.5 min on the idle machine; these 9 need about 9% less step compute (16 min). The
    # 2026-12-06 run used 885 CPU-s in all. --steps 1000 is the larger budget.
    default_steps = 600
    default_seeds = 3
    minutes = 7

    def preflight_overrides(self, budget: Budget) -> list[str]:
        return ["experiment=head_count_sweep"]

    def run(self, ctx: StudyContext) -> None:
        steps = ctx.budget.n_steps(self.default_steps)
        ctx.sweep(
            "sweep",
            [
                "experiment=head_count_sweep",
                f"model.n_heads={','.join(map(str, self.heads(ctx)))}",
                f"seed={','.join(map(str, ctx.budget.seed_list(self.default_seeds)))}",
                f"trainer.max_steps={steps}",
            ],
        )
        self.plot(ctx)

    def heads(self, ctx: StudyContext) -> tuple[int, ...]:
        return SMOKE_HEADS if ctx.budget.smoke else HEADS

    def losses(self, ctx: StudyContext) -> dict[int, dict[int, tuple[float, Path]]]:
        """``{n_heads: {seed: (best val loss, run dir)}}``."""
        out: dict[int, dict[int, tuple[float, Path]]] = {}
        for d in ctx.stage_runs("sweep"):
            cfg = run_config(d)
            loss = summary(d).get("best_val_loss")
            out.setdefault(int(cfg.model.n_heads), {})[int(cfg.seed)] = (
                float(loss) if loss is not None else math.nan,
                d,
            )
        return out

    def seeds(self, ctx: StudyContext) -> list[int]:
        """The seeds that ran every head count (a paired comparison needs all of them)."""
        losses = self.losses(ctx)
        return sorted(set.intersection(*(set(losses.get(h, {})) for h in self.heads(ctx))))

    def gains(self, ctx: StudyContext) -> dict[str, Measure]:
        """``{"h->h'": per-seed fall of the best val loss}`` for each step of the sweep, over the same seeds."""
        losses, heads, seeds = self.losses(ctx), self.heads(ctx), self.seeds(ctx)
        return {
            f"{a}->{b}": Measure.of(losses[a][s][0] - losses[b][s][0] for s in seeds)
            for a, b in zip(heads, heads[1:], strict=False)
        }

    def plot(self, ctx: StudyContext) -> None:
        losses = self.losses(ctx)
        with figure(ctx.out / "loss_vs_heads.png", (5, 3.2)) as (fig, ax):
            seeds = sorted({s for v in losses.values() for s in v})
            for s in seeds:
                hs = [h for h in self.heads(ctx) if s in losses.get(h, {})]
                ax.plot(hs, [losses[h][s][0] for h in hs], marker="o", label=f"seed {s}")
            ax.set_xscale("log", base=2)
            ax.set(xlabel="heads per layer (d_model 128)", ylabel="best val loss")
            ax.legend(fontsize=8)

    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        gains = self.gains(ctx)
        heads = self.heads(ctx)
        first, last = f"{heads[0]}->{heads[1]}", f"{heads[-2]}->{heads[-1]}"
        shrink = Measure.of(a - b for a, b in zip(gains[first].values, gains[last].values, strict=True))
        runs = [ctx.rel(d) for v in self.losses(ctx).values() for _, d in v.values()]
        return [
            Claim(
                claim="Returns diminish as heads multiply at fixed width (more heads are not always better)",
                source=SOURCE,
                metric=f"gain of a step: best val loss at h heads minus at {heads[1] // heads[0]}h heads, per seed; "
                "their difference (first minus last gain) within each seed",
                ours={**gains, f"first minus last ({first} minus {last})": shrink},
                criterion=f"in every seed the first gain ({first}) exceeds the last ({last}): the paired difference "
                "is above zero in every seed (at least 2 seeds)",
                criterion_source=f"{SOURCE}: the gain of more heads falls as their number grows towards 12-16",
                **decided(paired_greater(shrink)),
                paper="diminishing returns after ~12-16 heads",
                runs=runs,
                plot="loss_vs_heads.png",
            )
        ]


STUDY = HeadCount()
