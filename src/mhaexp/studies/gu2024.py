"""Gu et al. 2024, "When Attention Sink Emerges in Language Models: An Empirical View" (arXiv:2410.10781).

On the default causal LM (grammar data):

1. at initialization there is no attention sink: the sink rate is near zero (Sec. 3);
2. sinks emerge during training: the sink rate rises, after some steps (Sec. 4, "emerges after effective
   optimization on sufficient training data"). We report the first analysis step at which the sink rate
   reaches half its final value.

The sink rate is Gu et al.'s: the share of (head, sequence) pairs whose mean attention to the first token
exceeds eps = 0.3, the runs' ``analysis.thresholds.sink`` (:func:`mhaexp.heads.patterns.sink_rate`, per
head, averaged over heads here).
"""

from __future__ import annotations

import math

from mhaexp.studies.base import Study
from mhaexp.studies.readers import head_metric_mean, role_bar
from mhaexp.studies.report import figure
from mhaexp.studies.runner import StudyContext
from mhaexp.studies.verdict import Claim, Measure, at_most, decided, greater

NEAR_ZERO = 0.05  # "near zero" at initialization
ANALYSES = 20


def onset(series: list[tuple[int, float]]) -> float:
    """First step at which the series reaches half its final value (NaN if the final value is not above 0)."""
    if not series or not series[-1][1] > 0:
        return math.nan
    half = series[-1][1] / 2
    return float(next(s for s, v in series if v >= half))


class Gu2024(Study):
    name = "gu2024"
    title = "Gu et al. 2024: attention sinks are absent at initialization and emerge during training"
    summary = "sink rate at step 0 and after training; when it rises"
    default_steps = 1500
    minutes = 7

    def run(self, ctx: StudyContext) -> None:
        steps = ctx.budget.n_steps(self.default_steps)
        ctx.sweep(
            "train",
            [
                f"seed={','.join(map(str, ctx.budget.seed_list()))}",
                f"trainer.max_steps={steps}",
                f"analysis.every_n_steps={ctx.budget.interval(steps, ANALYSES)}",
                "analysis.at_start=true",
            ],
        )
        self.plot(ctx)

    def plot(self, ctx: StudyContext) -> None:
        with figure(ctx.out / "sink_rate.png", (5, 3.2)) as (fig, ax):
            for i, d in enumerate(ctx.stage_runs("train")):
                ax.plot(*zip(*head_metric_mean(d, "sink_rate"), strict=True), marker=".", label=f"seed {i}")
            ax.set(xlabel="step", ylabel="sink rate (mean over heads)", ylim=(0, 1.02))
            ax.legend(fontsize=8)

    def notes(self, ctx: StudyContext) -> list[str]:
        return [
            "Gu et al. measure on 64-token sequences. Our grammar sentences are short: uniform causal attention "
            "puts a mean of H_T / T on the first token (the harmonic number over the length), which is above "
            "the 0.3 bar for T <= 9, so short sentences count as sinks even at initialization."
        ]

    def _eps(self, ctx: StudyContext) -> str:
        """The runs' sink bar, ``analysis.thresholds.sink`` of their own configs (Gu et al.: 0.3)."""
        return ", ".join(f"{v:g}" for v in sorted({role_bar(d, "sink") for d in ctx.stage_runs("train")}))

    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        runs = ctx.stage_runs("train")
        series = [head_metric_mean(d, "sink_rate") for d in runs]
        init = Measure.of(s[0][1] if s and s[0][0] == 0 else math.nan for s in series)
        final = Measure.of(s[-1][1] if s else math.nan for s in series)
        when = Measure.of(onset(s) for s in series)
        rel = [ctx.rel(d) for d in runs]
        eps = self._eps(ctx)
        no_sink = at_most(init, NEAR_ZERO)
        rises = greater(final, init)
        return [
            Claim(
                claim="At initialization there is no attention sink",
                source="Gu et al. 2024, Sec. 3 (sink rate of randomly initialized models)",
                metric=f"sink rate (share of heads x sequences attending > {eps} to the first token) at step 0",
                ours=init,
                criterion=f"every seed <= {NEAR_ZERO:g}",
                **decided(no_sink),
                paper="no sink in the initialized model",
                runs=rel,
                plot="sink_rate.png",
            ),
            Claim(
                claim="Attention sinks emerge during training",
                source="Gu et al. 2024, Sec. 4 (emergence with optimization and data)",
                metric=f"sink rate at the end of training against step 0; the step it reaches half its final "
                f"value: {when}",
                ours={"final": final, "step 0": init, "onset step": when},
                criterion="every seed's final sink rate above every seed's step-0 rate",
                **decided(rises),
                paper="the sink rate rises from 0 after some steps, to a large share of heads",
                runs=rel,
                plot="sink_rate.png",
            ),
        ]


STUDY = Gu2024()
