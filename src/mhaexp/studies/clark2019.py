"""Clark et al. 2019, "What Does BERT Look At? An Analysis of BERT's Attention" (BlackboxNLP).

A 4-layer bidirectional encoder trained with masked LM on the grammar in BERT's input format,
``[CLS] A [SEP] B [SEP]`` (``data.pair_sentences``: BOS A EOS B EOS, gold arcs within each sentence), or,
with ``--model <BERT>``, a pretrained model measured as it is:

1. attention concentrates on the delimiter tokens: some layer puts over half its attention on [SEP]
   (Sec. 3.2, Fig. 2), measured separately for [CLS] (BOS), [SEP] (EOS) and periods/commas per head;
2. broad heads exist: attention near uniform (Sec. 3.3, Fig. 4), with the largest normalised entropy beside;
3. certain heads do particular dependency relations well: per relation the best head in either of Clark's
   directions (the dependent's most-attended word; the word attending most to the dependent, the notebook's
   "head<-dep") against the best fixed-offset baseline (Sec. 4.2, Table 1);
   relations the grammar fixes to one offset (baseline >= :data:`FIXED_OFFSET`) cannot be tested;
4. heads of the same layer behave alike: JS divergence between heads of one layer below that between
   heads of different layers, a permutation test over layer labels within each seed (Sec. 6, Fig. 6).

Claims 1, 2 and 4 read the training run's own end-of-run analysis (paired probe sequences, as Clark read
BERT on two-paragraph segments, Sec. 2). Claim 3 reads ``mhaexp-analyze conllu=`` of each final model on the
grammar's sentences written as CoNLL-U (``treebank_relations.csv``: both directions, the offset baseline,
the best head's standard error; each head's prediction is its most-attended word, [CLS]/[SEP] ignored, as
Clark's notebook scores BERT: :data:`CLARK_ARCS`): the same path ``--model`` takes, where every claim reads
that analysis of the imported model through its own tokenizer (``[CLS] sentence [SEP]``).
``--model <src> conllu=<file>`` scores the user's own treebank instead.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import permutation_test

from mhaexp.data.conllu_io import TreebankError, read_treebank, write_conllu
from mhaexp.data.grammar import MAX_SENTENCE_LEN, GrammarSource
from mhaexp.errors import ConfigError
from mhaexp.rundir import ANALYSIS_DIR, CHECKPOINT_DIR, LAST_CHECKPOINT, TREEBANK_RELATIONS_FILE
from mhaexp.studies.base import Study
from mhaexp.studies.readers import final_roles, head_js, head_metric_stats
from mhaexp.studies.runner import EVAL_DIR, MODEL_DIR, Budget, StudyContext
from mhaexp.studies.verdict import (
    Claim,
    Measure,
    at_least,
    decided,
    paired_greater,
    significant_in_every_seed,
    untestable,
)

ENCODER = ["model=encoder", "model.n_layers=4"]
# BERT's input: two sentences a sequence, each as long as the grammar makes them; 32 pairs a batch are the
# 64 sentences a step of the single-sentence format.
BERT_INPUT = ["data.pair_sentences=true", f"data.seq_len={2 * MAX_SENTENCE_LEN + 3}", "data.batch_size=32"]
# Clark et al.'s notebook scores a head's most-attended *word*: "ignore attention to self and [CLS]/[SEP]
# tokens" (Syntax_Analysis.ipynb, attn_head_predictor). Both the grammar models and --model are read so.
CLARK_ARCS = "analysis.arc_keys=words"
CLARK_DIRECTIONS = ("dep2head", "transposed")  # the notebook's "dep->head" and "head<-dep"
TREEBANK_FILE = "grammar.conllu"  # the grammar's sentences with their gold arcs, for mhaexp-analyze conllu=
CORPUS_FILE = "treebank.txt"  # --model: the treebank's text, the data=text an imported tokenizer reads
# Sentences the relations are scored on. A relation counts as beaten at accuracy - 2 SE, so a margin of a
# few points decides only where the SE is well under it: on 512 sentences (the analysis probe's default)
# prep and pobj have 484 arcs each (SE ~0.02). 4096 sentences (46.5k words, ~3900 arcs of each; SE ~0.007)
# is the seed table's probe, raised there for the same reason. Raised from 512 on 2026-12-06 after a
# 512-sentence run left margins of +0.01 to +0.04 within 2 SE; the bar and the rule are unchanged.
TREEBANK_SENTENCES = 4096
SMOKE_TREEBANK_SENTENCES = 64
# A relation whose best fixed-offset baseline reaches this is fixed to one offset by the grammar (acomp,
# amod: 1.000): no head can beat it, and Clark's Table 1 itself holds no such relation.
FIXED_OFFSET = 0.99
SEP_SHARE = 0.5  # "over half of BERT's attention in layers 6-10 focuses on [SEP]" (Sec. 3.2)
PERMUTATIONS = 9999
ALPHA = 0.05


@dataclass(frozen=True)
class RelationScore:
    """One relation in one model: its best head in either direction against that direction's best
    fixed-offset baseline."""

    relation: str
    direction: str
    head: str
    accuracy: float
    se: float
    baseline: float  # the best fixed-offset baseline of the same direction (offsets -k..k)
    fixed: float  # the dep2head one, Clark's (the word at offset k is the head): 1.0 = one offset does it

    @property
    def margin(self) -> float:
        return self.accuracy - self.baseline

    @property
    def testable(self) -> bool:
        return self.fixed < FIXED_OFFSET

    @property
    def beats(self) -> bool:
        """Above the baseline by more than two standard errors of the head's accuracy."""
        return self.accuracy - 2 * (self.se if math.isfinite(self.se) else 0.0) > self.baseline


def relation_scores(table: Path) -> dict[str, RelationScore]:
    """Per relation of ``treebank_relations.csv``: of Clark's two directions (Table 1 takes the best head
    over both), the one whose best head clears the offset baseline by the most. Both predict the dependent's
    head, so both meet the same dep2head baseline: ``dep2head`` (the dependent's most-attended word) and
    ``transposed`` (the word that attends most to the dependent: the notebook's "head<-dep", the map
    transposed). The table's ``head2dep`` rows (Voita et al.'s reading: the governor's most-attended word
    is one of its dependents) are not Clark's and are not read here."""
    rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    with table.open() as f:
        for r in csv.DictReader(f):
            if r["direction"] in CLARK_DIRECTIONS:
                rows[r["relation"]].append(r)
    out = {}
    for rel, rs in rows.items():
        best = max(rs, key=lambda r: float(r["accuracy"]) - float(r["offset_baseline"]))
        clark = next((r for r in rs if r["direction"] == "dep2head"), best)
        out[rel] = RelationScore(
            rel,
            best["direction"],
            f"L{best['layer']}H{best['head']}",
            float(best["accuracy"]),
            float(best["se"] or "nan"),
            float(best["offset_baseline"]),
            float(clark["offset_baseline"]),
        )
    return out


def layer_alike_test(
    heads: Sequence[tuple[int, int]], js: Sequence[Sequence[float]], seed: int = 0
) -> tuple[float, float]:
    """(effect, p): effect = mean JS between heads of different layers minus mean JS between heads of one
    layer (> 0: a layer's heads are alike, Clark Sec. 6), p from ``scipy.stats.permutation_test`` over the
    heads' layer labels (one-sided, :data:`PERMUTATIONS` resamples, seeded: the same numbers every time)."""
    m = np.asarray(js, dtype=float)
    upper = np.triu_indices(len(heads), k=1)
    pair_js = m[upper]

    def effect(labels: np.ndarray) -> float:
        same = labels[upper[0]] == labels[upper[1]]
        return float(pair_js[~same].mean() - pair_js[same].mean())

    layers = np.array([layer for layer, _ in heads])
    if len(set(layers.tolist())) < 2 or len(layers) == len(set(layers.tolist())):
        return math.nan, math.nan  # one layer, or one head a layer: no within/across contrast
    result = permutation_test(
        (layers,),
        effect,
        permutation_type="pairings",
        n_resamples=PERMUTATIONS,
        alternative="greater",
        vectorized=False,
        rng=np.random.default_rng(seed),
    )
    return effect(layers), float(result.pvalue)


def layer_means(run_dir: Path, metric: str) -> list[tuple[int, float, float]]:
    """Per layer: (layer, mean over its heads, the mean of their standard errors). The heads are read on the
    same sequences, so their errors are correlated; the mean of the SEs is the bound for perfect
    correlation (never smaller than the true SE of the layer mean)."""
    by_layer: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for (layer, _), (v, se) in head_metric_stats(run_dir, metric).items():
        if math.isfinite(v):
            by_layer[layer].append((v, se))
    return [
        (layer, sum(v for v, _ in vs) / len(vs), sum(s for _, s in vs) / len(vs))
        for layer, vs in sorted(by_layer.items())
    ]


def best(run_dir: Path, metric: str) -> tuple[float, float, str]:
    """The head with the largest value of ``metric``: (value, se, "L<l>H<h>"); NaN when it was not measured."""
    stats = {k: v for k, v in head_metric_stats(run_dir, metric).items() if math.isfinite(v[0])}
    if not stats:
        return math.nan, math.nan, "-"
    (layer, head), (v, se) = max(stats.items(), key=lambda kv: kv[1][0])
    return v, se, f"L{layer}H{head}"


class Clark2019(Study):
    name = "clark2019"
    title = "Clark et al. 2019: attention to [SEP], broad heads, syntactic heads, heads of a layer alike"
    summary = (
        "encoder on [CLS] A [SEP] B [SEP]: attention on [CLS]/[SEP]/punctuation per head, broad heads, best "
        "head vs offset baseline per relation (both directions), a layer-label permutation test on JS"
    )
    # 4500 since 2026-12-06 (3000 before): val loss still fell at 3000 (1.55; 1.43 at 4500) and Clark et al.
    # read a fully trained BERT; chosen by a rule on runtime alone (under 18 min), before the verdicts were seen.
    # 17 min since the relations are scored on 4096 sentences (TREEBANK_SENTENCES): 15.7 min at 512.
    default_steps = 4500
    minutes = 17
    takes_model = True

    def preflight_overrides(self, budget: Budget) -> list[str]:
        return [*ENCODER, *BERT_INPUT]

    def check_model(self, budget: Budget) -> None:
        super().check_model(budget)
        path = _user_treebank(budget)
        if path is None:
            return
        if not Path(path).expanduser().is_file():
            raise ConfigError("conllu", path, "an existing CoNLL-U treebank file (with --model)")
        try:
            read_treebank(Path(path).expanduser())
        except TreebankError as e:
            raise ConfigError("conllu", path, f"a CoNLL-U treebank file ({e})") from None

    # ---------------------------------------------------------------------------------------- runs --

    def run(self, ctx: StudyContext) -> None:
        steps = ctx.budget.n_steps(self.default_steps)
        seeds = ",".join(map(str, ctx.budget.seed_list()))
        runs = ctx.sweep("train", [*ENCODER, *BERT_INPUT, f"seed={seeds}", f"trainer.max_steps={steps}"])
        treebank = self._write_treebank(ctx)
        for i, run_dir in enumerate(runs):
            ckpt = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
            ctx.command(
                f"treebank-{i}",
                "mhaexp-analyze",
                [f"ckpt={ckpt}", f"conllu={treebank}", f"out={_treebank_dir(ctx, i)}", CLARK_ARCS],
            )

    def run_model(self, ctx: StudyContext, ckpt: Path) -> None:
        user = _user_treebank(ctx.budget)
        treebank = Path(user).expanduser().resolve() if user else self._write_treebank(ctx).resolve()
        # mhaexp-analyze reads an imported model's tokenizer through data=text: a small file of the
        # treebank's own text gives it (the treebank is the probe set; the text is never scored).
        corpus = ctx.eval_path(CORPUS_FILE)
        corpus.write_text("\n".join(s.text for s in read_treebank(treebank)) + "\n", encoding="utf-8")
        extra = [o for o in ctx.budget.extra if not o.startswith("conllu=")]
        out = ctx.out / MODEL_DIR / ANALYSIS_DIR
        args = [f"ckpt={ckpt}", f"conllu={treebank}", f"out={out}", f"data.path={corpus.resolve()}", CLARK_ARCS, *extra]
        ctx.command("analyze", "mhaexp-analyze", args)

    def _write_treebank(self, ctx: StudyContext) -> Path:
        """The grammar's held-out probe sentences with their gold arcs, as CoNLL-U (data seed 0)."""
        n = SMOKE_TREEBANK_SENTENCES if ctx.budget.smoke else TREEBANK_SENTENCES
        source = GrammarSource(seq_len=MAX_SENTENCE_LEN + 2, sizes={"probe": n}, seed=0)
        path = ctx.eval_path(TREEBANK_FILE)
        write_conllu(path, source.sentences("probe"))
        return path

    # ------------------------------------------------------------------------------------ verdicts --

    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        runs = ctx.stage_runs("train")
        tables = [_treebank_dir(ctx, i) / TREEBANK_RELATIONS_FILE for i in range(len(runs))]
        return self._claims(runs, tables, [ctx.rel(d) for d in runs], "in every seed")

    def model_verdicts(self, ctx: StudyContext) -> list[Claim]:
        model = ctx.out / MODEL_DIR
        return self._claims([model], [model / ANALYSIS_DIR / TREEBANK_RELATIONS_FILE], [ctx.rel(model)], "")

    def _claims(self, runs: list[Path], tables: list[Path], rel: list[str], every: str) -> list[Claim]:
        when = f" {every}" if every else ""
        return [
            self._delimiters(runs, rel, when),
            self._broad(runs, rel, when),
            self._relations(tables, rel, when),
            self._alike(runs, rel, when),
        ]

    def _delimiters(self, runs: list[Path], rel: list[str], when: str) -> Claim:
        sep = [max(layer_means(d, "attn_sep"), key=lambda t: t[1], default=(-1, math.nan, math.nan)) for d in runs]
        diff = Measure.of(m - SEP_SHARE for _, m, _ in sep)
        se = Measure.of(s for _, _, s in sep)
        cls = [max((m for _, m, _ in layer_means(d, "attn_cls")), default=math.nan) for d in runs]
        punct = [max((m for _, m, _ in layer_means(d, "attn_punct")), default=math.nan) for d in runs]
        heads = [best(d, "attn_sep") for d in runs]
        verdict, why = paired_greater(diff, se)
        where = ", ".join(f"layer {layer}" for layer, _, _ in sep)
        no_punct = (
            "" if any(math.isfinite(p) for p in punct) else "the input holds no period or comma (the grammar has none)"
        )
        return Claim(
            claim="Much of the attention goes to the delimiter tokens: over half of a layer's on [SEP]",
            source="Clark et al. 2019, Sec. 3.2 and Fig. 2",
            metric="attention on EOS/[SEP] (all of a sequence's), BOS/[CLS] and periods/commas, per head "
            f"(metrics attn_sep, attn_cls, attn_punct); layer means over heads, the best layer's ({where})",
            ours={
                "[SEP], best layer mean": Measure.of(m for _, m, _ in sep),
                "its standard error (bound)": se,
                "[SEP], best head": Measure.of(v for v, _, _ in heads),
                "[CLS], best layer mean": Measure.of(cls),
                "punctuation, best layer mean": Measure.of(punct),
            },
            criterion=f"{when.strip() or 'the model'}: some layer's mean attention on [SEP] above {SEP_SHARE:g} "
            "by more than 2 standard errors",
            criterion_source="Sec. 3.2: 'over half of BERT's attention in layers 6-10 focuses on [SEP]' (Fig. 2, "
            "average attention per layer)",
            holds=verdict,
            why="; ".join(w for w in (why, no_punct) if w),
            paper="over half of the attention in layers 6-10 on [SEP]; layers 1-2 on [CLS]; 11-12 on '.' and ','",
            runs=rel,
        )

    def _broad(self, runs: list[Path], rel: list[str], when: str) -> Claim:
        roles = [final_roles(d) for d in runs]
        broad = Measure.of(sum("broad" in r for r in rs.values()) for rs in roles)
        top = [best(d, "normalized_entropy") for d in runs]
        verdict, why = at_least(broad, 1)
        largest = "; ".join(f"{h} {v:.3f} ± {se:.3f}" for v, se, h in top)
        return Claim(
            claim="Some heads attend broadly, near uniformly over the sentence",
            source="Clark et al. 2019, Sec. 3.3 and Fig. 4",
            metric="heads with the broad role (normalised entropy >= the broad bar at value - 2 SE), and the "
            f"largest normalised entropy (head, value ± SE): {largest}",
            ours={"broad heads": broad, "largest normalised entropy": Measure.of(v for v, _, _ in top)},
            criterion=f"at least one broad head{when}",
            criterion_source="Sec. 3.3: 'some attention heads, especially in lower layers, have very broad "
            "attention', their entropy near that of uniform attention (Fig. 4's dotted line)",
            **decided((verdict, why)),
            paper="broad heads in the lower layers, e.g. spending at most 10% of their attention on any word",
            runs=rel,
        )

    def _relations(self, tables: list[Path], rel: list[str], when: str) -> Claim:
        scores = [relation_scores(t) if t.is_file() else {} for t in tables]
        common = sorted(set.intersection(*(set(s) for s in scores))) if scores else []
        fixed = [r for r in common if not all(s[r].testable for s in scores)]
        testable = [r for r in common if r not in fixed]
        per_rel = {r: Measure.of(s[r].margin for s in scores) for r in testable}
        beaten = Measure.of(sum(s[r].beats for r in testable) for s in scores)
        need = len(testable) // 2 + 1
        fixed_text = ", ".join(f"{r} (baseline {scores[0][r].fixed:.3f})" for r in fixed) or "none"
        detail = "; ".join(
            f"{r}: " + ", ".join(f"{s[r].head} {s[r].direction} {s[r].accuracy:.3f} ± {s[r].se:.3f} vs "
                                 f"{s[r].baseline:.3f}" for s in scores)
            for r in testable
        )  # fmt: skip
        if not testable:
            verdict = untestable(f"no relation of the treebank can be tested: fixed to one offset: {fixed_text}")
        else:
            verdict = at_least(beaten, need)
        why = f"untestable (fixed to one offset by the grammar): {fixed_text}. {verdict[1]}".strip()
        return Claim(
            claim="Certain heads do particular dependency relations well, beating the fixed-offset baseline",
            source="Clark et al. 2019, Sec. 4.2 and Table 1",
            metric=f"per relation, the best head in either direction vs the best fixed-offset baseline (offsets "
            f"-k..k): relations beaten (accuracy - 2 SE > baseline), of {len(testable)} testable. {detail}",
            ours={"relations beaten": beaten, **{f"margin {r}": m for r, m in per_rel.items()}},
            criterion=f"the best head beats the baseline on most testable relations (at least {need} of "
            f"{len(testable)}){when}; relations with a baseline >= {FIXED_OFFSET:g} are untestable",
            criterion_source="Sec. 4.2: 'certain attention heads specialize to specific dependency relations, "
            "sometimes ... substantially outperforming the fixed-offset baseline'; Table 1: the best head over "
            "both directions beats the baseline on the 10 most common relations, by 0.2 (nn) to 47 (dobj) points",
            holds=verdict[0],
            why=why,
            paper="det 94.3 vs 51.7, dobj 86.8 vs 40.0, pobj 76.3 vs 34.6, nn 70.4 vs 70.2 (Table 1)",
            runs=rel,
        )

    def _alike(self, runs: list[Path], rel: list[str], when: str) -> Claim:
        tests = [layer_alike_test(*head_js(d)) for d in runs]
        effect = Measure.of(e for e, _ in tests)
        p = Measure.of(pv for _, pv in tests)
        within = Measure.of(w for w in (_within(*head_js(d)) for d in runs))
        return Claim(
            claim="Heads of the same layer behave alike",
            source="Clark et al. 2019, Sec. 6 and Fig. 6",
            metric="mean JS divergence between heads of different layers minus between heads of one layer; "
            f"one-sided permutation test over the heads' layer labels ({PERMUTATIONS} resamples)",
            ours={"across minus within": effect, "mean JS within a layer": within, "p": p},
            criterion=f"p < {ALPHA:g} with across > within{when}",
            criterion_source="Sec. 6: 'heads within the same layer are often fairly close to each other' in the "
            "JS-divergence embedding of heads (Fig. 6)",
            **decided(significant_in_every_seed(p, effect, ALPHA)),
            paper="heads cluster by layer in the MDS embedding of their JS distances",
            runs=rel,
        )

    def notes(self, ctx: StudyContext) -> list[str]:
        if ctx.budget.model is not None:
            return [
                f"{ctx.budget.model}, imported, read {_user_treebank(ctx.budget) or 'the grammar sentences'} "
                "(CoNLL-U) through its own tokenizer, one sentence a sequence, [CLS] sentence [SEP]; Clark read "
                "[SEP] attention on two-paragraph segments (Sec. 2) and the relations on the WSJ treebank.",
                "One model: each criterion 'in every seed' is this model's value.",
            ]
        return [
            "Changed from the 2026-12-02 design (issue 29). The encoder now reads BERT's input, [CLS] A [SEP] B "
            "[SEP] (data.pair_sentences), where it read one sentence between BOS and EOS.",
            "'Sink heads' (attention on position 0, none in either seed then) became Clark's measurement: "
            "attention on [CLS], on [SEP] and on punctuation, per head; the claim is Sec. 3.2's (over half a "
            "layer's attention on [SEP]). Broad heads are their own claim, with the largest normalised entropy "
            "beside (then: no broad head at step 3000, 0.85 at step 700).",
            "Relations: both directions, as Clark's Table 1; relations the grammar fixes to one offset are "
            "untestable; the criterion is most testable relations (then: every relation in every seed, failed "
            "on acl:relcl, acomp, amod, det, nsubj, prep).",
            "Relations are scored as Clark et al.'s notebook scores them (2026-12-06): a head's prediction is its "
            "most-attended word, attention to [CLS] and [SEP] ignored (analysis.arc_keys=words). Before, the "
            "argmax could land on [CLS]/[SEP], a miss: 3 and 5 of 10 testable relations beaten at 3000 steps "
            "(margins conj +0.31, +0.29; pobj +0.22, +0.18; advmod +0.15, +0.15; cc +0.03, +0.29; obj +0.05, "
            "+0.08; acl:relcl, amod:pred, det, nsubj, prep 0.00, the best head an offset head); with the frame "
            "ignored and Voita's head2dep still as the other direction: the same 3 and 5.",
            "Trained 4500 steps (2026-12-06; 3000 before, the figures above): val loss still fell at 3000. At "
            "3000 steps, with Clark's scoring: [SEP] best layer 0.107, 0.139; largest normalised entropy 0.842, "
            "0.841 (no broad head); relations beaten 3 and 5 of 10; layers alike p = 0.0001, 0.0002.",
            "The other direction is Clark's (2026-12-06): per dependent, the word that attends to it most (the "
            "notebook's 'head<-dep', the map transposed), held against the same offset baseline. Before it was "
            "Voita et al.'s reading (the governor's most-attended word is one of its dependents), with its own "
            "baseline (figures above).",
            "Relations are scored on 4096 of the grammar's sentences (2026-12-06; 512 before, the analysis "
            "probe's default), for power: on 512 the margins of obj, pobj and prep (+0.02 to +0.08) lay within "
            "2 SE of the baseline. On the same two models, 512 sentences: 4 and 4 of 10 beaten; 4096: 7 and 7 "
            "(obj, pobj, prep and amod:pred now beaten by +0.015 to +0.09). The bar and the rule are unchanged.",
            "A check stricter than the paper, measured once on those two models and not the criterion: Table 1 "
            "reads the best head on the same sentences it scores, as the verdict does; chosen on one half of the "
            "4096 sentences and scored on the other (both ways, averaged), 5 and 6 relations are beaten: in seed 0 "
            "amod:pred falls to 0.000 and obj to +0.020 +- 0.011, where the head chosen differs between halves.",
            "Layer similarity: a permutation test over layer labels within each seed (then: the seed ranges of "
            "JS within 0.510, 0.518 and across 0.517, 0.526 overlapped: inconclusive).",
        ]


def _within(heads: Sequence[tuple[int, int]], js: Sequence[Sequence[float]]) -> float:
    """Mean JS divergence between two heads of one layer: the scale the effect is read against."""
    pairs = [js[i][j] for i, a in enumerate(heads) for j, b in enumerate(heads) if i < j and a[0] == b[0]]
    return sum(pairs) / len(pairs) if pairs else math.nan


def _treebank_dir(ctx: StudyContext, index: int) -> Path:
    return ctx.out / EVAL_DIR / f"treebank-{index}"


def _user_treebank(budget: Budget) -> str | None:
    """``conllu=<file>`` among ``--model``'s extra words: the user's treebank instead of the grammar's."""
    if budget.model is None:
        return None
    return next((o.partition("=")[2] for o in budget.extra if o.startswith("conllu=")), None)


STUDY = Clark2019()
