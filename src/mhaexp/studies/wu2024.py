"""Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality" (arXiv:2404.15574).

Claims checked at small scale, on ``data=retrieval`` (needle in a haystack):

1. retrieval heads exist: some head has a retrieval score >= 0.1 (Sec. 3.1, "universal");
2. they are sparse: at most 5% of the heads (Sec. 3.1, "less than 5%"). With ``n`` heads one head is
   already ``1 / n`` of them, so below 20 heads no share can be both >= 1 head and <= 5%: the claim is
   untestable there, decided from the head count before any run;
3. masking them collapses needle retrieval (Sec. 4.1);
4. masking as many random non-retrieval heads hurts less (the same section's control), paired within
   each seed: the random sets' mean accuracy minus the retrieval-masked one, with the random draws'
   standard error.

The retrieval score and roles come from the run's own analysis (``analysis/head_metrics.csv``, metric
``retrieval``, Wu et al.'s definition in :func:`mhaexp.heads.longctx.retrieval_score`). The masked
accuracies are measured here on each run's last checkpoint, masking a head as Wu et al.'s code does (its
query zeroed while answering: :func:`masked_accuracy`), and written to ``eval/masking.json``; the
verdicts read only that file and the runs.

``--model <source>`` (a pretrained Qwen2 or Llama, as Wu et al. measured): the same claims on the imported
model, on needles the project writes through the model's own tokenizer
(:func:`mhaexp.data.retrieval.text_needles`), scored in one teacher-forced pass per needle; written to
``eval/model_retrieval.json``.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import torch
import yaml
from scipy import stats

from mhaexp.analysis.config import yaml_thresholds
from mhaexp.checkpoint import CHECKPOINT_KEY, read_checkpoint
from mhaexp.config import CONF_DIR, instantiate_plain
from mhaexp.data.retrieval import text_needles
from mhaexp.data.tokenizers import load_saved_tokenizer
from mhaexp.errors import ConfigError
from mhaexp.heads.longctx import retrieval_sums
from mhaexp.heads.patterns import Chunk, Ratio
from mhaexp.nn.io import load_model
from mhaexp.nn.model import Transformer
from mhaexp.nn.objectives import answer_exact_match, causal_targets
from mhaexp.rundir import CHECKPOINT_DIR, LAST_CHECKPOINT
from mhaexp.studies.base import Study
from mhaexp.studies.readers import head_metric, role_bar
from mhaexp.studies.report import figure
from mhaexp.studies.runner import Budget, StudyContext, run_config
from mhaexp.studies.verdict import (
    Claim,
    Measure,
    Verdict,
    all_hold,
    at_least,
    at_most,
    decided,
    paired_greater,
    untestable,
)
from mhaexp.training.module import load_module

SPARSE_SHARE = 0.05  # Sec. 3.1 and the abstract: "less than 5%" of the attention heads are retrieval heads
COLLAPSE_RATIO = 0.5  # masked accuracy at most half the unmasked one counts as a collapse (ours: Wu give curves)
LEARNED_ACC = 0.5  # below this unmasked accuracy the model has not learned the task: masking says nothing
RANDOM_DRAWS = 5  # random head sets per run, averaged
MASKING_FILE = "masking.json"
MODEL_FILE = "model_retrieval.json"
# --model: needles per model and tokens per needle sequence (Wu et al. sweep 20 lengths x 10 depths up
# to 50K tokens; a CPU pass over a 0.5B model takes seconds per 1K tokens, so one length, spread depths).
MODEL_NEEDLES, MODEL_LENGTH = 20, 512
SMOKE_NEEDLES, SMOKE_LENGTH = 4, 192
PRESET = "retrieval"  # conf/experiment/retrieval.yaml: the task and model the study trains


def preset_steps() -> int:
    """The preset's own ``trainer.max_steps``: the budget its reliability was measured at, the study's default."""
    return int(
        yaml.safe_load((CONF_DIR / "experiment" / f"{PRESET}.yaml").read_text(encoding="utf-8"))["trainer"]["max_steps"]
    )


PAPER_SHARE = "< 5% of heads (abstract, Sec. 3.1); Fig. 3: 3-6% of heads score above 0.1, 45-73% score 0"


def retrieval_heads(run_dir: Path) -> tuple[list[tuple[int, int]], int, float]:
    """(heads whose retrieval score at the last analysis step is >= the run's own ``analysis.thresholds.retrieval``
    (Wu et al. Sec. 2: 0.1), heads scored in all, the best score; NaN without scores)."""
    series = head_metric(run_dir, "retrieval")
    if not series:
        return [], 0, math.nan
    bar = role_bar(run_dir, "retrieval")
    scored = {h: v for h, v in series[max(series)].items() if math.isfinite(v)}
    found = sorted(h for h, v in scored.items() if v >= bar)
    return found, len(scored), max(scored.values(), default=math.nan)


def masked_logits(model: Transformer, batch: dict[str, torch.Tensor], heads: list[tuple[int, int]]) -> torch.Tensor:
    """The model's logits on ``batch`` with ``heads`` masked as Wu et al.'s code masks them.

    Their ``needle_in_haystack_with_mask.py`` encodes the prompt with every head, then at each decoding step
    (the prompt's last token and every generated one) sets a masked head's query to zero, so it attends
    uniformly over the context. Here that is one teacher-forced pass: the masked heads' ``query_gate`` is 0
    at the positions that predict an answer token (``answer > 0``) and 1 elsewhere. The paper's text says
    only "masking out"; we follow the code.
    """
    layers = model.attention_layers
    ids = batch["input_ids"]
    kept = (batch["answer"] <= 0).to(torch.float32)  # (B, T): 0 at the decoding steps
    gates: dict[int, torch.Tensor] = {}
    for layer, head in heads:
        gates.setdefault(layer, torch.ones(*ids.shape, layers[layer].n_heads, device=ids.device))[..., head] = kept
    try:
        for i, layer in enumerate(layers):
            layer.query_gate = gates.get(i)
        with torch.no_grad():
            logits, _ = model(ids, attention_mask=batch["attention_mask"])
    finally:
        for layer in layers:
            layer.query_gate = None
    return logits


def masked_accuracy(model: Transformer, batches: list[dict[str, torch.Tensor]], heads: list[tuple[int, int]]) -> float:
    """Exact-match retrieval accuracy with ``heads`` masked (:func:`masked_logits`)."""
    hits: list[torch.Tensor] = []
    for b in batches:
        targets = causal_targets(b["input_ids"], b["attention_mask"].bool())
        hit = answer_exact_match(masked_logits(model, b, heads), targets, b["answer"])
        hits.append(hit[~hit.isnan()])
    every = torch.cat(hits)
    return float(every.mean()) if every.numel() else math.nan


def masking(model: Transformer, batches: list[dict[str, torch.Tensor]], found: list[tuple[int, int]], seed: int):
    """Unmasked, retrieval-masked and random-masked (``RANDOM_DRAWS`` sets of as many non-retrieval heads)
    accuracy, and the random sets."""
    every = [(layer, h) for layer, a in enumerate(model.attention_layers) for h in range(a.n_heads)]
    others = [h for h in every if h not in found]
    rng = random.Random(seed)
    draws = [sorted(rng.sample(others, len(found))) for _ in range(RANDOM_DRAWS)] if found else []
    return {
        "n_heads": len(every),
        "acc_full": masked_accuracy(model, batches, []),
        "acc_retrieval_masked": masked_accuracy(model, batches, found) if found else math.nan,
        "acc_random_masked": [masked_accuracy(model, batches, d) for d in draws],
        "random_sets": [[list(h) for h in d] for d in draws],
    }


def measure_masking(run_dir: Path, seed: int) -> dict[str, Any]:
    """Unmasked, retrieval-masked and random-masked accuracy of one run on its validation split."""
    module = load_module(Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT)
    cfg = run_config(run_dir)
    datamodule = instantiate_plain(cfg.data)
    datamodule.prepare_data()
    batches = list(datamodule.val_dataloader())
    found, n_scored, best = retrieval_heads(run_dir)
    return {
        "run": str(run_dir),
        "n_scored": n_scored,
        "retrieval_heads": [list(h) for h in found],
        "best_retrieval": best,
        "retrieval_bar": role_bar(run_dir, "retrieval"),
        **masking(module.model, batches, found, seed),
    }


def model_tokenizer(ckpt: Path, source: str) -> Any:
    """The tokenizer ``mhaexp-import`` saved beside ``ckpt``; ConfigError naming --model when it has none."""
    beside = read_checkpoint(ckpt, "--model")[CHECKPOINT_KEY].get("tokenizer")
    if not beside:
        raise ConfigError("--model", source, "a model saved with its tokenizer (the needles are written through it)")
    return load_saved_tokenizer(ckpt.parent / beside, "--model")


def measure_model(ckpt: Path, source: str, n: int, length: int, seed: int = 0) -> dict[str, Any]:
    """Retrieval score of every head of an imported model (Wu et al. Sec. 2) on ``n`` project needles of
    ``length`` tokens, its exact match on them, and (when it answers them and has retrieval heads) the
    masked accuracies."""
    model = load_model(ckpt, "--model")
    tokenizer = model_tokenizer(ckpt, source)
    length = min(length, model.cfg.max_seq_len)
    try:
        rows = text_needles(tokenizer, n, length, seed)
    except ValueError as e:
        raise ConfigError("--model", source, f"a model whose max_seq_len holds a needle and a haystack ({e})") from None
    batches = [{k: torch.tensor([v]) for k, v in r.items()} for r in rows]
    per_layer: list[Ratio | None] = [None] * model.cfg.n_layers
    hits = []
    with torch.no_grad():
        for b in batches:
            ids, mask = b["input_ids"], b["attention_mask"].bool()
            logits, patterns = model(ids, attention_mask=b["attention_mask"], need_weights=True)
            generated = logits.argmax(-1)  # (1, T): the model's greedy token at each step
            for layer, p in enumerate(patterns or []):  # p: (1, H, T, T)
                r = retrieval_sums(Chunk(p, mask, causal=False), ids, b["needle"].bool(), b["answer"] > 0, generated)
                per_layer[layer] = r if per_layer[layer] is None else per_layer[layer] + r
            hits.append(float(answer_exact_match(logits, causal_targets(ids, mask), b["answer"])[0, 0]))
    bar = float(yaml_thresholds()["retrieval"])
    scores = []
    for layer, r in enumerate(per_layer):
        assert r is not None
        value, se, count = r.stats()
        scores += [[layer, h, float(value[h]), float(se[h]), int(count[h])] for h in range(value.shape[0])]
    found = [(s[0], s[1]) for s in scores if s[2] >= bar]
    acc = sum(hits) / len(hits)
    result: dict[str, Any] = {
        "source": source,
        "n_needles": n,
        "length": length,
        "retrieval_bar": bar,
        "scores": scores,  # [layer, head, score, se, needles]
        "retrieval_heads": [list(h) for h in found],
        "best_retrieval": max(s[2] for s in scores),
        "acc_full": acc,
        "acc_se": float(stats.sem(hits)) if len(hits) > 1 else math.nan,
    }
    if acc >= LEARNED_ACC and found:
        result.update(masking(model, batches, found, seed))
    else:
        every = sum(a.n_heads for a in model.attention_layers)
        result.update({"n_heads": every, "acc_retrieval_masked": math.nan, "acc_random_masked": [], "random_sets": []})
    return result


def _sparsity_testable(n_heads: list[int]) -> tuple[Verdict, str] | None:
    """``untestable`` when some model has fewer heads than 1 / SPARSE_SHARE, else None."""
    small = min(n_heads)
    if 1 / small <= SPARSE_SHARE:
        return None
    return untestable(
        f"with {small} heads one retrieval head is already {100 / small:.3g}% of them: no share can be at least one "
        f"head and at most {SPARSE_SHARE:.0%} below {math.ceil(1 / SPARSE_SHARE)} heads (Wu et al.'s models have "
        "hundreds to thousands)"
    )


def _random_minus_masked(r: dict[str, Any]) -> tuple[float, float]:
    """(mean random-masked minus retrieval-masked accuracy, the random draws' standard error) of one model."""
    rand = r["acc_random_masked"]
    if not rand or not math.isfinite(r["acc_retrieval_masked"]):
        return math.nan, math.nan
    se = float(stats.sem(rand)) if len(rand) > 1 else math.nan
    return sum(rand) / len(rand) - r["acc_retrieval_masked"], se


def retrieval_claims(results: list[dict[str, Any]], runs: list[str], unlearned: str, plot: str | None) -> list[Claim]:
    """The four claims on per-model results (one per seed, or one imported model): ``masking.json`` rows.
    ``unlearned`` says why the claims are inconclusive when a model does not answer the needles."""
    share = Measure.of(len(r["retrieval_heads"]) / r["n_heads"] for r in results)
    full = Measure.of(r["acc_full"] for r in results)
    learned = at_least(full, LEARNED_ACC)
    masked = Measure.of(r["acc_retrieval_masked"] for r in results)
    rand = Measure.of(
        sum(r["acc_random_masked"]) / len(r["acc_random_masked"]) if r["acc_random_masked"] else math.nan
        for r in results
    )
    ratio = Measure.of(r["acc_retrieval_masked"] / r["acc_full"] if r["acc_full"] > 0 else math.nan for r in results)
    paired = [_random_minus_masked(r) for r in results]
    diff, diff_se = Measure.of(d for d, _ in paired), Measure.of(s for _, s in paired)
    precondition = learned if learned[0] else (None, f"{unlearned} (unmasked exact match {full} < {LEARNED_ACC:g})")
    best = Measure.of(r.get("best_retrieval", math.nan) for r in results)
    count = Measure.of(len(r["retrieval_heads"]) for r in results)
    # Each run's own bar (masking.json files from before it was recorded: named, not guessed).
    bar = ", ".join(sorted({f"{r['retrieval_bar']:g}" for r in results if "retrieval_bar" in r}))
    bar = bar or "analysis.thresholds.retrieval"
    some = at_least(count, 1)
    if some[0] is False:
        per_seed = ", ".join(f"{v:.3g}" for v in best.values)
        some = (False, f"no head reaches a retrieval score of {bar} (best head: {per_seed})")
    exists = all_hold([precondition, some])
    if (small := _sparsity_testable([r["n_heads"] for r in results])) is not None:
        sparse = small
    else:
        # No retrieval head at all says nothing about how sparse they are: that is the claim above.
        having = some if some[0] is not False else (None, f"{some[1]}: no retrieval heads to count")
        sparse = all_hold([precondition, having, at_most(share, SPARSE_SHARE)])
    maskable = some if some[0] is not False else (None, f"{some[1]}: no retrieval head to mask")
    collapse = all_hold([precondition, maskable, at_most(ratio, COLLAPSE_RATIO)])
    control = all_hold([precondition, maskable, paired_greater(diff, diff_se)])
    heads = f"{', '.join(str(int(c)) for c in count.values)} of {', '.join(str(r['n_heads']) for r in results)}"
    return [
        Claim(
            claim=f"Retrieval heads exist: some head has a retrieval score >= {bar}",
            source="Wu et al. 2024, Sec. 3.1 (universal)",
            metric=f"heads with retrieval score >= {bar} ({heads}), on a model that answers the needles",
            ours={"retrieval heads": count, "best retrieval score": best, "unmasked accuracy": full},
            criterion=f"at least one such head in every model, on models that learned the task (unmasked exact "
            f"match >= {LEARNED_ACC:g})",
            criterion_source="Sec. 3.1: all the explored models with long-context capability have retrieval heads; "
            "the score and its bar of 0.1: Sec. 2-3.1",
            **decided(exists),
            paper="every model family and scale tested has retrieval heads",
            runs=runs,
        ),
        Claim(
            claim=f"Retrieval heads are sparse: at most {SPARSE_SHARE:.0%} of the heads",
            source="Wu et al. 2024, Sec. 3.1 (sparse), Fig. 3",
            metric=f"share of all heads with retrieval score >= {bar}",
            ours={"share": share},
            criterion=f"every model's share <= {SPARSE_SHARE:g}, with at least one retrieval head, on models that "
            "learned the task",
            criterion_source="abstract and Sec. 3.1: less than 5% of the attention heads are retrieval heads "
            "(Fig. 3: the share of heads above 0.1 per model)",
            **decided(sparse),
            paper=PAPER_SHARE,
            runs=runs,
        ),
        Claim(
            claim="Masking the retrieval heads collapses needle retrieval",
            source="Wu et al. 2024, Sec. 4.1 (masking the top retrieval heads in Needle-in-a-Haystack)",
            metric="masked / unmasked exact-match accuracy on the needles",
            ours={"unmasked": full, "retrieval masked": masked, "ratio": ratio},
            criterion=f"every model's ratio <= {COLLAPSE_RATIO:g}",
            criterion_source="Sec. 4.1: Needle-in-a-Haystack accuracy falls sharply when the retrieval heads are "
            "masked; the bar of half is ours (the paper gives curves over the heads masked)",
            **decided(collapse),
            paper="needle-in-a-haystack accuracy falls sharply as the top retrieval heads are masked",
            runs=runs,
            plot=plot,
        ),
        Claim(
            claim="Masking as many random non-retrieval heads hurts retrieval less",
            source="Wu et al. 2024, Sec. 4.1 (the random-head control)",
            metric=f"accuracy with as many random non-retrieval heads masked ({RANDOM_DRAWS} draws, mean) minus "
            "accuracy with the retrieval heads masked, within each model",
            ours={"random masked": rand, "retrieval masked": masked, "paired difference": diff, "its se": diff_se},
            criterion="every model's paired difference above zero by more than 2 standard errors of its random draws",
            criterion_source="Sec. 4.1 and Fig. 1 (right): masking random non-retrieval heads does not affect "
            "needle retrieval; paired within each model (issue 29's rule)",
            **decided(control),
            paper="masking random heads barely changes accuracy",
            runs=runs,
            plot=plot,
        ),
    ]


class Wu2024(Study):
    name = "wu2024"
    title = "Wu et al. 2024: retrieval heads exist, are sparse, and masking them breaks needle retrieval"
    summary = "retrieval heads on needle-in-a-haystack: existence, sparsity, masking them vs random heads"

    @property
    def default_steps(self) -> int:
        return preset_steps()

    minutes = 12
    takes_model = True

    def task_overrides(self) -> list[str]:
        # The task and model are conf/experiment/retrieval.yaml (why that one: its comments).
        return [f"experiment={PRESET}"]

    def preflight_overrides(self, budget: Budget) -> list[str]:
        return self.task_overrides()

    def run(self, ctx: StudyContext) -> None:
        seeds = ctx.budget.seed_list()
        steps = ctx.budget.n_steps(self.default_steps)
        runs = ctx.sweep(
            "train",
            [
                *self.task_overrides(),
                f"seed={','.join(map(str, seeds))}",
                f"trainer.max_steps={steps}",
                f"trainer.val_check_interval={ctx.budget.interval(steps, 5)}",
                f"analysis.every_n_steps={ctx.budget.interval(steps, 5)}",
            ],
        )
        results = [measure_masking(d, seed=i) for i, d in enumerate(runs)]
        ctx.eval_path(MASKING_FILE).write_text(json.dumps(results, indent=2))
        self.plot(ctx, results)

    def run_model(self, ctx: StudyContext, ckpt: Path) -> None:
        n, length = (SMOKE_NEEDLES, SMOKE_LENGTH) if ctx.budget.smoke else (MODEL_NEEDLES, MODEL_LENGTH)
        assert ctx.budget.model is not None
        result = measure_model(ckpt, ctx.budget.model, n, length)
        ctx.eval_path(MODEL_FILE).write_text(json.dumps(result, indent=2))
        ctx.echo(
            f"[{self.name}] {len(result['retrieval_heads'])} of {result['n_heads']} heads score >= "
            f"{result['retrieval_bar']:g} (best {result['best_retrieval']:.3g}); exact match {result['acc_full']:.3g}"
        )

    def plot(self, ctx: StudyContext, results: list[dict[str, Any]]) -> None:
        with figure(ctx.out / "masking.png", (5, 3.2)) as (fig, ax):
            labels = ["no mask", "retrieval heads masked", "as many random heads"]
            for i, r in enumerate(results):
                rand = r["acc_random_masked"]
                vals = [r["acc_full"], r["acc_retrieval_masked"], sum(rand) / len(rand) if rand else math.nan]
                ax.bar(
                    [x + 0.8 * i / len(results) for x in range(3)], vals, width=0.8 / len(results), label=f"seed {i}"
                )
            ax.set_xticks([x + 0.4 - 0.4 / len(results) for x in range(3)], labels, fontsize=8)
            ax.set_ylabel("needle exact match (val)")
            ax.set_ylim(0, 1.05)
            ax.legend(fontsize=8)

    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        results = json.loads((ctx.out / "eval" / MASKING_FILE).read_text())
        runs = [ctx.rel(ctx.run_path(r["run"])) for r in results]
        return retrieval_claims(results, runs, "the model did not learn the task at this budget", "masking.png")

    def model_verdicts(self, ctx: StudyContext) -> list[Claim]:
        result = json.loads((ctx.out / "eval" / MODEL_FILE).read_text())
        unlearned = f"{result['source']} does not answer our needles"
        return retrieval_claims([result], [ctx.rel(ctx.model_ckpt)], unlearned, None)

    def notes(self, ctx: StudyContext) -> list[str]:
        return [
            "Changed by issue 29. Before, one claim joined existence and sparsity ('at least one head and at most "
            "5%'): on the 2 x 8 heads of experiment=retrieval one head is already 6.25%, so it could not hold "
            "whatever the runs did (2026-12-02: shares 0.125, 0.19; does not hold). Existence is now its own "
            "claim, and sparsity is untestable below 20 heads; with --model (Qwen2, Llama: hundreds of heads) "
            "it is tested.",
            "Changed by issue 29. The random-head control compared seed ranges unpaired (2026-12-02: random "
            "0.19, 0.25 vs retrieval-masked 0.00, 0.00; holds); it is now a paired difference within each "
            "seed, beyond 2 standard errors of the random draws (5 of the 10 draws then also broke retrieval).",
            "Changed for issue 29 (2026-12-06): experiment=retrieval trains 5000 steps on 100000 rows (was 4000 "
            "on 20000), with which it learned in 9 of 10 measured runs instead of 4 (conf/experiment/"
            "retrieval.yaml). Before, seeds 0, 1: 4 and 5 retrieval heads (best 0.91, 0.96), exact match 0.68, "
            "0.95 -> 0.00 masked; random minus retrieval-masked +0.022 (SE 0.014), +0.0025 (SE 0.0025): "
            "inconclusive.",
            "Changed for issue 29 (2026-12-06), before measuring: a head is masked as Wu et al.'s code masks it "
            "(needle_in_haystack_with_mask.py: its query set to zero at the decoding steps, so it attends "
            "uniformly; the prompt is encoded with every head). Before, a 0 gate removed the head at every "
            "position, the needle's included, so a random set holding a layer-0 head broke the copy circuit "
            "where it reads the needle. With the 0 gate (the same runs, seeds 0, 1): retrieval-masked 0.00, 0.00; "
            "random draws 0, 0, 0, 0, 0 and 0, 0, 0.52, 0.61, 0 (random minus retrieval-masked +0.000, +0.226, SE "
            "0.139): inconclusive. With Wu et al.'s masking: retrieval-masked 0.00, 0.00; random draws 0, 0, 0.27, "
            "0, 0 and 0, 0, 0.64, 0.71, 0 (+0.054, SE 0.054; +0.271, SE 0.166): still inconclusive. Every random "
            "set that breaks retrieval holds one layer-0 head (L0H4 in seed 0, L0H1 in seed 1; 4 of 5 and 3 of 5 "
            "sets hold it), every set without it keeps 0.27 to 0.71: the copy needs that head at the answer steps "
            "too, and a set of 3-4 of the 12-13 other heads often draws it. Wu et al.'s "
            "code draws the random heads outside the top 100 by retrieval score (of 1024); ours outside the "
            "retrieval heads, as the text says ('random non-retrieval heads').",
            "Measured for issue 29 (2026-12-06), not adopted: models of 64 heads, on which sparsity would be "
            "testable and a random set would hold a few of many heads, as in Wu et al. They learn sooner, but "
            "their copy-paste heads depend on the seed: 2 x 32 heads at 2000 steps had 0 (seed 0: answers 0.75, "
            "best score 0.055, its layer-1 heads' argmax 6 positions after the copied token), 1 (seed 1, masked "
            "-> 0.00) and 5 (seed 2, 7.8% of the heads) retrieval heads; 4 x 16 heads (seed 0) had 12. Trained on "
            "more than retrieval (grammar haystack, loss on every token), 2 x 32 learns fully in seeds 0 and 1 "
            "(0.999, 1.000 at 4000 steps) with 8 and 9 retrieval heads (12.5%, 14%: not sparse; random sets "
            "0.66, 0.54 vs 0.00 masked); 4 x 16 at 3000 steps has 3 (4.7%) in seed 1 (exact match 0.69) while "
            "seed 0 has not learned, and at 5000 steps seeds 0 and 2 learn fully (0.997, 0.998) with 9 and 11 "
            "(14%, 17%). Details: conf/experiment/retrieval.yaml.",
        ]


STUDY = Wu2024()
