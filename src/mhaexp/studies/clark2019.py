"""Clark et al. 2019, "What Does BERT Look At? An Analysis of BERT's Attention" (BlackboxNLP).

A 4-layer bidirectional encoder trained with masked LM on the grammar (gold dependency arcs):

1. broad heads (attention spread over the sentence) and sink heads (attention on the first token) exist
   (Sec. 3, Fig. 1-2);
2. per relation, the best head beats the best fixed-offset baseline (Sec. 4.2, Table 1);
3. heads of the same layer behave alike: the mean JS divergence between heads of one layer is below the
   mean between heads of different layers (Sec. 6, Fig. 6).

Roles come from ``analysis/head_roles.csv``; accuracies, baselines and the JS layer means from
``analysis/head_metrics.csv`` at the last analysis step (the expensive tier runs there).
"""

from __future__ import annotations

from pathlib import Path

from mhaexp.studies.base import Study
from mhaexp.studies.readers import final_roles, head_metric, head_metrics
from mhaexp.studies.runner import Budget, StudyContext
from mhaexp.studies.verdict import Claim, Measure, all_hold, at_least, decided, greater

ENCODER = ["model=encoder", "model.n_layers=4"]


def layer_means(run_dir: Path, metric: str) -> float:
    """Mean over layers of a per-layer metric (rows with head -1) at its last step."""
    series = head_metric(run_dir, metric)
    if not series:
        return float("nan")
    values = [v for (_, h), v in series[max(series)].items() if h == -1 and v == v]
    return sum(values) / len(values) if values else float("nan")


def relation_margins(run_dir: Path) -> dict[str, float]:
    """Per relation: best head's accuracy minus the best fixed-offset baseline, at the last step."""
    series = head_metrics(run_dir, "syntactic_")
    if not series:
        return {}
    last = max(step for s in series.values() for step in s)
    best: dict[str, float] = {}
    base: dict[str, float] = {}
    for metric, s in series.items():
        name, _, rel = metric.partition("/")
        values = [v for v in s.get(last, {}).values() if v == v]
        if name == "syntactic_accuracy" and values:
            best[rel] = max(values)
        elif name == "syntactic_offset_baseline" and values:
            base[rel] = values[0]
    return {rel: best[rel] - base[rel] for rel in sorted(set(best) & set(base))}


class Clark2019(Study):
    name = "clark2019"
    title = "Clark et al. 2019: broad and sink heads, syntactic heads, heads of a layer alike"
    summary = "encoder heads: broad/sink roles, best head vs offset baseline per relation, JS within vs across layers"
    default_steps = 3000
    minutes = 14

    def preflight_overrides(self, budget: Budget) -> list[str]:
        return list(ENCODER)

    def run(self, ctx: StudyContext) -> None:
        steps = ctx.budget.n_steps(self.default_steps)
        ctx.sweep(
            "train", [*ENCODER, f"seed={','.join(map(str, ctx.budget.seed_list()))}", f"trainer.max_steps={steps}"]
        )

    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        runs = ctx.stage_runs("train")
        roles = [final_roles(d) for d in runs]
        count = lambda role: Measure.of(sum(role in r for r in rs.values()) for rs in roles)  # noqa: E731
        broad, sink = count("broad"), count("sink")
        exist = all_hold([at_least(broad, 1), at_least(sink, 1)])
        margins = [relation_margins(d) for d in runs]
        relations = sorted(set.intersection(*(set(m) for m in margins))) if margins else []
        per_rel = {rel: Measure.of(m[rel] for m in margins) for rel in relations}
        beats = {rel: at_least(m, 1e-9) for rel, m in per_rel.items()}
        wins = sum(v is True for v, _ in beats.values())
        losing = [rel for rel, (v, _) in beats.items() if v is not True]
        if not relations:
            syntax = (None, "no relation was scored")
        elif not losing:
            syntax = (True, "")
        else:
            worst = next((v for v, _ in beats.values() if v is False), None)
            syntax = (
                False if worst is False else None,
                f"the best head does not beat the offset baseline in every seed for {', '.join(losing)}",
            )
        within = Measure.of(layer_means(d, "js_within") for d in runs)
        across = Measure.of(layer_means(d, "js_across") for d in runs)
        alike = greater(across, within)
        rel = [ctx.rel(d) for d in runs]
        return [
            Claim(
                claim="Broad heads and sink heads exist",
                source="Clark et al. 2019, Sec. 3 (attention to [CLS]/[SEP], broad attention)",
                metric="heads with the broad role, and with the sink role, at the end of training",
                ours={"broad": broad, "sink": sink},
                criterion="every seed has at least one of each",
                **decided(exist),
                paper="many heads attend broadly; many put most attention on [SEP]/[CLS]",
                runs=rel,
            ),
            Claim(
                claim="Per relation, the best head beats the best fixed-offset baseline",
                source="Clark et al. 2019, Sec. 4.2 and Table 1",
                metric=f"best head's accuracy minus the offset baseline, per relation ({wins} of {len(relations)} "
                "relations beaten in every seed)",
                ours=per_rel,
                criterion="every relation, every seed: margin > 0",
                **decided(syntax),
                paper="single heads beat the baseline on most relations (e.g. dobj 86.8 vs 40.0)",
                runs=rel,
            ),
            Claim(
                claim="Heads of the same layer behave alike",
                source="Clark et al. 2019, Sec. 6 and Fig. 6 (heads cluster by layer)",
                metric="mean JS divergence between heads of one layer, and between heads of different layers",
                ours={"within a layer": within, "across layers": across},
                criterion="every seed's across-layer mean above every seed's within-layer mean",
                **decided(alike),
                paper="heads within a layer are close in the embedding of heads",
                runs=rel,
            ),
        ]


STUDY = Clark2019()
