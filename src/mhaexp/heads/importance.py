"""Head importance measures: one score per head, higher = more important = pruned later.

Every function takes a :class:`~mhaexp.nn.model.Transformer` and a list of held-out batches (dicts with
``input_ids`` (B, T) and ``attention_mask`` (B, T) bool, True on real tokens) and returns one 1-D
tensor per layer (layers may have different head counts). The model is put in eval mode for the
estimate and given back in the mode it was in; parameters' ``.grad`` is never touched, so a
ranking can run in the middle of training.

Criteria:

* ``importance`` (Michel et al. 2019, "Are Sixteen Heads Really Better than One?", eq. 2):
  ``I_h = E_x |dL(x)/dxi_h|`` with ``xi_h`` the head's gate (our ``head_gate``). As in their code
  the absolute value is taken per batch of the batch-mean loss.
* ``ablation``: ``Delta_h = L(gate_h = 0) - L``, the loss increase when the head alone is removed
  (Michel et al. 2019, Sec. 3.2, Table 1). Batched: the residual stream entering layer ``l`` is
  computed once, and the copies with one head of layer ``l`` removed each run only layers
  ``l..L-1``, stacked along the batch dimension.
* ``entropy``: minus the head's mean attention entropy over real queries, so the most diffuse heads
  (near-uniform attention, Clark et al. 2019's "broad" heads) go first.

The criteria that need no model (``random``, ``role``) and the dispatch by name live in
:mod:`mhaexp.pruning.criteria`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from mhaexp.heads.patterns import entropy
from mhaexp.nn.model import Transformer
from mhaexp.nn.objectives import IGNORE, Batch, Objective, causal_lm_objective


def layer_sizes(model: Transformer) -> list[int]:
    """Query heads per layer."""
    return [layer.n_heads for layer in model.attention_layers]


@contextmanager
def eval_mode(model: Transformer):
    """Eval mode (no dropout, deterministic L0 gates) for the duration, then the previous mode."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


# Called with (batch index, every layer's detached pattern of the batch's inputs, the batch's rows they are of)
# by a forward that computes the explicit patterns anyway: the analysis shares the importance forward instead
# of running its own. Patterns of a row group are cut to the group's extent (see ``groups``).
PatternSink = Callable[[int, list[Tensor], Tensor], None]


def _token_losses(
    model: Transformer, batch: Batch, index: int, objective: Objective, on_patterns: PatternSink | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(per-token loss (B, T), correct (B, T) bool, scored (B, T) bool)."""
    inputs, targets = objective(batch, index)
    logits, patterns = model(inputs, attention_mask=batch["attention_mask"], need_weights=on_patterns is not None)
    if on_patterns is not None:
        on_patterns(index, [p.detach() for p in patterns], torch.arange(inputs.shape[0]))
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="none")
    scored = targets != IGNORE
    return loss.view(targets.shape), logits.argmax(-1) == targets, scored


@torch.no_grad()
def evaluate(
    model: Transformer, batches: Sequence[Batch], objective: Objective = causal_lm_objective
) -> tuple[float, float]:
    """Token-weighted mean loss and accuracy over ``batches`` (every scored token weighs the same)."""
    total = correct = count = 0.0
    with eval_mode(model):
        for i, batch in enumerate(batches):
            loss, right, scored = _token_losses(model, batch, i, objective)
            total += float(loss[scored].sum())
            correct += float(right[scored].sum())
            count += float(scored.sum())
    return total / max(count, 1.0), correct / max(count, 1.0)


def batch_loss(
    model: Transformer,
    batch: Batch,
    index: int = 0,
    objective: Objective = causal_lm_objective,
    on_patterns: PatternSink | None = None,
) -> Tensor:
    """Mean loss over the batch's scored tokens (differentiable)."""
    loss, _, scored = _token_losses(model, batch, index, objective, on_patterns)
    return loss[scored].sum() / scored.sum().clamp_min(1)


def _gate_gradients(
    model: Transformer,
    batches: Sequence[Batch],
    objective: Objective,
    max_tokens: int | None = None,
    on_patterns: PatternSink | None = None,
    groups: Sequence[Sequence[Tensor]] | None = None,
) -> list[list[Tensor]]:
    """Per batch, the signed ``dL/d head_gate`` of every layer (the weights' ``.grad`` untouched).

    ``max_tokens``: run each batch in micro-batches of about that many tokens (memory). The gradient of the
    batch-mean loss is the sum of the micro-batches' gradients of their summed loss over the batch's count.
    ``groups``: per batch, row groups (index tensors) run as micro-batches the same way, each cut to the
    extent of its real tokens (:func:`row_groups`); ``max_tokens`` is then ignored.
    """
    layers = model.attention_layers
    gates = [layer.head_gate for layer in layers]
    out = []
    with eval_mode(model), torch.enable_grad():
        for layer in layers:
            layer.head_gate.requires_grad_(True)
        try:
            for i, batch in enumerate(batches):
                B, T = batch["attention_mask"].shape
                rows = B if max_tokens is None else max(1, max_tokens // T)
                if groups is not None:
                    grads = _grouped_gradients(model, batch, i, objective, gates, groups[i], on_patterns)
                elif rows >= B:
                    loss = batch_loss(model, batch, i, objective, on_patterns)
                    # autograd.grad, not backward: the weights' .grad must stay as training left them.
                    grads = [g.detach().float().cpu() for g in torch.autograd.grad(loss, gates)]
                elif on_patterns is not None:
                    raise ValueError("on_patterns needs whole-batch forwards: max_tokens below the batch's tokens")
                else:
                    inputs, targets = objective(batch, i)  # the whole batch's draws (masked LM)
                    count = (targets != IGNORE).sum().clamp_min(1)
                    grads = [torch.zeros(g.shape) for g in gates]
                    for s in range(0, B, rows):
                        logits, _ = model(inputs[s : s + rows], attention_mask=batch["attention_mask"][s : s + rows])
                        t = targets[s : s + rows].flatten()
                        loss = F.cross_entropy(logits.flatten(0, 1).float(), t, ignore_index=IGNORE, reduction="sum")
                        for acc, g in zip(grads, torch.autograd.grad(loss / count, gates), strict=True):
                            acc += g.detach().float().cpu()
                out.append(grads)
        finally:
            for layer in layers:
                layer.head_gate.requires_grad_(False)
    return out


def row_groups(mask: Tensor, overhead_tokens: int = 192) -> list[Tensor]:
    """The rows of a batch in groups of similar extent (last real token + 1), for forwards cut to each
    group's extent: pads cost as much as tokens in every matmul, and a batch of sentences padded to its
    longest is often half pads. Rows are independent (no real token sees a pad: causal or key-padding
    masks), so what the groups compute adds up to what the whole batch computes. The grouping minimizes
    sum(rows x extent) plus ``overhead_tokens`` per group (the fixed cost of one more forward); a function
    of the mask alone."""
    B, T = mask.shape
    real = mask.bool()
    extent = torch.where(real.any(1), T - real.flip(1).int().argmax(1), torch.zeros(B, dtype=torch.long))
    order = torch.argsort(extent, stable=True)
    ext = extent[order].tolist()
    best, cut = [0.0] + [math.inf] * B, [0] * (B + 1)
    for j in range(1, B + 1):
        for i in range(j):
            cost = best[i] + (j - i) * ext[j - 1] + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out, j = [], B
    while j > 0:
        out.append(order[cut[j] : j])
        j = cut[j]
    return out[::-1]


def group_extent(mask: Tensor, rows: Tensor) -> int:
    """How far the real tokens of ``rows`` reach (at least 1): the width a group's forward is cut to."""
    real = mask[rows].bool()
    cols = real.any(0).nonzero()
    return int(cols[-1]) + 1 if len(cols) else 1


def _grouped_gradients(
    model: Transformer,
    batch: Batch,
    index: int,
    objective: Objective,
    gates: Sequence[Tensor],
    groups: Sequence[Tensor],
    on_patterns: PatternSink | None,
) -> list[Tensor]:
    """``dL/d head_gate`` of the batch-mean loss, one forward + backward per row group cut to its extent."""
    inputs, targets = objective(batch, index)  # the whole batch's draws (masked LM)
    mask = batch["attention_mask"]
    count = (targets != IGNORE).sum().clamp_min(1)
    grads = [torch.zeros(g.shape) for g in gates]
    for rows in groups:
        t = group_extent(mask, rows)
        sub = rows.to(inputs.device)
        logits, patterns = model(inputs[sub, :t], attention_mask=mask[sub, :t], need_weights=on_patterns is not None)
        if on_patterns is not None:
            on_patterns(index, [p.detach() for p in patterns], rows)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), targets[sub, :t].flatten(), ignore_index=IGNORE, reduction="sum"
        )
        for acc, g in zip(grads, torch.autograd.grad(loss / count, gates), strict=True):
            acc += g.detach().float().cpu()
    return grads


def gradient_importance(
    model: Transformer,
    batches: Sequence[Batch],
    objective: Objective = causal_lm_objective,
    max_tokens: int | None = None,
    on_patterns: PatternSink | None = None,
    groups: Sequence[Sequence[Tensor]] | None = None,
) -> list[Tensor]:
    """Michel et al. 2019's head importance ``I_h = E_x |dL/dxi_h|``, ``xi_h`` = ``head_gate[h]``.

    ``max_tokens`` bounds the tokens of one forward + backward (the same gradient, in micro-batches).
    ``groups`` (per batch, from :func:`row_groups`): the same gradient from forwards cut to each row group's
    extent. ``on_patterns``: the forwards take the explicit-attention path and hand their patterns to it
    (whole batches or row groups only); the gradient is the same function, computed along the other
    attention path.
    """
    sizes = layer_sizes(model)
    acc = [torch.zeros(n) for n in sizes]
    for grads in _gate_gradients(model, batches, objective, max_tokens, on_patterns, groups):
        for a, g in zip(acc, grads, strict=True):
            a += g.abs()
    return [a / max(1, len(batches)) for a in acc]


def kv_groups(model: Transformer) -> list[Tensor]:
    """Per layer, the K/V head each query head reads: ``h // (n_heads // n_kv_heads)`` (``(H,)`` long)."""
    return [torch.arange(layer.n_heads) // (layer.n_heads // layer.n_kv_heads) for layer in model.attention_layers]


def group_importance(
    model: Transformer, batches: Sequence[Batch], objective: Objective = causal_lm_objective
) -> list[Tensor]:
    """Michel et al. 2019's importance for a GQA group: one gate ``xi_g`` on all query heads sharing
    a K/V head, ``I_g = E_x |dL/dxi_g| = E_x |sum_{h in g} dL/dxi_h|`` (chain rule, all gates at 1).

    Returns one ``(n_kv_heads,)`` tensor per layer. Heads of one group whose gradients cancel make a
    group less important than the sum of its heads' importances.
    """
    groups = kv_groups(model)
    acc = [torch.zeros(int(g.max()) + 1) for g in groups]
    for grads in _gate_gradients(model, batches, objective):
        for a, g, grp in zip(acc, grads, groups, strict=True):
            a += torch.zeros_like(a).index_add_(0, grp, g).abs()
    return [a / max(1, len(batches)) for a in acc]


@torch.no_grad()
def group_ablation(
    model: Transformer, batches: Sequence[Batch], objective: Objective = causal_lm_objective
) -> list[Tensor]:
    """Loss increase when a whole GQA group (every query head reading one K/V head) is gated to 0,
    the group analogue of Michel et al. 2019's single-head ablation (Sec. 3.2). ``(n_kv_heads,)`` per layer."""
    base, _ = evaluate(model, batches, objective)
    out = []
    for layer, grp in zip(model.attention_layers, kv_groups(model), strict=True):
        saved = layer.head_gate.detach().clone()
        deltas = []
        try:
            for g in range(int(grp.max()) + 1):
                layer.head_gate.copy_(saved.masked_fill(grp.to(saved.device) == g, 0.0))
                deltas.append(evaluate(model, batches, objective)[0] - base)
        finally:
            layer.head_gate.copy_(saved)
        out.append(torch.tensor(deltas))
    return out


@torch.no_grad()
def ablation_importance(
    model: Transformer, batches: Sequence[Batch], objective: Objective = causal_lm_objective, max_rows: int = 256
) -> list[Tensor]:
    """Loss increase when each head alone is gated to 0, token-weighted over ``batches``.

    Exact, and cheaper than one full forward per head: the residual stream entering block ``l`` is
    cached from the clean pass; each head's contribution ``c_h`` to block ``l``'s attention output
    comes from one attention pass (:meth:`~mhaexp.nn.attention.MultiHeadAttention.head_contributions`),
    and the copies "output - c_h" for up to ``max_rows // B`` heads run the rest of block ``l`` (its
    attention output is known) and blocks ``l+1..L-1`` together as one batch. Heads already gated to 0
    score 0.
    """
    blocks = model.blocks
    scores = [torch.zeros(b.attn.n_heads) for b in blocks]
    count = 0.0
    with eval_mode(model):
        for bi, batch in enumerate(batches):
            inputs, targets = objective(batch, bi)
            mask = batch["attention_mask"]
            scored = targets != IGNORE
            n_scored = float(scored.sum())
            if n_scored == 0:
                continue
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
            clean = F.cross_entropy(
                logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
            )
            B = inputs.shape[0]
            for li, block in enumerate(blocks):
                attn = block.attn
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
                    loss = (
                        F.cross_entropy(
                            out.flatten(0, 1).float(),
                            targets.repeat(n, 1).flatten(),
                            ignore_index=IGNORE,
                            reduction="none",
                        )
                        .view(n, -1)
                        .sum(1)
                    )
                    for k, h in enumerate(part):
                        scores[li][h] += float(loss[k] - clean)
            count += n_scored
    return [s / max(count, 1.0) for s in scores]


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
