"""Treebank scoring for any model: a CoNLL-U file as probe data, and the per-relation table.

The sentences are tokenized by the model's own tokenizer (:mod:`mhaexp.data.treebank`), and
:mod:`mhaexp.analysis.collect` scores their arcs on word-level attention
(:func:`mhaexp.heads.wordlevel.word_attention`), through the same code as the grammar's one-piece
words. Used by ``mhaexp-analyze conllu=`` and by ``analysis.treebank=`` during training.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mhaexp.analysis.collect import ProbeData, compute_head_metrics, special_ids
from mhaexp.analysis.config import AnalysisConfig
from mhaexp.data.treebank import Treebank, load_treebank
from mhaexp.heads import patterns as M
from mhaexp.nn.objectives import Batch, Objective, causal_lm_objective

TABLE_DIRECTIONS = ("dep2head", "head2dep", "transposed")  # + "predictive" for causal models


def treebank_batches(tb: Treebank, batch_size: int) -> list[Batch]:
    cols = {k: torch.tensor([r[k] for r in tb.rows]) for k in tb.rows[0]}
    cols["attention_mask"] = cols["attention_mask"].bool()
    n = len(tb.rows)
    return [{k: v[i : i + batch_size] for k, v in cols.items()} for i in range(0, n, batch_size)]


def treebank_probe(
    tb: Treebank,
    tokenizer: Any,
    batch_size: int,
    objective: Objective = causal_lm_objective,
    token_freq: Tensor | None = None,
) -> ProbeData:
    """The treebank's sentences as probe data. Without ``token_freq``, rarity comes from the
    treebank text itself (all the text the analysis knows then)."""
    batches = treebank_batches(tb, batch_size)
    if token_freq is None:
        ids = torch.cat([b["input_ids"][b["attention_mask"]] for b in batches])
        token_freq = torch.bincount(ids, minlength=tokenizer.vocab_size)
    return ProbeData(
        batches=batches,
        relations=list(tb.relations),
        id_to_token=tokenizer.id_to_token,
        special_ids=special_ids(tokenizer),
        bos_id=tokenizer.bos_id,
        vocab_size=tokenizer.vocab_size,
        token_freq=token_freq,
        objective=objective,
        eos_id=getattr(tokenizer, "eos_id", None),
    )


def _as_words(batch: Batch) -> Batch:
    """A probe batch with the treebank columns: one word per token and no arc where it has none."""
    mask = batch["attention_mask"].bool()
    none = torch.full_like(batch["input_ids"], -1)
    out = {"heads": none, "rels": none, "coref": none, **batch}
    if "word_of_token" not in batch:
        positions = torch.arange(mask.shape[1]).expand_as(mask)
        out["word_of_token"] = torch.where(mask, positions, -1)
    return out


def add_treebank(probe: ProbeData, tb: Treebank, batch_size: int) -> ProbeData:
    """``probe`` with the treebank's sentences added: the text metrics see every sequence, the arcs come
    from the treebank (and from the probe's own annotation, if any: ``tb`` must then have been encoded
    with ``base_relations=probe.relations``). Induction is scored on random repeated sequences, as for
    any probe that is not BOS + x + x throughout."""
    extra = treebank_batches(tb, batch_size)
    return replace(
        probe,
        batches=[_as_words(b) for b in probe.batches] + extra,
        relations=list(tb.relations),
        repeated=False,
        cache={},
    )


def probe_with_treebank(
    probe: ProbeData, cfg: AnalysisConfig, tokenizer: Any, max_tokens: int, batch_size: int, limit: int | None
) -> tuple[ProbeData, Treebank | None]:
    """``probe`` plus ``cfg.treebank``'s sentences, the first ``limit`` that can be scored (None: all;
    none when ``cfg.treebank`` is null), and the treebank."""
    if cfg.treebank is None:
        return probe, None
    tb = load_treebank(
        cfg.treebank,
        tokenizer,
        max_tokens,
        "analysis.treebank",
        limit=limit,
        min_arcs=cfg.min_arcs,
        base_relations=probe.relations if probe.has_syntax else (),
    )
    return add_treebank(probe, tb, batch_size), tb


# ------------------------------------------------------------------------------ relation table --


@dataclass(frozen=True)
class RelationRow:
    """The best head for one relation and direction, with the bars it is measured against."""

    relation: str
    arcs: int
    direction: str
    layer: int
    head: int
    accuracy: float
    se: float  # the accuracy's standard error over sentences (NaN without one)
    offset_baseline: float
    position_baseline: float
    margin: float  # accuracy - the larger baseline (the bar of the syntactic role)


def relation_table(model: Any, probe: ProbeData, cfg: AnalysisConfig) -> list[RelationRow]:
    """Per relation of ``probe`` and direction (dep2head, head2dep, transposed, and predictive for causal models):
    the head with the best word-level accuracy, its baselines and margin. Relations without an arc
    in a direction are left out of it.

    Each direction is one streamed :func:`~mhaexp.analysis.collect.compute_head_metrics` (cheap tier,
    no importance): the arcs are scored by the analysis' own code, in its memory bound."""
    causal = bool(model.cfg.causal)
    arcs = arc_counts(probe.batches, probe.relations)
    settings = cfg.to_dict()
    rows = []
    for direction in (*TABLE_DIRECTIONS, *(("predictive",) if causal else ())):
        hm = compute_head_metrics(model, probe, {**settings, "direction": direction}, expensive=False, importance=False)
        if "syntactic_accuracy" not in hm.metrics:
            continue
        out, names = hm.metrics, hm.relation_names
        acc = out["syntactic_accuracy"]  # (L, H, R)
        se = hm.se.get("syntactic_accuracy", torch.full_like(acc, float("nan")))
        for r, name in enumerate(names):
            if bool(torch.isnan(out["syntactic_offset_baseline"][r])):
                continue
            best = int(acc[..., r].nan_to_num(-1.0).flatten().argmax())
            layer, head = divmod(best, acc.shape[1])
            value = float(acc[layer, head, r])
            rows.append(
                RelationRow(
                    name,
                    arcs.get(name, 0),
                    direction,
                    layer,
                    head,
                    value,
                    float(se[layer, head, r]),
                    float(out["syntactic_offset_baseline"][r]),
                    float(out["syntactic_position_baseline"][r]),
                    value - float(out["syntactic_baseline"][r]),
                )
            )
    order = {name: i for i, name in enumerate(sorted(arcs, key=lambda n: -arcs[n]))}
    return sorted(rows, key=lambda row: (order.get(row.relation, len(order)), row.relation))


def arc_counts(batches: Sequence[Batch], relations: Sequence[str]) -> dict[str, int]:
    """Gold arcs per relation name (with ``amod:pred`` when it can be derived), over every batch."""
    out: dict[str, int] = {}
    for b in batches:
        heads, rels = b["heads"].long(), b["rels"].long()
        arc = (heads >= 0) & (rels >= 0)
        counts = torch.bincount(rels[arc], minlength=len(relations))
        derived = M.derived_amod_pred(heads, rels, list(relations))
        if derived is not None and "amod:pred" not in relations:
            out["amod:pred"] = out.get("amod:pred", 0) + int((derived >= 0).sum())
        for r, name in enumerate(relations):
            out[name] = out.get(name, 0) + int(counts[r])
    return {k: v for k, v in out.items() if v}


def format_relation_table(rows: Sequence[RelationRow]) -> list[str]:
    """The table ``mhaexp-analyze conllu=`` prints: one line per relation and direction."""
    head = f"{'relation':<14} {'arcs':>6}  {'direction':<10} {'best head':<9} {'accuracy':>8} "
    head += f"{'offset':>7} {'position':>8} {'margin':>7}"
    lines = [head]
    for r in rows:
        pos = "-" if r.position_baseline != r.position_baseline else f"{r.position_baseline:.3f}"
        lines.append(
            f"{r.relation:<14} {r.arcs:>6}  {r.direction:<10} {f'L{r.layer}H{r.head}':<9} {r.accuracy:>8.3f} "
            f"{r.offset_baseline:>7.3f} {pos:>8} {r.margin:>+7.3f}"
        )
    return lines


def write_relation_table(path: Path, rows: Sequence[RelationRow]) -> None:
    fields = list(RelationRow.__dataclass_fields__)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: getattr(r, k) for k in fields})
