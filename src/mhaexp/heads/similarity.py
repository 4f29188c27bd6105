"""How alike heads attend: pairwise Jensen-Shannon divergence, an MDS map, and GQA group diversity."""

from __future__ import annotations

import torch
from torch import Tensor

from mhaexp.heads.patterns import Ratio, _prepare


def js_divergence_matrix(
    patterns_all: Tensor,
    mask: Tensor | None = None,
    *,
    smoothing: float = 0.0,
    max_chunk_elements: int = 2**24,
) -> Tensor:
    """Mean Jensen-Shannon divergence between the attention distributions of every pair of heads
    (Clark et al. 2019, "What Does BERT Look At?", Sec. 6).

    For heads i, j and a real query q of sequence b, with rows ``p = A_i[b, q]``, ``r = A_j[b, q]`` and
    ``m = (p + r) / 2``::

        JS_q(i, j) = 0.5 * KL(p || m) + 0.5 * KL(r || m)        (nats, in [0, log 2])
        D[i, j]    = mean of JS_q(i, j) over all real queries of the batch

    Heads of all layers are compared, so pass ``patterns_all`` with layers and heads flattened into
    one axis, ``N = L * H`` (``torch.cat`` over layers along dim 1; head ``l * H + h``).

    Clark et al. sum over queries instead of averaging, and smooth each row as
    ``0.999 * a + 0.001 / T`` (``smoothing=0.001``) before comparing; the default here is no smoothing,
    which JS does not need (it stays finite on zeros). Smoothing spreads mass over the sequence's real
    keys.

    Memory: head pairs are processed in blocks so that one block's temporaries hold about
    ``max_chunk_elements`` values; the full ``(B, N, N, T, T)`` tensor is never built.

    Args:
        patterns_all: ``(B, N, T, T)``.
        mask: ``(B, T)`` bool, True on real tokens.

    Returns:
        ``(N, N)`` symmetric, zero diagonal.
    """
    return js_divergence_sums(patterns_all, mask, smoothing=smoothing, max_chunk_elements=max_chunk_elements).value()


def js_divergence_sums(
    patterns_all: Tensor,
    mask: Tensor | None = None,
    *,
    smoothing: float = 0.0,
    max_chunk_elements: int = 2**24,
) -> Ratio:
    """:func:`js_divergence_matrix` as a :class:`~mhaexp.heads.patterns.Ratio`: the ``(N, N)`` sum of
    ``JS_q(i, j)`` over the real queries, and their count. Sequences in micro-batches add up."""
    patterns_all, mask = _prepare(patterns_all, mask)
    if smoothing:
        keys = mask.to(patterns_all.dtype)
        uniform = keys / keys.sum(-1, keepdim=True).clamp_min(1)
        patterns_all = (1.0 - smoothing) * patterns_all + smoothing * uniform[:, None, None, :]
    B, N, T, _ = patterns_all.shape
    query_weight = mask.to(torch.float64)
    n_queries = query_weight.sum().to(patterns_all.dtype)
    # JS = H(m) - (H(p) + H(r)) / 2 with H the row entropy: each head's H once, then one xlogy per pair (of
    # the upper triangle only; D is symmetric) instead of two logs and two divisions. float64: the
    # difference of entropies cancels, and identical rows give m == p bit for bit, so exactly 0.
    pats = patterns_all.to(torch.float64)
    ent = -torch.special.xlogy(pats, pats).sum(-1)  # (B, N, T)
    block = max(1, max_chunk_elements // (B * T * T))
    out = torch.zeros(N, N, dtype=torch.float64, device=patterns_all.device)
    for i in range(N):
        p = pats[:, i : i + 1]  # (B, 1, T, T)
        for j0 in range(i + 1, N, block):
            r = pats[:, j0 : j0 + block]  # (B, bj, T, T)
            m = (p + r) * 0.5
            js = -torch.special.xlogy(m, m).sum(-1) - 0.5 * (ent[:, i : i + 1] + ent[:, j0 : j0 + block])
            total = torch.einsum("bjq,bq->j", js, query_weight)
            out[i, j0 : j0 + block] = total
            out[j0 : j0 + block, i] = total
    out = out.to(patterns_all.dtype)
    return Ratio(out, n_queries)


def mds_embedding(D: Tensor, dim: int = 2, seed: int = 0) -> Tensor:  # noqa: N803 (D: the usual name of a distance matrix)
    """Classical (Torgerson) multidimensional scaling of a distance matrix.

    ``B = -1/2 J D^2 J`` with ``J = I - 11^T / N``; the embedding is the top ``dim`` eigenvectors of B
    scaled by the square roots of their (clamped non-negative) eigenvalues. Exact for Euclidean
    distances. Clark et al. (2019, Fig. 6) map heads with MDS over JS divergences; note that
    ``sqrt(JS)`` is a metric (Endres & Schindelin 2003) while JS itself is not, so ``D = js.sqrt()`` is
    the better input.

    Deterministic: ``eigh`` has no randomness and each axis's sign is fixed so that its largest-magnitude
    coordinate is positive. ``seed`` is accepted for signature parity with sklearn's SMACOF ``MDS``
    (which Clark et al. used and which needs it) and does not change the result.

    Returns:
        ``(N, dim)``, in D's dtype.
    """
    del seed  # classical MDS has no random initialisation
    if D.dim() != 2 or D.shape[0] != D.shape[1]:
        raise ValueError(f"D must be square (N, N); got {tuple(D.shape)}")
    N = D.shape[0]
    if not 1 <= dim <= N:
        raise ValueError(f"dim must be in 1..{N}; got {dim}")
    D64 = D.to(torch.float64)
    J = torch.eye(N, dtype=torch.float64, device=D.device) - 1.0 / N
    gram = -0.5 * J @ (D64**2) @ J
    gram = (gram + gram.T) / 2  # eigh assumes symmetry; remove rounding asymmetry
    values, vectors = torch.linalg.eigh(gram)  # ascending
    values, vectors = values.flip(0)[:dim], vectors.flip(1)[:, :dim]
    pivot = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[pivot, torch.arange(dim, device=D.device)])
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    coords = vectors * signs * values.clamp_min(0).sqrt()
    return coords.to(D.dtype if D.is_floating_point() else torch.float32)


def gqa_group_diversity(js: Tensor, n_kv_heads: int) -> dict[str, float]:
    """Do query heads that share a K/V head attend alike? Mean pairwise JS within vs across GQA groups.

    Query head h reads K/V head ``h // (H // n_kv_heads)`` (mhaexp's GQA layout, as in Llama). Over
    unordered pairs i < j of one layer's heads:

    * ``within``: mean ``js[i, j]`` over pairs in the same group (NaN when groups have one head, MHA).
    * ``across``: mean over pairs in different groups (NaN when there is one group, MQA).
    * ``ratio``: ``within / across``; below 1 means shared K/V heads pull their query heads together.

    Args:
        js: ``(H, H)`` divergences among one layer's query heads (a diagonal block of
            :func:`js_divergence_matrix`).
        n_kv_heads: K/V heads of that layer; must divide H.
    """
    if js.dim() != 2 or js.shape[0] != js.shape[1]:
        raise ValueError(f"js must be square (H, H); got {tuple(js.shape)}")
    H = js.shape[0]
    if n_kv_heads <= 0 or H % n_kv_heads != 0:
        raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={H}")
    group = torch.arange(H, device=js.device) // (H // n_kv_heads)
    i, j = torch.triu_indices(H, H, offset=1, device=js.device)
    values = js[i, j].to(torch.float64)
    same = group[i] == group[j]

    def mean(selected: Tensor) -> float:
        return float(selected.mean()) if selected.numel() else float("nan")

    within, across = mean(values[same]), mean(values[~same])
    ratio = within / across if across > 0 else float("nan")  # NaN > 0 is False
    return {"within": within, "across": across, "ratio": ratio}
