"""Head importance measures: one score per head, higher = more important = pruned later.

Every function takes a :class:`~mhaexp.nn.model.Transformer` and a list of held-out batches (dicts with
``input_ids`` (B, T) and ``attention_mask`` (B, T) bool, True on real tokens) and returns one 1-D
tensor per layer (layers may have different head counts). The model is put in eval mode for the
estimate and given back in the mode it was in; parameters' ``.grad`` is never touched, so a
ranking can run in the middle of training.

Criteria:

* ``importance`` (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?", Sec. 4.1,
  eq. 2): ``I_h = E_x |dL(x)/dxi_h|``, ``xi_h`` a gate on head ``h``'s output (1: as trained, 0: removed).
  ``L(x)`` is sentence ``x``'s summed next-token (or masked-token) loss. Two estimators:

  - ``per_token`` (the default): their released code (``calculate_head_importance`` in
    ``examples/classifier_eval.py`` of github.com/pmichel31415/pytorch-pretrained-BERT, branch ``paul``,
    the fork their repository are-16-heads-really-better-than-1 points to) gates the head at every token
    separately, takes ``|ctx_t . dL/dctx_t| = |dL(x)/dxi_{h,t}|`` per token, sums over tokens and
    sentences and divides by the number of tokens. We do the same:
    ``I_h = sum_x sum_t |dL(x)/dxi_{h,t}| / sum_x |x|`` over the real tokens ``t`` (their ``L(x)`` is one
    label's loss; a language model predicts every token, so ours sums the sentence's token losses). The
    default: it is what the paper's results were computed with, and a sentence's per-token gradients of
    opposite signs do not cancel (``sum_t |g_t| >= |sum_t g_t|``), so it is the steadier estimate. On the
    default model (seed 0, 1500 steps, the 64-sentence probe; issue 28) its standard error is 6% of the
    mean (median over heads) against 11% per sentence, and its Spearman correlation with ablation over
    the 24 heads 0.74 against 0.70 (0.30 for the old batch-gradient estimate).
  - ``per_sentence``: eq. 2 as written, the absolute value of each sentence's gradient,
    ``I_h = mean_x |sum_t dL(x)/dxi_{h,t}|``.

  Both are sums over sentences of what each sentence alone gives, so batching cannot change them (the
  estimate before this one took ``|d(batch-mean loss)/dxi_h|``, the absolute value of a whole batch's
  gradient, which depends on how sentences are batched). One forward + backward per batch gives every
  token's gradient: the attention layers' ``token_gate`` (ones, ``(B, T, H)``) makes the gate per token.
  :func:`importance_values` gives the per-sentence values behind the mean, its standard error and ``n``.
* ``ablation``: ``Delta_h = L(gate_h = 0) - L``, the loss increase when the head alone is removed
  (Michel et al. 2019, Sec. 3.2, Table 1), token-weighted; :func:`ablation_values` per sentence. Batched:
  the residual stream entering layer ``l`` is computed once, and the copies with one head of layer ``l``
  removed each run only layers ``l..L-1``, stacked along the batch dimension.

Heads gated to 0 (pruned) score 0 on both. Per-sentence values come as :class:`SentenceValues`:
``.mean()`` (the score), ``.se()`` (its standard error over sentences), ``.n``.
* ``entropy``: minus the head's mean attention entropy over real queries, so the most diffuse heads
  (near-uniform attention, Clark et al. 2019's "broad" heads) go first.

The criteria that need no model (``random``, ``role``) and the dispatch by name live in
:mod:`mhaexp.pruning.criteria`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor

from mhaexp.heads.evaluation import eval_mode, group_extent, sequence_losses
from mhaexp.heads.patterns import entropy
from mhaexp.nn.model import Transformer
from mhaexp.nn.objectives import IGNORE, Batch, Objective, causal_lm_objective
from mhaexp.nn.shapes import kv_heads

# How importance averages |dL/dxi| (module docstring): over tokens, as Michel et al.'s code, or over sentences,
# as their eq. 2 reads.
IMPORTANCE_ESTIMATORS = ("per_token", "per_sentence")
DEFAULT_IMPORTANCE_ESTIMATOR = "per_token"


# Called with (batch index, every layer's detached pattern of the batch's inputs, the batch's rows they are of)
# by a forward that computes the explicit patterns anyway: the analysis shares the importance forward instead
# of running its own. Patterns of a row group are cut to the group's extent (see ``groups``).
PatternSink = Callable[[int, list[Tensor], Tensor], None]


def _token_gate_gradients(
    model: Transformer,
    batches: Sequence[Batch],
    objective: Objective,
    max_tokens: int | None = None,
    on_patterns: PatternSink | None = None,
    groups: Sequence[Sequence[Tensor]] | None = None,
) -> Iterator[tuple[list[Tensor], Tensor]]:
    """Per forward: every layer's per-token ``dL(x)/dxi`` ``(rows, T, H)`` and the rows' real tokens ``(rows, T)``.

    ``xi[b, t, h]`` gates head ``h``'s output at token ``t`` of sentence ``b`` (the attention layer's
    ``token_gate``, all ones, on top of ``head_gate``); ``L`` is the summed loss of the forward's scored
    tokens. A sentence's gates reach only its own loss (rows are independent: no real token sees another
    row or a pad), so row ``b`` of the gradient is ``dL(x_b)/dxi`` of sentence ``x_b`` alone, whatever else
    shares the forward: one backward gives every sentence's per-token gradients, and no batching or
    micro-batching can change them. A head gated to 0 gets 0 (its output, hence its gate's effect, is 0).

    ``max_tokens``: forwards of about that many tokens (memory). ``groups``: per batch, row groups (index
    tensors) run as forwards cut to the extent of their real tokens
    (:func:`~mhaexp.heads.evaluation.row_groups`); ``max_tokens`` is then ignored. The weights' ``.grad`` is
    never touched.
    """
    layers = model.attention_layers
    with eval_mode(model), torch.enable_grad():
        for i, batch in enumerate(batches):
            inputs, targets = objective(batch, i)  # the whole batch's draws (masked LM)
            mask = batch["attention_mask"]
            B, T = mask.shape
            if groups is not None:
                parts = [(rows, group_extent(mask, rows)) for rows in groups[i]]
            else:
                step = B if max_tokens is None else max(1, max_tokens // T)
                parts = [(torch.arange(s, min(s + step, B)), T) for s in range(0, B, step)]
            for rows, t in parts:
                sub = rows.to(inputs.device)
                real = mask[sub, :t]
                gates = [
                    torch.ones(len(rows), t, layer.n_heads, device=inputs.device, requires_grad=True)
                    for layer in layers
                ]  # (rows, t, H) each
                for layer, gate in zip(layers, gates, strict=True):
                    layer.token_gate = gate
                try:
                    logits, patterns = model(inputs[sub, :t], attention_mask=real, need_weights=on_patterns is not None)
                finally:
                    for layer in layers:
                        layer.token_gate = None
                if on_patterns is not None:
                    on_patterns(i, [p.detach() for p in patterns], rows)
                loss = F.cross_entropy(
                    logits.flatten(0, 1).float(), targets[sub, :t].flatten(), ignore_index=IGNORE, reduction="sum"
                )
                # autograd.grad, not backward: the weights' .grad must stay as training left them.
                grads = torch.autograd.grad(loss, gates)
                yield [g.detach().double().cpu() for g in grads], real.bool().cpu()


@dataclass(frozen=True)
class SentenceValues:
    """One layer's per-head score, sentence by sentence: what a mean, its standard error and ``n`` come from.

    ``totals`` ``(n, H)``: each sentence's share of the score's numerator; ``weights`` ``(n,)``: its share
    of the denominator (its tokens for a per-token mean, 1 for a per-sentence mean). The estimate pools
    them, ``sum(totals) / sum(weights)``, the token-weighted mean of the papers' code. Only sentences of
    weight > 0 are kept (:func:`sentence_values`); rows follow the order the sentences were scored in.
    """

    totals: Tensor
    weights: Tensor

    @property
    def n(self) -> int:
        """The number of sentences (the sample size behind :meth:`se`)."""
        return int(self.weights.shape[0])

    def values(self) -> Tensor:
        """Each sentence's own value ``totals / weights`` ``(n, H)``, in the units of :meth:`mean`."""
        return self.totals / self.weights[:, None]

    def mean(self) -> Tensor:
        """The estimate ``(H,)`` (float64; zeros when no sentence counts)."""
        w = float(self.weights.sum())
        return self.totals.sum(0) / w if w > 0 else torch.zeros(self.totals.shape[1], dtype=torch.float64)

    def se(self) -> Tensor:
        """Its standard error over sentences ``(H,)`` (NaN below 2 sentences).

        With equal weights, ``scipy.stats.sem`` of the per-sentence values. A token-weighted mean is a
        ratio estimator ``R = sum(t) / sum(w)``; its standard error is the SEM of the linearised values
        ``(t_x - R w_x) / mean(w)`` (Cochran 1977, *Sampling Techniques*, Sec. 6.3), which reduces to the
        former when every weight is 1.
        """
        if self.n < 2:
            return torch.full((self.totals.shape[1],), float("nan"), dtype=torch.float64)
        resid = (self.totals - self.mean() * self.weights[:, None]) / self.weights.mean()
        return torch.from_numpy(np.atleast_1d(stats.sem(resid.numpy(), axis=0)))


def sentence_values(totals: Tensor, weights: Tensor) -> SentenceValues:
    """:class:`SentenceValues` of the sentences of weight > 0 (a sentence without a scored token is no sample)."""
    keep = weights > 0
    return SentenceValues(totals[keep].double(), weights[keep].double())


def _check_estimator(estimator: str) -> None:
    if estimator not in IMPORTANCE_ESTIMATORS:
        raise ValueError(f"unknown importance estimator {estimator!r}; choose one of {IMPORTANCE_ESTIMATORS}")


def _gather(
    forwards: Iterable[tuple[list[Tensor], Tensor]], estimator: str, head_groups: Sequence[Tensor] | None = None
) -> list[SentenceValues]:
    """Per layer, the :class:`SentenceValues` of the per-token gradients of ``forwards``.

    ``per_token``: a sentence's total is ``sum_t |dL(x)/dxi_t|`` over its real tokens, its weight their
    number. ``per_sentence``: ``|sum_t dL(x)/dxi_t| = |dL(x)/dxi|``, weight 1. ``head_groups``: per layer,
    the group of each head (:func:`kv_groups`); a group's per-token gradient is the sum of its heads' (one
    gate on the group: chain rule), taken before the absolute value.
    """
    _check_estimator(estimator)
    totals: list[list[Tensor]] | None = None
    weights: list[Tensor] = []
    for grads, real in forwards:
        if totals is None:
            totals = [[] for _ in grads]
        for li, g in enumerate(grads):  # (rows, T, H)
            if head_groups is not None:
                grp = head_groups[li]
                g = g.new_zeros(*g.shape[:2], int(grp.max()) + 1).index_add_(2, grp, g)  # (rows, T, G)
            g = g * real[..., None]
            totals[li].append(g.abs().sum(1) if estimator == "per_token" else g.sum(1).abs())
        weights.append(real.sum(1).double() if estimator == "per_token" else torch.ones(len(real), dtype=torch.float64))
    if totals is None:
        return []
    w = torch.cat(weights)
    return [sentence_values(torch.cat(t), w) for t in totals]


def importance_values(
    model: Transformer,
    batches: Sequence[Batch],
    objective: Objective = causal_lm_objective,
    estimator: str = DEFAULT_IMPORTANCE_ESTIMATOR,
    max_tokens: int | None = None,
    on_patterns: PatternSink | None = None,
    groups: Sequence[Sequence[Tensor]] | None = None,
) -> list[SentenceValues]:
    """Michel et al. 2019's head importance, per layer, sentence by sentence (see the module docstring):
    ``.mean()`` is the importance, ``.se()`` its standard error, ``.n`` the sentences.

    ``estimator``: ``per_token`` (their code, the default) or ``per_sentence`` (their eq. 2 as written).
    ``max_tokens`` bounds the tokens of one forward + backward. ``groups`` (per batch, from
    :func:`~mhaexp.heads.evaluation.row_groups`): forwards cut to each row group's extent. ``on_patterns``:
    the forwards take the explicit-attention path and hand their patterns to it; the gradient is the same
    function, computed along the other attention path. None of these changes a value.
    """
    _check_estimator(estimator)
    return _gather(_token_gate_gradients(model, batches, objective, max_tokens, on_patterns, groups), estimator)


def gradient_importance(
    model: Transformer,
    batches: Sequence[Batch],
    objective: Objective = causal_lm_objective,
    max_tokens: int | None = None,
    on_patterns: PatternSink | None = None,
    groups: Sequence[Sequence[Tensor]] | None = None,
    estimator: str = DEFAULT_IMPORTANCE_ESTIMATOR,
) -> list[Tensor]:
    """The importance ``(H,)`` of each layer's heads: the means of :func:`importance_values`."""
    values = importance_values(model, batches, objective, estimator, max_tokens, on_patterns, groups)
    return [v.mean().float() for v in values]


def kv_groups(model: Transformer) -> list[Tensor]:
    """Per layer, the K/V head each query head reads (:func:`mhaexp.nn.shapes.kv_heads`, ``(H,)`` long)."""
    return [torch.tensor(kv_heads(layer.n_heads, layer.n_kv_heads)) for layer in model.attention_layers]


def group_importance_values(
    model: Transformer,
    batches: Sequence[Batch],
    objective: Objective = causal_lm_objective,
    estimator: str = DEFAULT_IMPORTANCE_ESTIMATOR,
) -> list[SentenceValues]:
    """Michel et al. 2019's importance for a GQA group, sentence by sentence: one gate ``xi_g`` on all
    query heads sharing a K/V head, so ``dL(x)/dxi_{g,t} = sum_{h in g} dL(x)/dxi_{h,t}`` (chain rule,
    all gates at 1), then the estimator of :func:`importance_values`. ``(n, n_kv_heads)`` per layer.

    Heads of one group whose gradients cancel make a group less important than the sum of its heads'
    importances.
    """
    _check_estimator(estimator)
    return _gather(_token_gate_gradients(model, batches, objective), estimator, kv_groups(model))


def group_importance(
    model: Transformer,
    batches: Sequence[Batch],
    objective: Objective = causal_lm_objective,
    estimator: str = DEFAULT_IMPORTANCE_ESTIMATOR,
) -> list[Tensor]:
    """The importance ``(n_kv_heads,)`` of each layer's GQA groups: the means of :func:`group_importance_values`."""
    return [v.mean().float() for v in group_importance_values(model, batches, objective, estimator)]


@torch.no_grad()
def group_ablation_values(
    model: Transformer, batches: Sequence[Batch], objective: Objective = causal_lm_objective
) -> list[SentenceValues]:
    """Loss increase when a whole GQA group (every query head reading one K/V head) is gated to 0, the group
    analogue of Michel et al. 2019's single-head ablation (Sec. 3.2), sentence by sentence as
    :func:`ablation_values`: per layer ``(n, n_kv_heads)`` summed increases, weighted by scored tokens, so
    ``.mean()`` is the token-weighted increase over ``batches`` and ``.se()`` its standard error."""
    base, tokens = sequence_losses(model, batches, objective)
    out = []
    for layer, grp in zip(model.attention_layers, kv_groups(model), strict=True):
        saved = layer.head_gate.detach().clone()
        deltas = []
        try:
            for g in range(int(grp.max()) + 1):
                layer.head_gate.copy_(saved.masked_fill(grp.to(saved.device) == g, 0.0))
                deltas.append(sequence_losses(model, batches, objective)[0] - base)
        finally:
            layer.head_gate.copy_(saved)
        out.append(sentence_values(torch.stack(deltas, dim=1), tokens))
    return out


def group_ablation(
    model: Transformer, batches: Sequence[Batch], objective: Objective = causal_lm_objective
) -> list[Tensor]:
    """The loss increase ``(n_kv_heads,)`` of each layer's GQA groups: the means of :func:`group_ablation_values`."""
    return [v.mean().float() for v in group_ablation_values(model, batches, objective)]


@torch.no_grad()
def ablation_values(
    model: Transformer, batches: Sequence[Batch], objective: Objective = causal_lm_objective, max_rows: int = 256
) -> list[SentenceValues]:
    """Loss increase when each head alone is gated to 0, sentence by sentence: per layer, each sentence's
    summed loss increase over its scored tokens (weight: their number), so ``.mean()`` is the token-weighted
    increase over ``batches`` (the corpus loss, as Michel et al. 2019, Sec. 3.2, score the whole test set),
    ``.se()`` its standard error over sentences and ``.n`` the sentences.

    Exact, and cheaper than one full forward per head: the residual stream entering block ``l`` is
    cached from the clean pass; each head's contribution ``c_h`` to block ``l``'s attention output
    comes from one attention pass (:meth:`~mhaexp.nn.attention.MultiHeadAttention.head_contributions`),
    and the copies "output - c_h" for up to ``max_rows // B`` heads run the rest of block ``l`` (its
    attention output is known) and blocks ``l+1..L-1`` together as one batch. Heads already gated to 0
    score 0.
    """
    blocks = model.blocks
    totals: list[list[Tensor]] = [[] for _ in blocks]
    weights: list[Tensor] = []
    with eval_mode(model):
        for bi, batch in enumerate(batches):
            inputs, targets = objective(batch, bi)
            mask = batch["attention_mask"]
            B, T = inputs.shape
            cached: list[Tensor] = []
            hooks = [
                b.register_forward_pre_hook(lambda m, args, kw, c=cached: c.append(args[0]), with_kwargs=True)
                for b in blocks
            ]
            try:
                logits, _ = model(inputs, attention_mask=mask)
            finally:
                for h in hooks:
                    h.remove()
            clean = _sentence_losses(logits, targets)  # (B,)
            for li, block in enumerate(blocks):
                attn = block.attn
                delta = torch.zeros(B, attn.n_heads, dtype=torch.float64)
                totals[li].append(delta)
                gates = attn.gates().detach()
                heads = [h for h in range(attn.n_heads) if float(gates[h]) != 0.0]
                if not heads:
                    continue
                x_in = block.attn_input(cached[li])
                clean_a, _ = attn(x_in, key_padding_mask=mask)  # (B, T, d)
                contrib = attn.head_contributions(x_in, mask)[heads]  # (n, B, T, d)
                chunk = max(1, max_rows // B)
                for start in range(0, len(heads), chunk):
                    part = heads[start : start + chunk]
                    n = len(part)
                    ablated = (clean_a[None] - contrib[start : start + n]).flatten(0, 1)  # (n*B, T, d), copy-major
                    x = block.after_attention(cached[li].repeat(n, 1, 1), ablated)
                    rep_mask = mask.repeat(n, 1) if mask is not None else None
                    for block_j in blocks[li + 1 :]:
                        x, _ = block_j(x, key_padding_mask=rep_mask)
                    out = model.unembed(x)  # (n*B, T, V)
                    loss = _sentence_losses(out, targets.repeat(n, 1)).view(n, B)
                    delta[:, part] = (loss - clean).T.double().cpu()
            weights.append((targets != IGNORE).sum(1).double().cpu())
    if not weights:
        return [sentence_values(torch.zeros(0, b.attn.n_heads), torch.zeros(0)) for b in blocks]
    w = torch.cat(weights)
    return [sentence_values(torch.cat(t), w) for t in totals]


def _sentence_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Each row's summed loss over its scored tokens ``(B,)``: ``(B, T, V), (B, T) -> (B,)``."""
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="none")
    return loss.view(targets.shape).sum(1)


def ablation_importance(
    model: Transformer, batches: Sequence[Batch], objective: Objective = causal_lm_objective, max_rows: int = 256
) -> list[Tensor]:
    """Loss increase when each head alone is gated to 0, token-weighted over ``batches``: the means of
    :func:`ablation_values`."""
    return [v.mean().float() for v in ablation_values(model, batches, objective, max_rows)]


def attention_entropy(patterns: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean entropy (nats) of each head's attention rows over real queries: ``(B, H, T, T) -> (H,)``.

    The plain entropy (no smoothing) of :func:`mhaexp.heads.patterns.entropy`.
    """
    return entropy(patterns.float(), mask, smoothing=0.0)


@torch.no_grad()
def entropy_scores(
    model: Transformer, batches: Sequence[Batch], objective: Objective = causal_lm_objective
) -> list[Tensor]:
    """Minus the mean attention entropy of each head (pruning the most diffuse heads first)."""
    sums = [torch.zeros(layer.n_heads) for layer in model.attention_layers]
    with eval_mode(model):
        for i, batch in enumerate(batches):
            inputs, _ = objective(batch, i)
            _, patterns = model(inputs, attention_mask=batch["attention_mask"], need_weights=True)
            for s, p in zip(sums, patterns, strict=True):
                s += attention_entropy(p, batch["attention_mask"]).cpu()
    return [-s / max(1, len(batches)) for s in sums]


def normalize_by_layer(scores: Sequence[Tensor], live: Sequence[Tensor] | None = None) -> list[Tensor]:
    """Divide each layer's scores by their L2 norm over its live heads.

    Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?", Sec. 4.1: "we normalize the
    importance scores by layer (using the l2 norm)", so a global ranking does not simply empty the layer
    whose gradients are smallest. ``live[l]`` (bool, one per head) leaves pruned heads out of the norm;
    a layer whose live scores are all zero stays zero. Layers may have different head counts.
    """
    out = []
    for i, s in enumerate(scores):
        s = s.float()
        mask = live[i] if live is not None else torch.ones(len(s), dtype=torch.bool)
        norm = torch.linalg.vector_norm(s[mask]) if bool(mask.any()) else s.new_zeros(())
        out.append(s / norm if norm > 0 else torch.zeros_like(s))
    return out
