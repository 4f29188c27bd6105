"""From a model and probe batches to one tensor per metric: the glue between the model and the pure metrics.

Layout of the result (:class:`HeadMetrics`):

* ``metrics[key]``: ``(L, H)`` or ``(L, H, R)`` with ``H = max`` heads over layers. Layers with fewer
  heads (physically pruned models) are padded with NaN; ``n_heads[l]`` says how many are real.
  The keys of :mod:`mhaexp.analysis.roles` are all here (when the data allows), so ``metrics`` goes
  straight into ``classify_heads``, together with the baselines ``syntactic_baseline`` ``(R,)`` and
  ``coreference_baseline`` (scalar).
* ``se[key]`` / ``n[key]``: the standard error over probe sequences and the sequences behind it, shaped as
  ``metrics[key]``, for the metrics that have one (:data:`mhaexp.analysis.registry.METRICS`, ``se``).
* ``layer_metrics[key]``: ``(L,)`` per-layer values (GQA group diversity).
* ``js`` ``(N, N)`` / ``mds`` ``(N, 2)``: over all real heads, head ``k`` is ``head_index[k]``.

Memory: the analysis streams (:func:`compute_head_metrics`). Patterns exist for one layer and one
micro-batch of sequences at a time (:data:`PATTERN_CHUNK_ELEMENTS`), and every metric is accumulated as
a sum and a count, with each sequence's share for the standard error over sequences, so a long-context
probe (B = 64, T = 1024: 8.6 GB of patterns over 4 layers of 8 heads) is analysed in about a gigabyte,
with the numbers of the whole-pattern computation.

Two tiers, so that periodic analysis stays cheap (see ``expensive_every`` in conf/analysis):

* cheap: one explicit-attention forward per probe batch (the one gradient importance backpropagates
  through, when the probe is one micro-batch) and one on repeated random sequences, the pattern metrics,
  copying score (weights only) and gradient importance (one backward per batch);
* expensive (``expensive=True``): ablation importance, JS divergence between all heads, MDS and GQA
  group diversity.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mhaexp.analysis import registry
from mhaexp.analysis.config import DIRECTIONS
from mhaexp.analysis.registry import Metric, resolve
from mhaexp.heads import patterns as M
from mhaexp.heads.evaluation import eval_mode, group_extent, row_groups
from mhaexp.heads.importance import (
    SentenceValues,
    ablation_values,
    group_ablation_values,
    group_importance_values,
    importance_values,
    kv_groups,
)
from mhaexp.heads.longctx import massive_activations
from mhaexp.heads.similarity import gqa_group_diversity, js_divergence_sums, mds_embedding
from mhaexp.heads.weights import copying_score
from mhaexp.heads.wordlevel import word_attention, word_mask
from mhaexp.nn.objectives import Batch, Objective, causal_lm_objective


@dataclass
class ProbeData:
    """Everything about the probe set the metrics need, independent of where it came from.

    ``batches`` hold ``input_ids``/``attention_mask`` and optionally ``heads``/``rels``/``coref`` (CPU).
    ``repeated``: the probe sequences already are BOS + x + x, so induction is scored on them directly.
    """

    batches: list[Batch]
    relations: list[str]
    id_to_token: Callable[[int], str]
    special_ids: frozenset[int]
    bos_id: int
    vocab_size: int
    token_freq: Tensor | None = None
    repeated: bool = False
    objective: Objective = causal_lm_objective
    eos_id: int | None = None  # EOS / [SEP]: attention to it is measured per head (Clark et al. 2019, Sec. 3.2)
    # Results that depend on the probe alone (gold arcs, baselines), filled on first use.
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def n_sequences(self) -> int:
        return sum(len(b["input_ids"]) for b in self.batches)

    @property
    def has_syntax(self) -> bool:
        return bool(self.relations) and all("heads" in b and "rels" in b for b in self.batches)

    @property
    def has_coref(self) -> bool:
        return all("coref" in b for b in self.batches)

    def tokens(self, index: int = 0) -> list[str]:
        """Token strings of probe example ``index`` (its real positions only)."""
        b = self.batches[0]
        ids = b["input_ids"][index][b["attention_mask"][index].bool()]
        return [self.id_to_token(int(i)) for i in ids]


@dataclass
class HeadMetrics:
    """Per-head analysis of one model on one probe set (see the module docstring for shapes)."""

    metrics: dict[str, Tensor]
    n_heads: list[int]
    # Per metric (the keys of ``metrics`` that have them), the standard error over probe sequences and the
    # number of sequences it rests on, shaped like the metric (:meth:`~mhaexp.heads.patterns.Ratio.stats`).
    se: dict[str, Tensor] = field(default_factory=dict)
    n: dict[str, Tensor] = field(default_factory=dict)
    relation_names: list[str] = field(default_factory=list)
    syntactic_direction: list[str] = field(default_factory=list)
    layer_metrics: dict[str, Tensor] = field(default_factory=dict)
    js: Tensor | None = None
    mds: Tensor | None = None
    example_patterns: list[Tensor] = field(default_factory=list)  # per layer (H_l, T, T), probe example 0
    example_tokens: list[str] = field(default_factory=list)
    expensive: bool = False

    @property
    def head_index(self) -> list[tuple[int, int]]:
        return [(layer, h) for layer, n in enumerate(self.n_heads) for h in range(n)]


def objective_for(module: Any) -> Objective:
    """The module's own training objective as an :data:`Objective` (masked-LM for bidirectional models).

    Salts are negative and distinct from the validation loop's (-1 - batch_idx), so importance is
    scored on the same masks at every analysis step without reusing validation's draws.
    """
    if module is None or getattr(module.model_cfg, "causal", True):
        return causal_lm_objective
    return lambda batch, index: module.inputs_and_targets(batch, salt=-100_000 - index)


def probe_from_datamodule(datamodule: Any, n_sequences: int, objective: Objective = causal_lm_objective) -> ProbeData:
    """The first ``n_sequences`` probe sequences of an :class:`~mhaexp.data.LMDataModule` (all of them when
    its probe set holds fewer), in its batches."""
    datamodule.setup()
    batches: list[Batch] = []
    left = max(1, n_sequences)
    for batch in datamodule.probe_dataloader():
        batches.append({k: v[:left] for k, v in batch.items() if isinstance(v, Tensor)})
        left -= len(batches[-1]["input_ids"])
        if left <= 0:
            break
    tok = datamodule.tokenizer
    source = getattr(datamodule, "source", None)
    try:
        freq = datamodule.token_frequencies()
    except Exception:  # a datamodule without a train split still has everything else
        freq = None
    return ProbeData(
        batches=batches,
        relations=list(getattr(datamodule, "relations", []) or []),
        id_to_token=tok.id_to_token,
        special_ids=special_ids(tok),
        bos_id=tok.bos_id,
        vocab_size=datamodule.vocab_size,
        token_freq=freq,
        repeated=getattr(source, "repeat_offset", None) is not None,
        objective=objective,
        eos_id=getattr(tok, "eos_id", None),
    )


def special_ids(tok: Any) -> frozenset[int]:
    return frozenset(
        int(getattr(tok, n))
        for n in ("pad_id", "bos_id", "eos_id", "mask_id", "unk_id")
        if getattr(tok, n, None) is not None
    )


# Clark et al. 2019 (Sec. 3.2, Fig. 2) measure attention to periods and commas ("." or ","); a piece's
# word-boundary marks (WordPiece ##, SentencePiece ▁, byte-level Ġ) are not part of it.
PUNCTUATION = frozenset({".", ","})
_PIECE_MARKS = ("##", "\u2581", "\u0120")


def token_class_keys(probe: ProbeData, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``(B, T)`` bool key masks of the token classes Clark et al. 2019 (Sec. 3.2) measure attention to:
    ``cls_keys`` (BOS / [CLS]), ``sep_keys`` (EOS / [SEP]) and ``punct_keys`` (periods and commas), real
    positions only. A class the probe never holds is left out (its metric is not computed, not zero)."""
    real = mask.bool()
    out = {"cls_keys": (ids == probe.bos_id) & real}
    if probe.eos_id is not None:
        out["sep_keys"] = (ids == probe.eos_id) & real
    punct = [
        i
        for i in torch.unique(ids[real]).tolist()
        if i not in probe.special_ids and _strip_marks(probe.id_to_token(int(i))) in PUNCTUATION
    ]
    if punct:
        out["punct_keys"] = torch.isin(ids, torch.tensor(punct, dtype=ids.dtype)) & real
    return {k: v for k, v in out.items() if bool(v.any())}


def _strip_marks(piece: str) -> str:
    for mark in _PIECE_MARKS:
        piece = piece.removeprefix(mark)
    return piece


def repeated_random_batch(probe: ProbeData, seq_len: int, n: int, seed: int = 0) -> Batch:
    """Olsson et al. (2022) induction protocol: BOS + x + x, x drawn without replacement from the
    non-special vocabulary with a fixed seed (the same sequences at every analysis step)."""
    half = (seq_len - 1) // 2
    pool = [i for i in range(probe.vocab_size) if i not in probe.special_ids]
    rng = random.Random(f"mhaexp-analysis-induction/{seed}")
    rows = []
    for _ in range(n):
        x = rng.sample(pool, half) if half <= len(pool) else [rng.choice(pool) for _ in range(half)]
        rows.append([probe.bos_id, *x, *x])
    ids = torch.tensor(rows, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}


@torch.no_grad()
def collect_patterns(model: torch.nn.Module, batch: Mapping[str, Tensor]) -> list[Tensor]:
    """One eval-mode forward with ``need_weights=True``: per-layer patterns ``(B, nh_l, T, T)``.

    The model's train/eval mode is restored afterwards. Inputs are the raw ids (no masked-LM
    corruption): heads are analysed on the text itself, as Clark et al. (2019) do for BERT.
    """
    device = next(model.parameters()).device
    with eval_mode(model):
        _, patterns = model(
            batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), need_weights=True
        )
    return [p.float() for p in patterns]


def _cat_batches(batches: Sequence[Batch]) -> Batch:
    """One batch from several, right-padding to the longest T (pads are masked out everywhere)."""
    T = max(b["input_ids"].shape[1] for b in batches)
    fill = {"attention_mask": False, "heads": -1, "rels": -1, "coref": -1, "word_of_token": -1}
    keys = set.intersection(*(set(b) for b in batches))
    out = {}
    for k in keys:
        parts = [F.pad(b[k], (0, T - b[k].shape[1]), value=fill.get(k, 0)) for b in batches]
        out[k] = torch.cat(parts)
    return out


def _per_layer(values: Sequence[Tensor], width: int) -> Tensor:
    """Stack per-layer ``(H_l, ...)`` results into ``(L, H, ...)``, NaN where a layer has fewer heads."""
    rest = values[0].shape[1:]
    out = torch.full((len(values), width, *rest), float("nan"))
    for layer, v in enumerate(values):
        out[layer, : v.shape[0]] = v.detach().float().cpu()
    return out


def _pick_directions(heads: Tensor, mask: Tensor, rels: Tensor, n_rel: int, causal: bool, mode: str) -> list[str]:
    """Per relation, how its arcs are scored: ``dep2head``, ``head2dep``, ``transposed`` or ``predictive``.

    * ``dep2head`` / ``head2dep``: Clark et al. (2019) / Voita et al. (2019), query = dependent / head.
    * ``transposed``: Clark et al.'s other direction ("head<-dep" in their notebook): per dependent, the
      word that attends to it most (the argmax of its column) is the predicted head.
    * ``predictive`` (causal models): query = the position that predicts the later word of the arc,
      target = the earlier word (:func:`~mhaexp.heads.patterns.predictive_arcs`).
    * ``visible`` (causal models): per relation, the one of dep2head / head2dep a causal head can see
      (dep2head when most gold heads precede their dependent, "prep" -> its verb; head2dep otherwise,
      the verb looking back at its "nsubj").
    * ``auto``: ``predictive`` on a causal model, ``dep2head`` on a bidirectional one. A causal LM
      uses an arc when it predicts the arc's later word, one position before that word; scored at
      the word itself, subject-verb agreement heads are invisible (see the ``direction`` comment in
      conf/analysis/default.yaml).

    ``predictive`` and ``visible`` mean nothing for bidirectional models, which fall back to dep2head.
    """
    if mode not in DIRECTIONS:
        raise ValueError(f"analysis.direction must be one of {', '.join(DIRECTIONS)}; got {mode!r}")
    if mode in ("dep2head", "head2dep", "transposed"):
        return [mode] * n_rel
    if not causal:
        return ["dep2head"] * n_rel
    if mode in ("auto", "predictive"):
        return ["predictive"] * n_rel
    pos = torch.arange(heads.shape[1])
    arc = mask & (heads >= 0) & (rels >= 0)
    backward = arc & (heads < pos)
    out = []
    for r in range(n_rel):
        sel = arc & (rels == r)
        out.append("dep2head" if int((backward & sel).sum()) * 2 >= int(sel.sum()) else "head2dep")
    return out


def _baselines(
    targets: Tensor, directions: Sequence[str], mask: Tensor, cfg: Mapping[str, Any], causal: bool
) -> dict[str, Tensor]:
    """``offset`` (R,), ``position`` (R,) and their maximum, ``combined``: the bar a head must clear.
    Head2dep relations have no position baseline (NaN): a governor has several dependents.

    A transposed relation predicts the dependent's head as dep2head does, so it meets dep2head's baselines,
    always the bidirectional ones: in a causal model only a later word can attend to the dependent, and the
    causal baselines (earlier words only) would be a bar for the other arcs. All offsets make a bar at least
    as high as any fair one."""
    offset, pos = [], []
    for t, d in zip(targets, directions, strict=True):
        one = torch.where(t >= 0, 0, -1)
        scored = "head2dep" if d == "head2dep" else "dep2head"
        causal_r = causal and d != "transposed"
        offset.append(M.offset_baseline(t, one, 1, mask, int(cfg["max_offset"]), scored, causal=causal_r)[0][0].float())
        pos.append(M.position_baseline(t[None], mask, causal_r)[0])
    off = torch.stack(offset)
    pos = torch.stack(pos)
    pos = torch.where(torch.tensor([d == "head2dep" for d in directions]), torch.full_like(pos, float("nan")), pos)
    combined = torch.fmax(off, pos) if cfg["position_baseline"] else off
    return {"offset": off, "position": pos, "combined": combined}


def _syntax_setup(
    batch: Batch, relations: Sequence[str], cfg: Mapping[str, Any], causal: bool
) -> tuple[list[str], list[str], Tensor, dict[str, Tensor]]:
    """Relation names, per-relation directions, the ``(R, B, T)`` query -> gold key arrays (predictive
    arcs already re-anchored) and the baselines (:func:`_baselines`). A function of the probe only."""
    mask = batch["attention_mask"].bool()
    heads, rels = batch["heads"].long(), batch["rels"].long()
    names = list(relations)
    mode = str(cfg["direction"])
    directions = _pick_directions(heads, mask, rels, len(names), causal, mode)
    targets = [torch.where(rels == r, heads, -1) for r in range(len(names))]
    derived = M.derived_amod_pred(heads, rels, names)
    if derived is not None and "amod:pred" not in names:
        names.append("amod:pred")
        directions += _pick_directions(derived, mask, torch.where(derived >= 0, 0, -1), 1, causal, mode)
        targets.append(derived)
    targets = [M.predictive_arcs(t) if d == "predictive" else t for t, d in zip(targets, directions, strict=True)]
    stacked = torch.stack(targets)
    return names, directions, stacked, _baselines(stacked, directions, mask, cfg, causal)


def _syntax_targets(
    batch: Batch, probe: ProbeData, cfg: Mapping[str, Any], causal: bool
) -> tuple[list[str], list[str], Tensor, dict[str, Tensor]]:
    """:func:`_syntax_setup` of the probe, computed once per probe and direction setting."""
    key = ("syntax", str(cfg["direction"]), int(cfg["max_offset"]), bool(cfg["position_baseline"]), causal)
    if key not in probe.cache:
        probe.cache[key] = _syntax_setup(batch, probe.relations, cfg, causal)
    return probe.cache[key]


def _syntax_outputs(bases: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The baselines of the syntactic role: ``syntactic_baseline`` is the bar (the larger of the two)."""
    return {
        "syntactic_baseline": bases["combined"].clone(),
        "syntactic_offset_baseline": bases["offset"].clone(),
        "syntactic_position_baseline": bases["position"].clone(),
    }


def _coref_baselines(batch: Batch, probe: ProbeData, cfg: Mapping[str, Any], causal: bool) -> dict[str, Tensor]:
    key = ("coref", int(cfg["max_offset"]), bool(cfg["position_baseline"]), causal)
    if key not in probe.cache:
        mask, coref = batch["attention_mask"].bool(), batch["coref"].long()
        probe.cache[key] = _baselines(coref[None], ["dep2head"], mask, cfg, causal)
    return probe.cache[key]


def _coref_outputs(bases: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {
        "coreference_baseline": bases["combined"][0].cpu(),
        "coreference_offset_baseline": bases["offset"][0].cpu(),
        "coreference_position_baseline": bases["position"][0].cpu(),
    }


def _copying(model: Any, vocab_size: int) -> list[Tensor]:
    # The OV circuit over the data's tokens only: an imported embedding is often padded past its tokenizer
    # (Pythia: 50277 tokens in 50304 rows), and rows no token reads would enter W_U W_E.
    W_E = model.tok_emb.weight.detach()[:vocab_size]
    W_U = model.lm_head.weight.detach()[:vocab_size].T
    out = []
    for attn in model.attention_layers:
        d, hs = attn.d_model, attn.head_dim
        W_V = attn.split_qkv(attn.qkv_proj.weight.detach())[2].view(attn.n_kv_heads, hs, d).transpose(1, 2)
        # The gate scales the head's output: a gated-off head has a zero OV circuit (NaN score).
        W_O = attn.o_proj.weight.detach().view(d, attn.n_heads, hs).permute(1, 2, 0)
        W_O = W_O * attn.gates().detach().to(W_O.dtype)[:, None, None]
        out.append(copying_score(W_E, W_U, W_V, W_O))
    return out


# One layer's patterns of one micro-batch hold at most this many values (64 MB of float32): sequences are
# analysed in micro-batches of max(1, PATTERN_CHUNK_ELEMENTS // (H T^2)) rows, one layer at a time. The
# grammar probe batch (64 x 37, 8 heads) is one micro-batch; at T = 1024 a micro-batch is 2 sequences.
PATTERN_CHUNK_ELEMENTS = 2**24
# Tokens per forward + backward of gradient importance (activations and logits of a micro-batch).
IMPORTANCE_CHUNK_TOKENS = 4096


class _Sums:
    """Per metric and layer, the :class:`~mhaexp.heads.patterns.Ratio` summed over the chunks seen so far."""

    def __init__(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self.parts: dict[str, list[M.Ratio | None]] = {}

    def add(self, key: str, layer: int, value: M.Ratio) -> None:
        slot = self.parts.setdefault(key, [None] * self.n_layers)
        slot[layer] = value if slot[layer] is None else slot[layer] + value

    def __contains__(self, key: str) -> bool:
        return key in self.parts

    def values(self, key: str) -> list[Tensor]:
        return [r.value() for r in self.parts[key] if r is not None]

    def stats(self, keys: Sequence[str]) -> dict[str, list[Stats]]:
        """Per key, per layer, ``(value, se, n)`` of the summed ratio (:meth:`~mhaexp.heads.patterns.Ratio.stats`),
        finished together (:func:`~mhaexp.heads.patterns.ratio_stats`)."""
        return M.ratio_stats({k: [r for r in self.parts[k] if r is not None] for k in keys})


TOKEN_CLASSES = ("cls_keys", "sep_keys", "punct_keys")  # the key masks of token_class_keys

# One layer's ``(value, standard error, n)`` of a metric; se and n None for metrics without them.
Stats = tuple[Tensor, Tensor | None, Tensor | None]


class ChunkInputs:
    """What a metric's streaming function (:attr:`mhaexp.analysis.registry.Metric.sums`) may ask for by name
    (:attr:`~mhaexp.analysis.registry.Metric.needs`), for one layer's chunk of probe rows. None: the probe
    lacks it, and the metrics needing it are not computed. ``words`` (word-level attention) is made on
    first use."""

    def __init__(self, chunk: M.Chunk, thresholds: Mapping[str, Any], **inputs: Any) -> None:
        self.chunk = chunk
        self.thresholds = thresholds
        self.sub: Batch = inputs.pop("sub", {})
        self.tokens: Tensor | None = inputs.pop("tokens", None)
        for name in (
            "token_freq",
            "max_offset",
            "streaming_window",
            "syntax_targets",
            "syntax_directions",
            "coref",
            "arc_keys",
        ):
            setattr(self, name, inputs.pop(name, None))
        for name in ("needle", "answer", "generated"):
            setattr(self, name, self.sub.get(name) if "generated" in self.sub else None)
        for name in TOKEN_CLASSES:  # token_class_keys: absent when the probe holds no such token
            setattr(self, name, self.sub.get(name))
        if self.needle is not None:
            self.needle, self.answer = self.needle.bool(), self.answer.bool()
        if inputs:
            raise TypeError(f"unknown chunk inputs: {sorted(inputs)}")
        self._results: dict[Any, Any] = {}

    @cached_property
    def words(self) -> M.Chunk:
        return _word_chunk(self.chunk, self.sub, self.chunk.causal, frame_keys=self.arc_keys != "words")

    def get(self, need: str) -> Any:
        if need.startswith("thresholds."):
            return float(self.thresholds[need.split(".", 1)[1]])
        return getattr(self, need)

    def run(self, metric: Metric) -> M.Ratio | None:
        """``metric``'s ratio on this chunk; None when an input is missing. Metrics naming the same function
        with the same inputs share one call (``repeat_sums`` gives four metrics from one pass)."""
        args = [self.get(n) for n in metric.needs]
        if any(a is None for a in args):
            return None
        key = (metric.sums, metric.needs)
        if key not in self._results:
            self._results[key] = metric.function()(*args)
        result = self._results[key]
        return result if metric.pick is None else result[metric.pick]


def best_offset_stats(per_layer: Sequence[Stats], cfg: Mapping[str, Any]) -> dict[str, list[Stats]]:
    """``positional_frac`` and ``positional_offset`` from the relative-position profile (``argmax_frac``
    ``(H, 2k + 1)`` per layer): each head's best offset and its share, with that share's SE and n."""
    frac_out, offset_out = [], []
    for value, se, n in per_layer:
        offset, frac = M.best_offset(value, int(cfg["max_offset"]))
        at = (offset + int(cfg["max_offset"]))[:, None]
        frac_out.append(
            (frac, None if se is None else se.gather(-1, at)[:, 0], None if n is None else n.gather(-1, at)[:, 0])
        )
        offset_out.append((offset.float(), None, None))
    return {"positional_frac": frac_out, "positional_offset": offset_out}


def estimate_stats(per_layer: Sequence[SentenceValues]) -> list[Stats]:
    """Gradient importance and ablation, per head or per GQA group (:mod:`mhaexp.heads.importance`), as
    ``(value, se, n)`` per layer: the mean over probe sentences, its standard error over them and their
    number, from each layer's :class:`~mhaexp.heads.importance.SentenceValues`."""
    out: list[Stats] = []
    for r in per_layer:
        mean = r.mean().float()
        out.append((mean, r.se().float(), torch.full_like(mean, float(r.n))))
    return out


def _pattern_chunks(
    model: Any,
    batches: Sequence[Batch],
    T: int,  # noqa: N803
    chunk_elements: int,
    device: torch.device,
) -> Iterator[tuple[int, int, Tensor]]:
    """``(first row, layer, patterns (b, H_l, T, T) float)`` over the rows of ``batches`` (rows numbered
    across batches), in micro-batches of sequences and one layer at a time, right-padded to ``T`` as
    :func:`_cat_batches` pads the batches. The caller holds eval mode and no_grad."""
    rows = max(1, chunk_elements // (max(a.n_heads for a in model.attention_layers) * T * T))
    start = 0
    for b in batches:
        ids, mask = b["input_ids"], b["attention_mask"]
        pad = T - ids.shape[1]
        for s in range(0, ids.shape[0], rows):
            sub_ids, sub_mask = ids[s : s + rows].to(device), mask[s : s + rows].to(device)
            for layer, w in enumerate(model.layer_patterns(sub_ids, sub_mask)):
                w = w.float()
                yield start + s, layer, F.pad(w, (0, pad, 0, pad)) if pad else w
        start += ids.shape[0]


def _word_chunk(chunk: M.Chunk, sub: Batch, causal: bool, frame_keys: bool = True) -> M.Chunk:
    """The chunk as arcs see it: word-level attention (:func:`word_attention`) when the probe splits words.
    Without ``frame_keys`` (``analysis.arc_keys=words``) the frame's units (BOS/[CLS], EOS/[SEP]) leave the
    mask, so a head's most-attended key is the most-attended word: no arc ends on the frame, so only the
    argmax moves, never the arcs or the baselines."""
    frame = None
    if not frame_keys:
        frame = torch.zeros_like(chunk.mask)
        for name in ("cls_keys", "sep_keys"):
            if name in sub:
                frame = frame | sub[name].bool()
    if "word_of_token" not in sub:
        return chunk if frame is None else M.Chunk(chunk.patterns, chunk.mask & ~frame, causal)
    words = sub["word_of_token"]
    mask = word_mask(words)
    if frame is not None:
        mask = mask & ~word_mask(torch.where(frame, words, -1), mask.shape[1])
    return M.Chunk(word_attention(chunk.patterns, words), mask, causal)


def _can_share_forward(model: Any, probe: ProbeData, seq_len: int, chunk_elements: int) -> bool:
    """Whether gradient importance's forwards can also give the patterns: the causal objective (its inputs
    are the probe's own ids; masked LM corrupts them), and every probe batch small enough to be one
    micro-batch of patterns and of importance tokens."""
    rows = chunk_elements // (max(a.n_heads for a in model.attention_layers) * seq_len**2)
    return probe.objective is causal_lm_objective and all(
        b["input_ids"].shape[0] <= rows and b["input_ids"].numel() <= IMPORTANCE_CHUNK_TOKENS for b in probe.batches
    )


def compute_head_metrics(
    model: Any,
    probe: ProbeData,
    analysis_cfg: Mapping[str, Any],
    *,
    expensive: bool = True,
    importance: bool = True,
    chunk_elements: int = PATTERN_CHUNK_ELEMENTS,
) -> HeadMetrics:
    """Every per-head metric of ``model`` on ``probe`` (see the module docstring).

    ``analysis_cfg`` is ``conf/analysis`` (``max_offset``, ``thresholds.positional``, ``direction``,
    ``induction_sequences``, ``js_sequences``, ``seed``). ``model`` is a :class:`~mhaexp.nn.model.Transformer`.

    Streaming: no layer's patterns of the whole probe exist at once. Sequences go through the model in
    micro-batches (at most ``chunk_elements`` pattern values per layer), one layer at a time
    (:meth:`~mhaexp.nn.model.Transformer.layer_patterns`); every metric is a sum and a count
    (:class:`~mhaexp.heads.patterns.Ratio`) added up over the micro-batches, so the result equals the
    metrics of the whole patterns up to float summation order.
    """
    cfg = analysis_cfg
    max_offset = int(cfg["max_offset"])
    layers = model.attention_layers
    n_heads = [a.n_heads for a in layers]
    H, L = max(n_heads), len(layers)
    causal = bool(model.cfg.causal)
    device = next(model.parameters()).device
    batch = _cat_batches(probe.batches)
    T = batch["input_ids"].shape[1]
    mask = batch["attention_mask"].bool()
    on = {k: v.to(device) for k, v in batch.items()}
    on["attention_mask"] = mask.to(device)
    on.update({k: v.to(device) for k, v in token_class_keys(probe, batch["input_ids"], mask).items()})
    window = int(cfg["streaming_window"])
    thresholds = cfg["thresholds"]
    streamed = [m for m in registry.METRICS if m.sums is not None and m.tier == "cheap"]
    on_repeats = [m for m in streamed if m.on == "repeats"]
    on_probe = [m for m in streamed if m.on == "probe" or probe.repeated]
    if causal and "needle" in batch and "answer" in batch:  # retrieval heads: the answer is generated
        on["generated"] = _generated(model, probe.batches, T, device)
    # Arcs join words: score them on word-level patterns (identical to the token ones for one-piece words).
    word_batch = {**batch, "attention_mask": word_mask(batch["word_of_token"])} if "word_of_token" in batch else batch
    syntax = _syntax_targets(word_batch, probe, cfg, causal) if probe.has_syntax else None
    targets = syntax[2].to(device) if syntax else None
    has_coref = probe.has_coref and bool((batch["coref"] >= 0).any())
    n_js = max(1, int(cfg["js_sequences"]))
    t_js = max(1, int(mask[:n_js].sum(dim=1).max()))
    n_first = int(mask[0].sum())
    # Massive activations are read on the JS sequences, cut to their extent (nothing real lies beyond).
    n_massive = min(n_js, mask.shape[0])
    t_massive = group_extent(mask, torch.arange(n_massive))
    resid: list[Tensor] = []  # their residual stream per layer, when the importance forwards give it

    sums = _Sums(L)
    example: list[Tensor] = []
    js_rows: list[Tensor] = []  # the JS sequences' slices of the current micro-batch, one per layer

    def consume(rows: Tensor, layer: int, p: Tensor) -> None:
        """Add one layer's patterns of the probe rows ``rows`` to the sums (and keep what the result shows).
        ``p`` may be cut to the rows' extent (``t <= T``): no real token lies beyond it, so every metric's
        sums are those of the padded patterns."""
        nonlocal js_rows
        rows = rows.to(device)
        t = p.shape[-1]
        sub = {k: v[rows, :t] for k, v in on.items()}
        inputs = ChunkInputs(
            M.Chunk(p, sub["attention_mask"], causal),
            thresholds,
            sub=sub,
            tokens=sub["input_ids"],
            token_freq=probe.token_freq,
            max_offset=max_offset,
            streaming_window=window if window * 4 <= T else None,
            syntax_targets=None if syntax is None else targets[:, rows, :t],
            syntax_directions=None if syntax is None else syntax[1],
            coref=sub["coref"].long() if has_coref else None,
            arc_keys=str(cfg["arc_keys"]),
        )
        for metric in on_probe:
            ratio = inputs.run(metric)
            if ratio is not None:
                sums.add(metric.name, layer, ratio)
        first = (rows == 0).nonzero()
        if len(first):
            example.append(p[int(first[0]), :, :n_first, :n_first].cpu().clone())
        js_sel = rows < n_js
        if expensive and bool(js_sel.any()):
            js_rows.append(p[js_sel][:, :, :t_js, :t_js])
            if layer == L - 1:  # every layer of these sequences: compare all heads
                flat = torch.cat(js_rows, dim=1)  # (b, N, t, t), head l*H_l + h in layer order
                sums.add("js", 0, js_divergence_sums(flat, sub["attention_mask"][js_sel][:, :t_js]))
                js_rows = []

    grads = None
    batches_d = _to(probe.batches, device)
    if importance and _can_share_forward(model, probe, T, chunk_elements):
        # One forward serves both: the importance forward takes the explicit path and hands its patterns over.
        starts = [0]
        for b in probe.batches:
            starts.append(starts[-1] + b["input_ids"].shape[0])

        # The massive-activation rows' residual stream comes from the same forwards (Sun et al. read it
        # from any forward of the sequences): rows beyond a group's extent are pads, left at 0 and masked.
        resid = [torch.zeros(n_massive, t_massive, model.cfg.d_model, device=device) for _ in range(L)]
        leaving: list[Tensor] = []  # each block's output in the current forward
        hooks = [b.register_forward_hook(lambda _m, _i, out: leaving.append(out[0].detach())) for b in model.blocks]

        def on_patterns(index: int, ps: list[Tensor], rows: Tensor) -> None:
            for layer, w in enumerate(ps):
                consume(starts[index] + rows, layer, w.float())
            rows_g = (starts[index] + rows).to(device)
            keep = rows_g < n_massive
            if bool(keep.any()):
                t = min(t_massive, leaving[0].shape[1])
                for layer, x in enumerate(leaving):
                    resid[layer][rows_g[keep], :t] = x[keep, :t].float()
            leaving.clear()

        groups = _row_groups(probe)
        try:
            grads = importance_values(model, batches_d, probe.objective, on_patterns=on_patterns, groups=groups)
        finally:
            for hook in hooks:
                hook.remove()
    with eval_mode(model), torch.no_grad():
        if grads is None:
            for row, layer, p in _pattern_chunks(model, probe.batches, T, chunk_elements, device):
                consume(torch.arange(row, row + p.shape[0]), layer, p)
                del p

        # Induction and duplicate-token heads need repeats to look at.
        if not probe.repeated:
            rep = repeated_random_batch(probe, T, int(cfg["induction_sequences"]), int(cfg["seed"]))
            rep_ids, rep_mask = rep["input_ids"].to(device), rep["attention_mask"].bool().to(device)
            T_rep = rep_ids.shape[1]
            for row, layer, p in _pattern_chunks(model, [rep], T_rep, chunk_elements, device):
                rows = slice(row, row + p.shape[0])
                inputs = ChunkInputs(M.Chunk(p, rep_mask[rows], causal), thresholds, tokens=rep_ids[rows])
                for metric in on_repeats:
                    ratio = inputs.run(metric)
                    if ratio is not None:
                        sums.add(metric.name, layer, ratio)
                del p

    result = HeadMetrics({}, n_heads, expensive=expensive)
    gqa = any(a.n_kv_heads < a.n_heads for a in layers)
    if importance and grads is None:
        grads = importance_values(model, batches_d, probe.objective, max_tokens=IMPORTANCE_CHUNK_TOKENS)
    # Everything the cheap tier computes, by name; the registry's order is the result's (and so the tables').
    computed: dict[str, list[Stats]] = {}
    finished = sums.stats([m.name for m in streamed if m.name in sums])
    for metric in streamed:
        if metric.name in finished:
            per_layer = finished[metric.name]
            if metric.finish is not None:
                computed.update(resolve(metric.finish)(per_layer, cfg))
            else:
                computed[metric.name] = per_layer
    computed["copying"] = [(c, None, None) for c in _copying(model, probe.vocab_size)]
    if importance:
        computed["importance"] = estimate_stats(grads)
        if gqa:
            per_group = estimate_stats(group_importance_values(model, batches_d, probe.objective))
            computed["group_importance"] = _per_head_stats(per_group, model)
    for metric in registry.METRICS:
        if metric.name in computed:
            _put(result, metric.name, computed[metric.name], H)
        if metric.name == "syntactic_accuracy" and syntax is not None:
            result.relation_names, result.syntactic_direction = list(syntax[0]), list(syntax[1])
            result.metrics.update(_syntax_outputs(syntax[3]))
        if metric.name == "coreference" and has_coref:
            result.metrics.update(_coref_outputs(_coref_baselines(word_batch, probe, cfg, causal)))
    with eval_mode(model), torch.no_grad():
        ids_m, mask_m = on["input_ids"][:n_massive, :t_massive], on["attention_mask"][:n_massive, :t_massive]
        stream = resid or model.residual_stream(ids_m, mask_m)
        result.layer_metrics.update(_massive(stream, mask_m, float(cfg["massive_ratio"])))
    result.example_patterns = example
    result.example_tokens = probe.tokens(0)
    if expensive:
        _expensive(model, probe, sums.values("js")[0].cpu(), result, H)
    return result


def _put(result: HeadMetrics, name: str, per_layer: Sequence[Stats], width: int) -> None:
    """Metric ``name`` into ``result`` as ``(L, H[, ...])`` tensors: value, and se and n where it has them."""
    result.metrics[name] = _per_layer([v for v, _, _ in per_layer], width)
    if registry.metric(name).se and all(se is not None for _, se, _ in per_layer):
        result.se[name] = _per_layer([se for _, se, _ in per_layer], width)
        result.n[name] = _per_layer([n for _, _, n in per_layer], width)


def _per_head_stats(per_group: Sequence[Stats], model: Any) -> list[Stats]:
    """A per-KV-group ``(value, se, n)`` (``(n_kv_heads,)`` each, per layer): each query head gets its group's three."""
    groups = kv_groups(model)
    return [
        tuple(None if t is None else t[grp.to(t.device)] for t in stats)  # type: ignore[misc]
        for stats, grp in zip(per_group, groups, strict=True)
    ]


def _massive(resid: Sequence[Tensor], mask: Tensor, ratio: float) -> dict[str, Tensor]:
    """Per layer: how many massive activations (Sun et al. 2024, > ``ratio`` x the layer's median magnitude)
    the residual stream ``resid`` (per layer ``(B, T, d)``) holds on its real tokens, how many sit on the
    first token, the largest ratio to the median, and the position and dimension of the largest activation."""
    keys = ("massive_count", "massive_on_sink", "massive_max_ratio", "massive_top_position", "massive_top_dim")
    rows: dict[str, list[float]] = {k: [] for k in keys}
    real = mask.bool()
    for layer, x in enumerate(resid):
        found = massive_activations(x, real, ratio=ratio, layer=layer)
        mag = x.float().abs().masked_fill(~real[..., None], 0.0)  # (B, T, d)
        _, t, d = torch.unravel_index(mag.argmax(), mag.shape)
        rows["massive_count"].append(float(found.count))
        rows["massive_on_sink"].append(float(found.on_sink))
        rows["massive_max_ratio"].append(float(mag.max()) / found.median if found.median > 0 else float("nan"))
        rows["massive_top_position"].append(float(t))
        rows["massive_top_dim"].append(float(d))
    return {k: torch.tensor(v) for k, v in rows.items()}


def js_within_across(js: Tensor, n_heads: Sequence[int]) -> dict[str, Tensor]:
    """Per layer, the mean JS divergence between two of its heads (``js_within``) and between one of its
    heads and a head of another layer (``js_across``): Clark et al. 2019 (Sec. 6) find heads of one layer
    behaving alike. ``js`` is the ``(N, N)`` head matrix in layer order."""
    layer_of = torch.cat([torch.full((n,), i) for i, n in enumerate(n_heads)])
    same = layer_of[:, None] == layer_of[None, :]
    off_diag = ~torch.eye(len(layer_of), dtype=torch.bool)
    within, across = [], []
    for i in range(len(n_heads)):
        rows = layer_of == i
        w = js[rows][:, rows][off_diag[rows][:, rows]]
        a = js[rows][:, ~same[rows][0]] if len(n_heads) > 1 else js.new_empty(0)
        within.append(float(w.mean()) if w.numel() else float("nan"))
        across.append(float(a.mean()) if a.numel() else float("nan"))
    return {"js_within": torch.tensor(within), "js_across": torch.tensor(across)}


def _row_groups(probe: ProbeData) -> list[list[Tensor]]:
    """:func:`~mhaexp.heads.evaluation.row_groups` of each probe batch: a function of the probe's masks,
    computed once per probe."""
    if "row_groups" not in probe.cache:
        probe.cache["row_groups"] = [row_groups(b["attention_mask"]) for b in probe.batches]
    return probe.cache["row_groups"]


def _ablation_batches(probe: ProbeData, device: torch.device) -> list[Batch]:
    """The probe batches for ablation: with the causal objective, each row group (:func:`_row_groups`) as
    a batch cut to its extent (ablation sums losses over batches, so the groups give the same score); the
    masked-LM objective draws its masks per batch index, so its batches stay as they are."""
    if probe.objective is not causal_lm_objective:
        return _to(probe.batches, device)
    out = []
    for b, groups in zip(probe.batches, _row_groups(probe), strict=True):
        for rows in groups:
            t = group_extent(b["attention_mask"], rows)
            out.append({k: b[k][rows, :t].to(device) for k in ("input_ids", "attention_mask")})
    return out


def _generated(model: Any, batches: Sequence[Batch], length: int, device: torch.device) -> Tensor:
    """(N, length) the model's greedy token at each probe position: the token a retrieval head must copy
    (:func:`~mhaexp.heads.longctx.retrieval_score`). Right-padded with -1, which no key holds."""
    out = []
    with eval_mode(model), torch.no_grad():
        for b in batches:
            ids = b["input_ids"].to(device)
            logits, _ = model(ids, attention_mask=b["attention_mask"].bool().to(device))
            out.append(F.pad(logits.argmax(-1), (0, length - ids.shape[1]), value=-1))
    return torch.cat(out)


def _to(batches: Sequence[Batch], device: torch.device) -> list[Batch]:
    return [{k: v.to(device) for k, v in b.items()} for b in batches]


def _expensive(model: Any, probe: ProbeData, js: Tensor, result: HeadMetrics, width: int) -> None:
    """Ablation, JS divergence (streamed by :func:`compute_head_metrics`) + MDS, GQA group diversity
    (into ``result``).

    JS compares every pair of heads on every query: O(N^2 B T^2). The first ``js_sequences`` sequences are
    plenty, and cutting the padding columns off (right padding: nothing real lies past the longest of
    them) divides the cost by (T / longest)^2 without changing a value.
    """
    device = next(model.parameters()).device
    ablation = ablation_values(model, _ablation_batches(probe, device), probe.objective)
    _put(result, "ablation", estimate_stats(ablation), width)
    result.js = js
    result.mds = mds_embedding(js.clamp_min(0).sqrt(), dim=2) if js.shape[0] >= 2 else None
    nearest = js + torch.diag(torch.full((js.shape[0],), float("inf")))
    nearest_by_head = nearest.min(dim=1).values if js.shape[0] >= 2 else torch.full((js.shape[0],), float("nan"))
    per, start = [], 0
    ratio, within, across = [], [], []
    for attn in model.attention_layers:
        k = attn.n_heads
        per.append(nearest_by_head[start : start + k])
        if attn.n_kv_heads < k:
            div = gqa_group_diversity(js[start : start + k, start : start + k], attn.n_kv_heads)
        else:
            div = {"within": float("nan"), "across": float("nan"), "ratio": float("nan")}
        within.append(div["within"])
        across.append(div["across"])
        ratio.append(div["ratio"])
        start += k
    result.metrics["js_nearest"] = _per_layer(per, width)
    result.layer_metrics.update(js_within_across(js, result.n_heads))
    if result.mds is not None:
        xs, ys, start = [], [], 0
        for k in result.n_heads:
            xs.append(result.mds[start : start + k, 0])
            ys.append(result.mds[start : start + k, 1])
            start += k
        result.metrics["mds_x"] = _per_layer(xs, width)
        result.metrics["mds_y"] = _per_layer(ys, width)
    if any(a.n_kv_heads < a.n_heads for a in model.attention_layers):
        result.layer_metrics.update(
            {"gqa_within": torch.tensor(within), "gqa_across": torch.tensor(across), "gqa_ratio": torch.tensor(ratio)}
        )
        groups = group_ablation_values(model, _to(probe.batches, device), probe.objective)
        _put(result, "group_ablation", _per_head_stats(estimate_stats(groups), model), width)
