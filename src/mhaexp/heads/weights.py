"""Per-head metrics computed from weights alone (no data): the OV-circuit copying score.

Orientation (row vectors, as ``x @ W`` in our code; the paper writes the transposed column form)::

    W_E  (V, d)          token embedding: one-hot row e -> e @ W_E
    W_V  (H, d, hd)      residual -> value of head h
    W_O  (H, hd, d)      head output -> residual
    W_U  (d, V)          residual -> logits (``W_E.T`` for tied embeddings)

Head h's OV circuit, token in -> logit out, is the V x V matrix ``M_h = W_E W_V^h W_O^h W_U`` (the
transpose of Elhage et al.'s ``W_U W_O^h W_V^h W_E``; transposition keeps eigenvalues).

For the v rows ``w_v`` of the fused ``qkv_proj`` weight (shape ``(n_kv * hd, d)``, from
``MultiHeadAttention.split_qkv``), ``W_V = w_v.view(n_kv, hd, d).transpose(1, 2)``; for ``o_proj`` with weight
``(d, H * hd)``, ``W_O = o_proj.weight.view(d, H, hd).permute(1, 2, 0)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mhaexp.nn.shapes import kv_heads


# Capitalised names follow the paper notation (W_E, W_U, W_V, W_O).
def copying_score(W_E: Tensor, W_U: Tensor, W_V: Tensor, W_O: Tensor) -> Tensor:  # noqa: N803
    """Copying score of each head's OV circuit (Elhage et al. 2021, "A Mathematical Framework for
    Transformer Circuits", section "Copying / Primitive Retrieval").

    ``score_h = sum_i Re(lambda_i) / sum_i |lambda_i|`` over the eigenvalues of ``M_h`` (see the module
    docstring). +1: every eigenvalue is positive real, the head raises the logit of the token it
    attends to (copying); -1: it suppresses it.

    ``M_h = (W_E W_V^h)(W_O^h W_U)`` has rank at most ``hd``, and the nonzero eigenvalues of a product
    ``AB`` equal those of ``BA``. So the eigenvalues come from the ``hd x hd`` matrix
    ``W_O^h (W_U W_E) W_V^h``; the zero eigenvalues it drops add nothing to either sum. Cost:
    one ``d x d`` product shared by all heads, then ``H`` small eigendecompositions.

    GQA: pass ``W_V`` already expanded to one slice per query head, or with one slice per KV head; in
    the latter case query head h uses KV head ``h // (H // n_kv)`` (mhaexp's grouping).

    Args:
        W_E: ``(V, d)``.
        W_U: ``(d, V)``.
        W_V: ``(H, d, hd)`` or ``(n_kv, d, hd)``.
        W_O: ``(H, hd, d)``.

    Returns:
        ``(H,)`` in [-1, 1]; NaN for a head whose OV circuit is zero.
    """
    if W_E.dim() != 2 or W_U.dim() != 2 or W_E.shape[1] != W_U.shape[0] or W_E.shape[0] != W_U.shape[1]:
        raise ValueError(f"need W_E (V, d) and W_U (d, V); got {tuple(W_E.shape)} and {tuple(W_U.shape)}")
    if W_V.dim() != 3 or W_O.dim() != 3:
        raise ValueError(f"need W_V (H, d, hd) and W_O (H, hd, d); got {tuple(W_V.shape)} and {tuple(W_O.shape)}")
    n_heads, n_kv = W_O.shape[0], W_V.shape[0]
    if n_kv != n_heads:
        if n_heads % n_kv != 0:
            raise ValueError(f"W_V has {n_kv} heads, which does not divide W_O's {n_heads} query heads")
        W_V = W_V[torch.tensor(kv_heads(n_heads, n_kv))]  # each query head's K/V head's W_V
    # float64: sums of eigenvalues of near-singular products lose sign information in float32.
    dtype = torch.float64
    through_vocab = W_U.to(dtype) @ W_E.to(dtype)  # (d, d): the V-sized part, computed once
    small = W_O.to(dtype) @ through_vocab @ W_V.to(dtype)  # (H, hd, hd)
    eig = torch.linalg.eigvals(small)  # (H, hd) complex
    magnitude = eig.abs().sum(-1)
    score = torch.where(magnitude > 0, eig.real.sum(-1) / magnitude.clamp_min(1e-300), torch.nan)
    return score.to(W_O.dtype if W_O.is_floating_point() else torch.float32)
