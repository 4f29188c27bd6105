"""Olsson et al. 2022, "In-context Learning and Induction Heads" (Transformer Circuits Thread).

On ``experiment=induction`` (attention-only models on BOS + x + x):

1. a 2-layer model forms induction heads (prefix matching >= 0.5) and a 1-layer one does not (Sec. 2);
2. their formation is a phase change: the best head's prefix matching climbs within a short window;
3. in-context learning appears in that same window (Argument 1): the loss on the repeat minus the loss on
   the first copy (``val/icl_gap``, :meth:`mhaexp.training.module.LMModule.validation_step`) falls there.

The window is where the best head's prefix matching goes from 10% to 90% of its climb (start to peak).
Its share of training means something only when training went on past it (Olsson et al. train far past the
phase change, Argument 1): a climb still running near the end of the budget spans whatever share the budget
leaves it. So the window must end before ``SATURATED`` of training (a precondition: otherwise the claim is
inconclusive, not false), and the default budget trains past it.
"""

from __future__ import annotations

import math
from pathlib import Path

from mhaexp.studies.base import Study
from mhaexp.studies.readers import head_metric_max, rise_window, role_bar, scalar
from mhaexp.studies.report import figure
from mhaexp.studies.runner import Budget, StudyContext, run_config
from mhaexp.studies.verdict import Claim, Measure, all_hold, at_least, at_most, decided

SHORT_WINDOW = 0.25  # the climb spans at most this share of training
SATURATED = 0.6  # precondition: the climb ends before this share of training (the run trained past it)
IN_WINDOW = 0.5  # at least this share of the ICL gap's fall happens around the window
ANALYSES = 40  # analysis and validation points per run: the resolution of the window


def icl_fall_in_window(gap: list[tuple[int, float]], window: tuple[int, int]) -> float:
    """Share of the in-context gap's total fall (first value to its minimum) between the last validation
    before the window and the first at or after its end."""
    if len(gap) < 2:
        return math.nan
    total = gap[0][1] - min(v for _, v in gap)
    if total <= 0:
        return 0.0
    before = [v for s, v in gap if s < window[0]] or [gap[0][1]]
    after = [v for s, v in gap if s >= window[1]] or [gap[-1][1]]
    return (before[-1] - after[0]) / total


class Olsson2022(Study):
    name = "olsson2022"
    title = "Olsson et al. 2022: induction heads form in a phase change, with in-context learning"
    summary = "induction heads in 2 layers, not 1; the phase change and the in-context loss drop"
    # At 1500 steps the climb began at 43% of training and ended near its end (2026-12-02): 4000 steps put
    # its end near 35%, well before SATURATED.
    default_steps = 4000
    minutes = 6

    def preflight_overrides(self, budget: Budget) -> list[str]:
        return ["experiment=induction"]

    def run(self, ctx: StudyContext) -> None:
        steps = ctx.budget.n_steps(self.default_steps)
        every = ctx.budget.interval(steps, ANALYSES)
        ctx.sweep(
            "train",
            [
                "experiment=induction",
                "model.n_layers=1,2",
                f"seed={','.join(map(str, ctx.budget.seed_list()))}",
                f"trainer.max_steps={steps}",
                f"trainer.val_check_interval={every}",
                f"analysis.every_n_steps={every}",
            ],
        )
        self.plot(ctx)

    def _by_layers(self, ctx: StudyContext) -> dict[int, list[Path]]:
        out: dict[int, list[Path]] = {}
        for d in ctx.stage_runs("train"):
            out.setdefault(int(run_config(d).model.n_layers), []).append(d)
        return out

    def _bars(self, ctx: StudyContext) -> list[float]:
        """The induction bars (``analysis.thresholds.induction``, Olsson et al.: 0.5) of the study's runs."""
        return sorted({role_bar(d, "induction") for d in ctx.stage_runs("train")})

    def plot(self, ctx: StudyContext) -> None:
        with figure(ctx.out / "phase_change.png", (9, 3.2), 2) as (fig, (a1, a2)):
            for n_layers, runs in sorted(self._by_layers(ctx).items()):
                for i, d in enumerate(runs):
                    pm = head_metric_max(d, "prefix_matching")
                    a1.plot(*zip(*pm, strict=True), label=f"{n_layers} layer(s), seed {i}")
                    gap = scalar(d, "val/icl_gap")
                    if gap:
                        a2.plot(*zip(*gap, strict=True), label=f"{n_layers} layer(s), seed {i}")
            for bar in self._bars(ctx):
                a1.axhline(bar, color="grey", lw=0.8, ls="--")
            a1.set(xlabel="step", ylabel="best head's prefix matching", ylim=(0, 1.05))
            a2.set(xlabel="step", ylabel="loss(repeat) - loss(first copy)")
            a1.legend(fontsize=7)

    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        by = self._by_layers(ctx)
        one, two = by.get(1, []), by.get(2, [])
        final = lambda runs: Measure.of(head_metric_max(d, "prefix_matching")[-1][1] for d in runs)  # noqa: E731
        pm1, pm2 = final(one), final(two)
        steps = ctx.budget.n_steps(self.default_steps)
        windows = [rise_window(head_metric_max(d, "prefix_matching")) for d in two]
        width = Measure.of((w[1] - w[0]) / steps if w else math.nan for w in windows)
        end = Measure.of(w[1] / steps if w else math.nan for w in windows)
        # Lightning logs a validation at step n - 1 after n optimizer steps; the analysis at step n sees the
        # same model. Put both on the analysis clock, so "before the window" means the same for both.
        gaps = [[(s + 1, v) for s, v in scalar(d, "val/icl_gap")] for d in two]
        fall = Measure.of(icl_fall_in_window(g, w) if w else math.nan for g, w in zip(gaps, windows, strict=True))
        # The runs' own induction bars (one, unless runs were trained with different ones: then the
        # strictest of them for "formed" and the most lenient for "did not form").
        bars = self._bars(ctx) or [math.nan]
        bar, lenient = max(bars), min(bars)
        formed = at_least(pm2, bar)
        precondition = formed if formed[0] else (None, f"no induction head formed in the 2-layer model ({pm2})")
        ended = at_most(end, SATURATED)
        saturated = (
            ended
            if ended[0]
            else (
                None,
                f"the climb had not ended before {SATURATED:g} of training in every seed (ends at {end}): "
                "train longer (--steps) to measure its width",
            )
        )
        rel = [ctx.rel(d) for d in [*one, *two]]
        window_text = ", ".join(f"{w[0]}-{w[1]}" if w else "none" for w in windows)
        return [
            Claim(
                claim="A 2-layer attention-only model forms induction heads; a 1-layer one does not",
                source="Olsson et al. 2022, Sec. 2 and Argument 1 (induction heads need two layers)",
                metric="best head's prefix-matching score at the end of training",
                ours={"2 layers": pm2, "1 layer": pm1},
                criterion=f"every 2-layer seed >= {bar:g} and every 1-layer seed <= {lenient:g} "
                "(analysis.thresholds.induction of the runs)",
                criterion_source="Sec. 2 (definitions: prefix matching score) and Argument 1 (small attention-only "
                "models: induction heads form with 2+ layers, not with 1); the 0.5 bar is the project's "
                "analysis.thresholds.induction, the paper gives no number",
                **decided(all_hold([formed, at_most(pm1, lenient)])),
                paper="induction heads (prefix matching > 0.5) only in models of 2+ layers",
                runs=rel,
                plot="phase_change.png",
            ),
            Claim(
                claim="Induction heads form in a phase change: within a short window of training",
                source="Olsson et al. 2022, Argument 1 (the phase change)",
                metric="steps for the best head's prefix matching to climb from 10% to 90% of its rise, "
                f"as a share of training (windows: {window_text})",
                ours={"window": width, "window end": end},
                criterion=f"every 2-layer seed's window <= {SHORT_WINDOW:g} of training; precondition: every "
                f"window ends before {SATURATED:g} of training (else inconclusive)",
                criterion_source="Argument 1 (the phase change): a narrow window early in training, a bump in "
                "the loss curve, after which the models train on; the 25% bar and the 60% precondition are "
                "the project's reading of that window, the paper gives no number",
                **decided(all_hold([precondition, saturated, at_most(width, SHORT_WINDOW)])),
                paper="a sharp bump early in training, a few % of it",
                runs=[ctx.rel(d) for d in two],
                plot="phase_change.png",
            ),
            Claim(
                claim="In-context learning appears in the same window: the repeat's loss drops below the first copy's",
                source="Olsson et al. 2022, Argument 1 (in-context learning score, co-occurrence)",
                metric="share of the fall of val/icl_gap (loss on the repeat minus loss on the first copy) between "
                "the last validation before the window and the first after it",
                ours=fall,
                criterion=f"every 2-layer seed >= {IN_WINDOW:g}",
                criterion_source="Argument 1: the in-context learning score (loss late in the context minus "
                "early) improves abruptly in the same window as induction heads form; 'most of the fall' (>= "
                "half) is the project's reading",
                **decided(all_hold([precondition, at_least(fall, IN_WINDOW)])),
                paper="the in-context learning score improves abruptly in the same window",
                runs=[ctx.rel(d) for d in two],
                plot="phase_change.png",
            ),
        ]


STUDY = Olsson2022()
