"""Head rankings: one score per head, higher = more important = pruned later.

Every function takes a :class:`~mhaexp.model.Transformer` and a list of held-out batches (dicts with
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
* ``random``: i.i.d. uniform scores from a seeded generator; the same seed gives the same order,
  and re-ranking gives nested pruned sets.
* ``role``: heads that hold a role (from a roles provider, e.g. :mod:`mhaexp.analysis.roles`) score
  above every head without one; a second criterion orders heads within each class (Voita et al.
  2019 keep the "specialized" positional, syntactic and rare-word heads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mhaexp.analysis.metrics import entropy
from mhaexp.model import Transformer
from mhaexp.pruning.schedules import CRITERIA

Batch = dict[str, Tensor]
# (batch, index of the batch in the held-out list) -> (model input ids, targets with IGNORE). The
# index lets a masked-LM objective draw the same masks every time the same batch is re-scored.
Objective = Callable[[Batch, int], tuple[Tensor, Tensor]]
# Roles: {(layer, head): role or [roles]}, or objects / dicts with layer, head, role (HeadRole rows).
Roles = Mapping[tuple[int, int], Any] | Iterable[Any]
RolesProvider = Callable[[Transformer, Sequence[Batch]], Roles]

IGNORE = -100


def causal_lm_objective(batch: Batch, index: int = 0) -> tuple[Tensor, Tensor]:
    """Next-token targets, IGNORE where the next token is padding (same rule as ``LMModule``)."""
    ids, real = batch["input_ids"], batch["attention_mask"].bool()
    targets = ids.roll(-1, dims=1).masked_fill(~real.roll(-1, dims=1), IGNORE)
    targets[:, -1] = IGNORE
    return ids, targets


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


def _token_losses(model: Transformer, batch: Batch, index: int, objective: Objective) -> tuple[Tensor, Tensor, Tensor]:
    """(per-token loss (B, T), correct (B, T) bool, scored (B, T) bool)."""
    inputs, targets = objective(batch, index)
    logits, _ = model(inputs, attention_mask=batch["attention_mask"])  # (B, T, V)
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


def batch_loss(model: Transformer, batch: Batch, index: int = 0, objective: Objective = causal_lm_objective) -> Tensor:
    """Mean loss over the batch's scored tokens (differentiable)."""
    loss, _, scored = _token_losses(model, batch, index, objective)
    return loss[scored].sum() / scored.sum().clamp_min(1)


def gradient_importance(
    model: Transformer, batches: Sequence[Batch], objective: Objective = causal_lm_objective
) -> list[Tensor]:
    """Michel et al. 2019's head importance ``I_h = E_x |dL/dxi_h|``, ``xi_h`` = ``head_gate[h]``."""
    layers = model.attention_layers
    acc = [torch.zeros(layer.n_heads) for layer in layers]
    with eval_mode(model), torch.enable_grad():
        for layer in layers:
            layer.head_gate.requires_grad_(True)
        try:
            for i, batch in enumerate(batches):
                loss = batch_loss(model, batch, i, objective)
                # autograd.grad, not backward: the weights' .grad must stay as training left them.
                grads = torch.autograd.grad(loss, [layer.head_gate for layer in layers])
                for a, g in zip(acc, grads, strict=True):
                    a += g.detach().abs().float().cpu()
        finally:
            for layer in layers:
                layer.head_gate.requires_grad_(False)
    return [a / max(1, len(batches)) for a in acc]


@torch.no_grad()
def ablation_importance(
    model: Transformer, batches: Sequence[Batch], objective: Objective = causal_lm_objective, max_rows: int = 256
) -> list[Tensor]:
    """Loss increase when each head alone is gated to 0, token-weighted over ``batches``.

    Exact, and cheaper than one full forward per head: the residual stream entering block ``l`` is
    cached from the clean pass; each head's contribution ``c_h`` to block ``l``'s attention output
    is measured once (the layer with only that head's gate on, minus the layer with all gates off,
    which leaves the bias), and the copies "output - c_h" for up to ``max_rows // B`` heads run
    blocks ``l..L-1`` together as one batch. Heads already gated to 0 score 0.
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
                contrib = _head_contributions(attn, block.ln_1(cached[li]), mask, heads)  # (n, B, T, d)
                chunk = max(1, max_rows // B)
                for start in range(0, len(heads), chunk):
                    part = heads[start : start + chunk]
                    delta = contrib[start : start + len(part)].flatten(0, 1)  # (n*B, T, d), copy-major
                    n = len(part)
                    hook = attn.register_forward_hook(lambda m, a, out, d=delta: (out[0] - d, out[1]))
                    try:
                        x = cached[li].repeat(n, 1, 1)
                        rep_mask = mask.repeat(n, 1) if mask is not None else None
                        for block_j in blocks[li:]:
                            x, _ = block_j(x, key_padding_mask=rep_mask)
                        out = model.lm_head(model.ln_f(x))  # (n*B, T, V)
                    finally:
                        hook.remove()
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


def _head_contributions(attn: Any, x: Tensor, mask: Tensor | None, heads: Sequence[int]) -> Tensor:
    """What each head adds to the layer's output, ``(len(heads), B, T, d)``, with its current gate."""
    saved = attn.head_gate.clone()
    try:
        attn.head_gate.zero_()
        bias_only, _ = attn(x, key_padding_mask=mask)
        out = []
        for h in heads:
            attn.head_gate.zero_()
            attn.head_gate[h] = saved[h]
            y, _ = attn(x, key_padding_mask=mask)
            out.append(y - bias_only)
    finally:
        attn.head_gate.copy_(saved)
    return torch.stack(out)


def attention_entropy(patterns: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean entropy (nats) of each head's attention rows over real queries: ``(B, H, T, T) -> (H,)``.

    The plain entropy (no smoothing) of :func:`mhaexp.analysis.metrics.entropy`.
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


def random_scores(sizes: Sequence[int], seed: int = 0) -> list[Tensor]:
    """Seeded uniform scores; one generator for all layers so the order is a function of the seed."""
    gen = torch.Generator().manual_seed(int(seed))
    return [torch.rand(n, generator=gen) for n in sizes]


def roles_by_head(roles: Roles) -> dict[tuple[int, int], list[str]]:
    """Normalize a roles description to ``{(layer, head): [role, ...]}``, dropping ``unassigned``."""
    out: dict[tuple[int, int], list[str]] = {}
    if isinstance(roles, Mapping):
        items = [((int(k[0]), int(k[1])), v) for k, v in roles.items()]
        pairs = [(k, r) for k, v in items for r in ([v] if isinstance(v, str) else list(v))]
    else:
        pairs = []
        for row in roles:
            get = row.get if isinstance(row, Mapping) else lambda name, row=row: getattr(row, name)
            pairs.append(((int(get("layer")), int(get("head"))), str(get("role"))))
    for key, role in pairs:
        if role and role != "unassigned":
            out.setdefault(key, []).append(role)
    return out


def role_scores(roles: Roles, sizes: Sequence[int], tiebreak: Sequence[Tensor] | None = None) -> list[Tensor]:
    """1 + (tiebreak rank in [0, 0.5)) for heads holding a role, the same minus 1 for the others.

    The rank, not the raw tie-break score, is added, so any tie-break criterion orders heads within
    a class without ever lifting a role-less head above a role holder.
    """
    held = roles_by_head(roles)
    flat = torch.cat([t.float() for t in tiebreak]) if tiebreak is not None else torch.zeros(sum(sizes))
    rank = torch.empty_like(flat)
    rank[torch.argsort(flat, stable=True)] = torch.arange(len(flat), dtype=flat.dtype)
    rank = 0.5 * rank / max(1, len(flat))
    out, start = [], 0
    for i, n in enumerate(sizes):
        has = torch.tensor([float((i, h) in held) for h in range(n)])
        out.append(has + rank[start : start + n])
        start += n
    return out


def head_scores(
    criterion: str,
    model: Transformer,
    batches: Sequence[Batch],
    objective: Objective = causal_lm_objective,
    seed: int = 0,
    roles: Roles | None = None,
    role_tiebreak: str = "random",
    max_rows: int = 256,
) -> list[Tensor]:
    """Dispatch to the criterion's scoring function (see the module docstring)."""
    sizes = layer_sizes(model)
    if criterion == "importance":
        return gradient_importance(model, batches, objective)
    if criterion == "ablation":
        return ablation_importance(model, batches, objective, max_rows=max_rows)
    if criterion == "entropy":
        return entropy_scores(model, batches, objective)
    if criterion == "random":
        return random_scores(sizes, seed)
    if criterion == "role":
        if roles is None:
            raise ValueError("criterion 'role' needs roles (a roles provider)")
        if role_tiebreak == "role":
            raise ValueError("role_tiebreak cannot be 'role'")
        tiebreak = head_scores(role_tiebreak, model, batches, objective, seed, max_rows=max_rows)
        return role_scores(roles, sizes, tiebreak)
    raise ValueError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
