"""The seed's table "What Different Heads Learn": each of its five rows found by some head.

The default causal LM and a bidirectional encoder are trained on the grammar, per seed; a row is
reproduced in a seed when the best head across the two models holds one of the row's roles
(:data:`mhaexp.analysis.seed_roles.SEED_ROWS`, which clear the roles' bars over the baselines).
"""

from __future__ import annotations

from mhaexp.analysis.registry import role_interval
from mhaexp.analysis.seed_roles import SEED_ROWS, fill, read_roles
from mhaexp.studies.base import Study
from mhaexp.studies.runner import Budget, StudyContext, run_config
from mhaexp.studies.verdict import Claim, Measure, at_least, decided

SEED_DOCUMENT = "the user's seed text (shared/seed/multi-head-attention.txt)"
# Probe sentences of the end-of-run analysis. A row's bar (a margin of 0.10 over the baselines) is cleared
# at score - 2 SE, so the SE must be well under 0.05 for a margin near the bar to decide. The rarest
# relation a row reads, amod:pred, has 329 arcs in the default 512 sentences (SE 0.019 at 0.78); 8x the
# sentences give ~2600 arcs (SE ~0.007). Chosen for power from the SE, not from the verdict.
PROBE_SENTENCES = 4096


class SeedTable(Study):
    name = "seed_table"
    title = 'The seed\'s "What Different Heads Learn": five kinds of heads, found in our models'
    summary = "the five rows of the seed's table, by the best head across a causal LM and an encoder"
    default_steps = 1500
    minutes = 9

    def preflight_overrides(self, budget: Budget) -> list[str]:
        # A smoke run keeps the runner's small probe (runner.SMOKE_DATA).
        return [] if budget.smoke else [f"analysis.probe_sequences={PROBE_SENTENCES}"]

    def run(self, ctx: StudyContext) -> None:
        steps = ctx.budget.n_steps(self.default_steps)
        ctx.sweep(
            "train",
            [
                "model=small,encoder",
                f"seed={','.join(map(str, ctx.budget.seed_list()))}",
                f"trainer.max_steps={steps}",
                *self.preflight_overrides(ctx.budget),
            ],
        )

    def notes(self, ctx: StudyContext) -> list[str]:
        return [
            f"Changed for issue 29 (2026-12-06): the roles are read on {PROBE_SENTENCES} probe sentences (was "
            "512), for power; the bars and baselines are unchanged. On 512 (1500 steps, seeds 0, 1) the "
            "noun-adjective row did not hold: amod:pred's best head 0.775 +- 0.019 and 0.789 +- 0.018 (329 "
            "arcs) against the offset baseline 0.655, a margin at score - 2 SE of 0.083 and 0.097, under 0.10.",
        ]

    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        by_seed: dict[int, list] = {}
        for d in ctx.stage_runs("train"):
            cfg = run_config(d)
            kind = "causal" if cfg.model.causal else "encoder"
            by_seed.setdefault(int(cfg.seed), []).append((f"{kind}:{ctx.rel(d)}", read_roles(d)))
        filled = {s: dict((row.label, found) for row, found in fill(runs)) for s, runs in sorted(by_seed.items())}
        runs = [ctx.rel(d) for d in ctx.stage_runs("train")]
        claims = []
        for row in SEED_ROWS:
            found = [filled[s][row.label] for s in filled]
            hit = Measure.of(1.0 if f is not None else 0.0 for f in found)
            verdict = at_least(hit, 1.0)
            where = "; ".join(
                f"seed {s}: "
                + (
                    f"{f.run.split(':')[0]} L{f.layer}H{f.head} {role_interval(f.role, f.score, f.se, f.margin)}"
                    if f
                    else "not found"
                )
                for s, f in zip(filled, found, strict=True)
            )
            claims.append(
                Claim(
                    claim=f'A head learns the seed\'s "{row.label}" pattern',
                    source=f'{SEED_DOCUMENT}, "What Different Heads Learn"',
                    metric=f"a head holding one of {', '.join(sorted(row.roles))} (best head: {where})",
                    ours={
                        "found (1) per seed": hit,
                        "margin": Measure.of(f.margin if f else float("nan") for f in found),
                    },
                    criterion="found in every seed, by the causal LM or the encoder: a head holds one of the row's "
                    "roles, its bar cleared at score - 2 SE (syntactic and coreference bars are margins over the same "
                    "run's fixed-offset and position baselines, on the same probe: paired)",
                    criterion_source=f'{SEED_DOCUMENT}, "What Different Heads Learn": {row.example}; "Different '
                    'heads specialize automatically during training!" (so: in every seed)',
                    **decided(verdict),
                    paper="named as one of the heads a trained model has",
                    runs=runs,
                )
            )
        return claims


STUDY = SeedTable()
