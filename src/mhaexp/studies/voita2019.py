"""Voita et al. 2019, "Analyzing Multi-Head Self-Attention: Specialized Heads Do the Heavy Lifting, the
Rest Can Be Pruned" (ACL).

A 6-layer encoder of 8 heads a layer (the paper's Transformer-base encoder: the 48 heads its figures count)
trained with masked LM on the grammar with a Zipfian lexicon (``data.lexicon=zipf``: a
long tail of rare nouns and adjectives, so that a sentence's rarest word is much rarer than the rest, as in
the paper's WMT and OpenSubtitles text), then fine-tuned with L0 head gates (``pruning=l0``, Sec. 6.1) at
several penalties lambda:

1. the encoder has positional, syntactic and rare-word heads (Sec. 5.1-5.3);
2. specialised heads are the last to be pruned (Sec. 6.2.2, Fig. 8): at every lambda that closes as many
   heads as the paper's runs did (10 to 40 of 48 kept), the heads L0 keeps are enriched in role-holding
   heads (Fisher's exact test in every seed), and where at most 2/3 of the heads closed (the paper's 17 of 48
   kept) every role family of the unpruned encoder still has a kept head;
3. quality holds while most heads close (Sec. 6.2.1, Fig. 7): some lambda closes at least 2/3 of the heads
   with the val loss at most 5% above the unpruned encoder's.

The roles are the trained encoder's (``analysis/head_roles.csv``); kept and pruned heads come from each
L0 run's ``pruning.json``. The gates train at ``pruning.gate_lr`` so that they can close within the
fine-tune (from the open start, log_alpha 2.5, a gate closes below -2.4).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from scipy import stats

from mhaexp.rundir import CHECKPOINT_DIR, LAST_CHECKPOINT, PRUNING_FILE
from mhaexp.studies.base import Study
from mhaexp.studies.readers import final_roles, head_metric_max, summary
from mhaexp.studies.runner import Budget, StudyContext, run_config
from mhaexp.studies.verdict import (
    Claim,
    Measure,
    all_hold,
    at_least,
    decided,
    every,
    significant_in_every_seed,
)

# The Zipfian lexicon gives the rare-word head something to find: with the default one the rarest word of
# the grammar occurs 164 times in 264k tokens, and a sentence's rarest word is typically only 1.4x rarer
# than its next rarest (3.0x with this lexicon; its rarest words occur once).
# 6 layers x 8 heads: the paper's encoder (Transformer-base), whose 48 heads Fig. 7 and 8 count; this study
# trained 4 layers (32 heads) until 2026-12-06.
ENCODER = ["model=encoder", "model.n_layers=6", "data.lexicon=zipf"]
# Chosen for the share of heads they close, not for a bar: Fig. 8's columns keep 30, 17, 14 and 11 of 48
# heads, and Sec. 6.2.2 reads its claim at 17 kept (0.65 closed); Fig. 7's WMT run keeps 10 (0.79 closed).
# With the default lexicon lambda 0.01 closed 2-3 of 32 heads (so a pruned share could only be 0, 1/3 or
# 1/2), 0.03 closed 0.56-0.66 and 0.1 closed 0.75: one lambda near each of the paper's two points.
LAMBDAS = (0.03, 0.1)
GATE_LR = 0.05
FINETUNE_SHARE = 0.2  # L0 fine-tune steps, as a share of the training steps
FAMILIES = ("positional", "syntactic", "rare_word")  # Voita et al.'s three specialised kinds
# The paper's pruned encoders keep 10 to 40 of 48 heads (Fig. 7 and 8): the closed shares a lambda must
# reach for its run to test the paper's claim. A run outside it is reported, not counted.
CLOSED_RANGE = (8 / 48, 38 / 48)
ALL_FUNCTIONS_CLOSED = 31 / 48  # Sec. 6.2.2: "the model with 17 heads retains heads with all the functions"
MOST_CLOSED = 2 / 3  # claim 3: "most heads" = the 2/3 Sec. 6.2.2 prunes with every function kept
LOSS_SLACK = 0.05  # "quality holds": val loss at most 5% above the unpruned encoder's (ours, not the paper's)
ALPHA = 0.05
RARE_WORDS_PAPER = 0.66  # Sec. 5.3: the head points to the rarest token in 66% of cases (OpenSubtitles)


def family(role: str) -> str:
    return role.split(":")[0]


def specialised(roles: set[str]) -> bool:
    return any(family(r) in FAMILIES for r in roles)


def specialised_share(roles: dict[tuple[int, int], set[str]], heads: list[tuple[int, int]]) -> float:
    """Share of ``heads`` holding a positional, syntactic or rare-word role (NaN for no heads)."""
    return sum(specialised(roles.get(h, set())) for h in heads) / len(heads) if heads else float("nan")


def families_of(roles: dict[tuple[int, int], set[str]], heads: list[tuple[int, int]]) -> set[str]:
    return {family(r) for h in heads for r in roles.get(h, set())} & set(FAMILIES)


def pruned_heads(run_dir: Path) -> set[tuple[int, int]]:
    text = json.loads((Path(run_dir) / PRUNING_FILE).read_text()).get("pruned", "")
    return {(int(h[1 : h.index("H")]), int(h[h.index("H") + 1 :])) for h in text.split(",") if h}


def enrichment_p(roles: dict[tuple[int, int], set[str]], kept: list, gone: list) -> tuple[float, float]:
    """One-sided Fisher exact p that role-holding heads are kept more often than the others, and the smallest
    p this table's margins allow (every role-holder kept): at or above alpha, the run cannot decide."""
    held_kept = sum(specialised(roles.get(h, set())) for h in kept)
    held = held_kept + sum(specialised(roles.get(h, set())) for h in gone)
    best = min(len(kept), held)
    table = [[held_kept, len(kept) - held_kept], [held - held_kept, len(gone) - held + held_kept]]
    ideal = [[best, len(kept) - best], [held - best, len(gone) - held + best]]
    return tuple(float(stats.fisher_exact(t, alternative="greater").pvalue) for t in (table, ideal))


def in_range(closed: float) -> bool:
    return CLOSED_RANGE[0] <= closed <= CLOSED_RANGE[1]


class Voita2019(Study):
    name = "voita2019"
    title = "Voita et al. 2019: specialized heads, and L0 pruning keeps them"
    summary = "positional/syntactic/rare-word heads in an encoder on Zipfian data; L0 gates at several lambdas"
    # 1000 steps, then 2 x 200 of L0 tuning per seed (one round of two jobs). The Zipfian lexicon's 2.3k-word
    # vocabulary makes a step about 40% slower than the default lexicon's 189 words (the output layer). With
    # the default lexicon, 1000 steps and 3 x 250 L0 steps (two rounds a seed) took 17 min idle; this budget
    # is about 15 min by step times (+27% CPU a step); the 2026-12-06 run used 930 CPU-s in all.
    # --steps 2000 is the larger budget.
    default_steps = 1000
    minutes = 8

    def preflight_overrides(self, budget: Budget) -> list[str]:
        return list(ENCODER)

    def run(self, ctx: StudyContext) -> None:
        steps = ctx.budget.n_steps(self.default_steps)
        seeds = ctx.budget.seed_list()
        trained = ctx.sweep("train", [*ENCODER, f"seed={','.join(map(str, seeds))}", f"trainer.max_steps={steps}"])
        tune = ctx.budget.scaled(self.default_steps, FINETUNE_SHARE)
        for seed, run in zip(seeds, trained, strict=True):
            ctx.sweep(
                f"l0_seed{seed}",
                [
                    *ENCODER,
                    f"init_from={run / CHECKPOINT_DIR / LAST_CHECKPOINT}",
                    f"seed={seed}",
                    "pruning=l0",
                    f"pruning.l0_lambda={','.join(map(str, LAMBDAS))}",
                    f"pruning.gate_lr={GATE_LR}",
                    f"trainer.max_steps={tune}",
                    f"trainer.val_check_interval={tune}",
                    "analysis=off",
                ],
            )

    def l0_runs(self, ctx: StudyContext) -> dict[float, list[tuple[int, Path]]]:
        """``{lambda: [(seed, run dir)]}``."""
        out: dict[float, list[tuple[int, Path]]] = {}
        for stage in sorted(p.name for p in ctx.runs_dir.glob("l0_seed*")):
            for d in ctx.stage_runs(stage):
                cfg = run_config(d)
                out.setdefault(float(cfg.pruning.l0_lambda), []).append((int(cfg.seed), d))
        return out

    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        trained = {int(run_config(d).seed): d for d in ctx.stage_runs("train")}
        roles = {s: final_roles(d) for s, d in trained.items()}
        counts = {
            fam: Measure.of(sum(any(family(r) == fam for r in rs) for rs in roles[s].values()) for s in roles)
            for fam in FAMILIES
        }
        best_rare = Measure.of(_last(head_metric_max(d, "rare_word")) for d in trained.values())
        have = every([at_least(m, 1) for m in counts.values()])
        base_loss = {s: summary(d).get("val/loss") for s, d in trained.items()}
        keep_parts, keep_ours, quality_parts, quality_ours, outside = [], {}, [], {}, []
        for lam, runs in sorted(self.l0_runs(ctx).items()):
            kept_share, pruned_share, closed, rise, p_values, best_p, retained = [], [], [], [], [], [], []
            for seed, d in runs:
                heads = roles[seed]
                gone = pruned_heads(d)
                kept = [h for h in heads if h not in gone]  # every head the trained model has a row for
                pruned = sorted(gone)
                kept_share.append(specialised_share(heads, kept))
                pruned_share.append(specialised_share(heads, pruned))
                closed.append(len(gone) / max(1, len(heads)))
                p_value, ideal = enrichment_p(heads, kept, pruned)
                p_values.append(p_value)
                best_p.append(ideal)
                had = families_of(heads, list(heads))
                retained.append(len(families_of(heads, kept) & had) / len(had) if had else math.nan)
                loss = summary(d).get("val/loss")
                rise.append(loss / base_loss[seed] - 1 if loss is not None and base_loss[seed] else float("nan"))
            k, p, c = Measure.of(kept_share), Measure.of(pruned_share), Measure.of(closed)
            tag = f"lambda {lam:g}"
            keep_ours |= {f"{tag}: closed share": c, f"{tag}: kept": k, f"{tag}: pruned": p}
            keep_ours[f"{tag}: Fisher p"] = Measure.of(p_values)
            if not c.n or not all(in_range(v) for v in c.finite):
                outside.append(f"{tag} closed {', '.join(f'{v:.2f}' for v in c.finite)}")
            else:
                effect = Measure.of(a - b for a, b in zip(k.values, p.values, strict=True))
                enriched = significant_in_every_seed(Measure.of(p_values), effect, ALPHA)
                if any(b >= ALPHA for b in best_p):  # too few role-holders, or too many kept, for any outcome
                    powerless = ", ".join(f"{b:.3g}" for b in best_p)
                    enriched = (None, f"keeping every role-holder would give p = {powerless}, not < {ALPHA:g}")
                keep_parts.append((enriched[0], f"{tag}: {enriched[1]}"))
                if all(v <= ALL_FUNCTIONS_CLOSED for v in c.finite):
                    keep_ours[f"{tag}: role families kept"] = r = Measure.of(retained)
                    kept_all = at_least(r, 1.0)
                    keep_parts.insert(0, (kept_all[0], f"{tag}: every role family kept: {kept_all[1] or 'yes'}"))
            r = Measure.of(rise)
            quality_ours[f"{tag}: closed share"] = c
            quality_ours[f"{tag}: val loss rise"] = r
            quality_parts.append(
                all_hold(
                    [
                        at_least(c, MOST_CLOSED),
                        (at_least(Measure.of(-v for v in r.values), -LOSS_SLACK)[0], f"{tag}: loss rise {r}"),
                    ]
                )
            )
        bare = [s for s, rs in roles.items() if not any(map(specialised, rs.values()))]
        if bare:
            keeps = (None, f"seed {', '.join(map(str, bare))}: the encoder has no role-holding head for L0 to keep")
        elif keep_parts:
            keeps = every(keep_parts)
            keeps = (
                keeps[0],
                "; ".join(filter(None, [keeps[1], *(f"not in the paper's range: {o}" for o in outside)])),
            )
        else:
            span = f"{CLOSED_RANGE[0]:.2f} to {CLOSED_RANGE[1]:.2f}"
            keeps = (None, f"no lambda closed {span} of the heads in every seed ({'; '.join(outside)})")
        # Quality holds if some lambda closed most heads within the loss slack.
        if any(v is True for v, _ in quality_parts):
            quality = (True, "")
        elif quality_parts and all(v is False for v, _ in quality_parts):
            quality = (False, "; ".join(w for _, w in quality_parts if w))
        else:
            quality = (None, "; ".join(w for _, w in quality_parts if w) or "no L0 run")
        l0 = [ctx.rel(d) for runs in self.l0_runs(ctx).values() for _, d in runs]
        return [
            Claim(
                claim="The encoder has positional, syntactic and rare-word heads",
                source="Voita et al. 2019, Sec. 5 (5.1 positional, 5.2 syntactic, 5.3 rare words)",
                metric="heads per role family at the end of training; rare words: the best head's share of queries "
                "whose most-attended key is the sentence's least frequent token (training-set frequency)",
                ours={**counts, "best rare-word score": best_rare},
                criterion="every seed has at least one head of each family",
                criterion_source="Sec. 5.1 (one relative position takes the maximum weight >= 90% of the time), "
                "Sec. 5.2 (accuracy >= 10 points over the most frequent relative position), Sec. 5.3 (the head "
                "points to the rarest token in 66% of cases; our bar: a majority of queries)",
                **decided(have),
                paper="all three kinds in every model (EN-RU, EN-DE, EN-FR on WMT; EN-RU on OpenSubtitles); the "
                f"rare-words head points to the rarest token in {RARE_WORDS_PAPER:.0%} of cases",
                runs=[ctx.rel(d) for d in trained.values()],
            ),
            Claim(
                claim="Heads with specific functions are the last to be pruned: with 2/3 of the heads pruned, the "
                "model keeps heads with all the functions",
                source="Voita et al. 2019, Sec. 6.2.2 and Fig. 8",
                metric="per lambda: share of heads closed; share of role-holding heads (positional, syntactic, "
                "rare-word, roles of the unpruned encoder) among the heads L0 keeps and among those it prunes, "
                "Fisher's exact test (one-sided) per seed; share of the role families kept",
                ours=keep_ours,
                criterion=f"at every lambda whose closed share lies in [{CLOSED_RANGE[0]:.2f}, {CLOSED_RANGE[1]:.2f}] "
                f"in every seed: role-holders enriched among the kept heads, p < {ALPHA:g} in every seed; where "
                f"at most {ALL_FUNCTIONS_CLOSED:.2f} closed, every role family of the encoder keeps a head",
                criterion_source="Sec. 6.2.2 and Fig. 8 (17 of 48 heads kept retain every function; the columns "
                "keep 30 to 11 heads), Fig. 7 (runs keep 10 to 40 of 48 encoder heads)",
                **decided(keeps),
                paper="the model with 17 of 48 heads retains heads with all the functions of Sec. 5; the functions "
                "are the most important",
                runs=l0,
            ),
            Claim(
                claim="Quality holds while most heads are pruned",
                source="Voita et al. 2019, Sec. 6.2.1 and Fig. 7 (WMT: 10 of 48 encoder heads within 0.15 BLEU; "
                "OpenSubtitles: 4 of 48 for -0.25 BLEU)",
                metric="per lambda: share of heads closed, and val-loss rise over the unpruned encoder",
                ours=quality_ours,
                criterion=f"some lambda closes >= {MOST_CLOSED:.2f} of the heads in every seed with a val-loss rise "
                f"<= {LOSS_SLACK:.0%} in every seed",
                criterion_source="Sec. 6.2.2 (2/3 of the heads pruned, every function kept) and Fig. 7 (BLEU on a "
                "plateau down to ~17 of 48 heads); the 5% loss slack is ours (BLEU has no val-loss equivalent)",
                **decided(quality),
                paper="38 of 48 encoder heads pruned for -0.15 BLEU (29.6)",
                runs=l0,
            ),
        ]

    def notes(self, ctx: StudyContext) -> list[str]:
        return [
            "Data: data.lexicon=zipf (1000 nouns, 250 adjectives, Zipf exponent 1; data/lexicon.py). With the "
            "default lexicon the rarest word occurred 164 times in 264k tokens and a sentence's rarest word was "
            "typically only 1.4x rarer than the next: no head had a rare word to find (rare-word heads 0, 0 at "
            "1000 steps, 2026-12-02).",
            "Rare-word metric (heads.patterns.rare_token_score): the share of queries whose most-attended key is "
            "the sentence's least frequent token by training-set frequency, as Sec. 5.3 defines the head, on the "
            "sentences whose rarest token lies outside the most frequent 500/32000 of the vocabulary (the "
            "paper's 500 of 32k; here 36 of 2323 tokens). Its bar (0.5) is below the paper's 66%. Changed for "
            "issue 29 (2026-12-06): every sentence was scored before (best rare-word score 0.21, 0.24 on this "
            "design, seeds 0, 1); the filter keeps 510 of the 512 probe sentences of this data.",
            "Lambda grid (0.03, 0.1; was 0.01, 0.03, 0.1): lambda 0.01 closed 2-3 of 32 heads, so its "
            "pruned share could only be 0, 1/3 or 1/2. Claim 2 is now tested only at lambdas that close as many "
            "heads as the paper's runs (10 to 40 of 48 kept), per seed with Fisher's exact test (was: kept share "
            "above pruned share across the seed range); claim 3's bar is 2/3 of the heads closed (was 1/4).",
            "Changed for issue 29 (2026-12-06): the encoder is 6 layers x 8 heads (ENCODER), the paper's 48, "
            "instead of 4 x 8, chosen from the paper before the run. On 4 x 8 (1000 steps, seeds 0, 1): "
            "positional 0, 1, syntactic 2, 6, rare-word 0, 0 heads (best rare-word score 0.25, 0.22: "
            "inconclusive); lambda 0.03 closed 0.25, 0.31 (role share kept 0.08, 0.18 vs pruned 0.0, 0.30, "
            "Fisher p 0.56, 0.89) and lambda 0.1 0.72, 0.75 (p 1.0, 0.22): inconclusive, seed 0 having 2 "
            "role-holding heads; lambda 0.1 closed 0.72, 0.75 at +3.2%, +2.8% val loss (holds).",
        ]


def _last(series: list[tuple[int, float]]) -> float:
    return series[-1][1] if series else math.nan


STUDY = Voita2019()
