"""Per-head metrics on hand-built attention patterns whose right answers are known exactly."""

from __future__ import annotations

import math

import pytest
import torch

from mhaexp.heads import (
    antecedent_accuracy,
    confidence,
    copying_score,
    dependency_accuracy,
    duplicate_matching_score,
    duplicate_token_score,
    entropy,
    gqa_group_diversity,
    induction_score,
    is_causal,
    js_divergence_matrix,
    mds_embedding,
    normalize_by_layer,
    normalized_entropy,
    offset_baseline,
    positional_heads,
    prefix_matching_score,
    previous_token_score,
    rare_token_score,
    relative_position_profile,
    sink_rate,
    sink_score,
    syntactic_heads,
)

LOG2 = math.log(2.0)


# ------------------------------------------------------------------------------------------------
# Pattern builders
# ------------------------------------------------------------------------------------------------


def onehot_pattern(targets: list[list[int]]) -> torch.Tensor:
    """(1, H, T, T): head h's query q attends only to key ``targets[h][q]``."""
    H, T = len(targets), len(targets[0])
    A = torch.zeros(1, H, T, T)
    for h, row in enumerate(targets):
        A[0, h, torch.arange(T), torch.tensor(row)] = 1.0
    return A


def prev_targets(n: int) -> list[int]:
    return [max(q - 1, 0) for q in range(n)]


def uniform(n: int, causal: bool) -> torch.Tensor:
    """(1, 1, n, n) uniform over visible keys."""
    A = torch.ones(n, n)
    if causal:
        A = A.tril()
    return (A / A.sum(-1, keepdim=True))[None, None]


def random_pattern(batch: int, n_heads: int, n: int, causal: bool, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, n_heads, n, n, generator=g)
    if causal:
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return logits.softmax(-1)


def pad(attn: torch.Tensor, n_pad: int, tokens: torch.Tensor | None = None):
    """Append ``n_pad`` pad positions: 0 weight on pad keys, NaN in pad query rows (the worst a softmax
    over no visible key produces). Returns (patterns, mask[, tokens])."""
    B, H, T, _ = attn.shape
    out = torch.zeros(B, H, T + n_pad, T + n_pad)
    out[:, :, :T, :T] = attn
    out[:, :, T:, :] = float("nan")
    mask = torch.zeros(B, T + n_pad, dtype=torch.bool)
    mask[:, :T] = True
    if tokens is None:
        return out, mask
    return out, mask, torch.cat([tokens, torch.full((B, n_pad), -100)], dim=1)


# A repeated random sequence: BOS, r_1..r_n, r_1..r_n (the standard induction probe).
N_REP = 8
REP_TOKENS = torch.tensor([[0] + list(range(11, 11 + N_REP)) * 2])
T_REP = 2 * N_REP + 1


def induction_targets(first_half: str) -> list[int]:
    """Second copy attends to the token after the earlier copy; first half to BOS or itself."""
    rows = [0 if first_half == "bos" else q for q in range(N_REP + 1)]
    return rows + [i + 1 for i in range(1, N_REP + 1)]


def duplicate_targets() -> list[int]:
    return list(range(N_REP + 1)) + list(range(1, N_REP + 1))


# ------------------------------------------------------------------------------------------------
# 1-2. Entropy and confidence
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
def test_uniform_entropy_is_log_visible_keys(causal: bool) -> None:
    T = 7
    A = uniform(T, causal)
    n_visible = torch.arange(1, T + 1).double() if causal else torch.full((T,), float(T), dtype=torch.float64)
    expected = torch.log(n_visible).mean()
    # Clark's smoothing spreads mass over visible keys only, so a uniform row stays exactly uniform.
    assert entropy(A, causal=causal).item() == pytest.approx(expected.item(), abs=1e-6)
    assert entropy(A, causal=causal, smoothing=0.0).item() == pytest.approx(expected.item(), abs=1e-6)
    assert normalized_entropy(A, causal=causal).item() == pytest.approx(1.0, abs=1e-6)
    assert confidence(A).item() == pytest.approx((1.0 / n_visible).mean().item(), abs=1e-6)


def test_onehot_entropy_and_clark_smoothing() -> None:
    A = onehot_pattern([prev_targets(6)])
    assert entropy(A, smoothing=0.0).item() == 0.0
    assert normalized_entropy(A, smoothing=0.0).item() == 0.0
    assert confidence(A).item() == 1.0
    # Default smoothing reproduces Clark et al.'s notebook on an unpadded bidirectional map:
    # a' = 0.9999 a + 0.0001 / T, entropy averaged over queries.
    B = random_pattern(2, 3, 6, causal=False)
    smoothed = 0.9999 * B + 0.0001 / 6
    clark = -(smoothed * smoothed.log()).sum(-1).mean(dim=(0, 2))
    torch.testing.assert_close(entropy(B), clark)


# ------------------------------------------------------------------------------------------------
# 3. Relative position
# ------------------------------------------------------------------------------------------------


def test_previous_token_profile_and_positional_heads() -> None:
    T = 6
    A = onehot_pattern([prev_targets(T), [0] * T])  # head 1: everything to BOS
    argmax_frac, mean_weight = relative_position_profile(A, max_offset=2)
    assert argmax_frac.shape == (2, 5)
    # Offsets -2..2: the previous-token head's argmax is at -1 for every query that has a key there.
    torch.testing.assert_close(argmax_frac[0], torch.tensor([0.0, 1.0, 1 / T, 0.0, 0.0]))
    torch.testing.assert_close(mean_weight[0], torch.tensor([0.0, 1.0, 1 / T, 0.0, 0.0]))
    # BOS head: query 0 (offset 0), query 1 (offset -1), query 2 (offset -2).
    torch.testing.assert_close(argmax_frac[1], torch.tensor([1 / (T - 2), 1 / (T - 1), 1 / T, 0.0, 0.0]))
    is_pos, offset, frac = positional_heads(A, max_offset=2, threshold=0.9)
    assert is_pos.tolist() == [True, False]
    assert offset[0].item() == -1 and frac[0].item() == 1.0


def test_next_token_head_bidirectional() -> None:
    T = 5
    A = onehot_pattern([[min(q + 1, T - 1) for q in range(T)]])
    argmax_frac, _ = relative_position_profile(A, max_offset=1, causal=False)
    torch.testing.assert_close(argmax_frac[0], torch.tensor([0.0, 1 / T, 1.0]))
    is_pos, offset, _ = positional_heads(A, max_offset=1, threshold=0.9, causal=False)
    assert is_pos.item() and offset.item() == 1


# ------------------------------------------------------------------------------------------------
# 4. TransformerLens detect_head ("mul")
# ------------------------------------------------------------------------------------------------


def tl_detection_patterns(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """TransformerLens's three detection patterns for one sequence, built its way."""
    T = tokens.shape[-1]
    prev = torch.zeros(T, T)
    prev[1:, :-1] = torch.eye(T - 1)
    dup = (tokens[None, :] == tokens[:, None]).float()
    dup.fill_diagonal_(0)
    dup = dup.tril()
    ind = torch.cat([torch.zeros(T, 1), dup.roll(1, dims=1)[:, 1:]], dim=1).tril()
    return {"prev": prev.tril(), "dup": dup, "ind": ind}


def tl_reference(attn: torch.Tensor, tokens: torch.Tensor, kind: str, exclude_bos: bool, exclude_cur: bool):
    """TransformerLens compute_head_attention_similarity_score, head by head, averaged over the batch."""
    scores = torch.zeros(attn.shape[0], attn.shape[1])
    for b in range(attn.shape[0]):
        det = tl_detection_patterns(tokens[b])[kind]
        for h in range(attn.shape[1]):
            a = attn[b, h].clone()  # TransformerLens writes into this tensor; the reference does it on a copy
            if exclude_bos:
                a[:, 0] = 0
            if exclude_cur:
                a.fill_diagonal_(0)
            scores[b, h] = (a * det).sum() / a.sum()
    return scores.mean(0)


SCORERS = {
    "prev": lambda a, tok, m, **kw: previous_token_score(a, m, **kw),
    "dup": lambda a, tok, m, **kw: duplicate_token_score(a, tok, m, **kw),
    "ind": lambda a, tok, m, **kw: induction_score(a, tok, m, **kw),
}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", ["prev", "dup", "ind"])
@pytest.mark.parametrize("exclude_bos", [False, True])
@pytest.mark.parametrize("exclude_cur", [False, True])
def test_detection_scores_match_transformerlens(causal: bool, kind: str, exclude_bos: bool, exclude_cur: bool):
    A = random_pattern(3, 4, 9, causal=causal, seed=1)
    tokens = torch.randint(1, 4, (3, 9), generator=torch.Generator().manual_seed(2))  # many repeats
    tokens[:, 0] = 0
    got = SCORERS[kind](A, tokens, None, exclude_bos=exclude_bos, exclude_current_token=exclude_cur)
    torch.testing.assert_close(got, tl_reference(A, tokens, kind, exclude_bos, exclude_cur))


def test_previous_token_head_scores() -> None:
    T = T_REP
    A = onehot_pattern([prev_targets(T)])
    # Query 0 can only attend to itself, which is not "previous": (T - 1) / T, 1 once the diagonal goes.
    assert previous_token_score(A).item() == pytest.approx((T - 1) / T)
    assert previous_token_score(A, exclude_current_token=True).item() == pytest.approx(1.0)
    assert induction_score(A, REP_TOKENS).item() == 0.0
    assert duplicate_token_score(A, REP_TOKENS).item() == 0.0


def test_planted_induction_and_duplicate_heads() -> None:
    A = onehot_pattern([induction_targets("bos"), duplicate_targets()])
    ind = induction_score(A, REP_TOKENS, exclude_bos=True)
    assert ind.tolist() == [1.0, 0.0]
    # Without exclude_bos the first half's BOS attention counts against it: n / (2n + 1).
    assert induction_score(A, REP_TOKENS)[0].item() == pytest.approx(N_REP / T_REP)
    dup = duplicate_token_score(A, REP_TOKENS, exclude_bos=True, exclude_current_token=True)
    assert dup.tolist() == [0.0, 1.0]


def test_prefix_matching_scores_only_queries_with_an_earlier_copy() -> None:
    # Olsson et al.'s score: a perfect induction head scores 1 whatever its first half does, where
    # the TransformerLens ratio above gives n / (2n + 1) < 0.5 for the same head.
    A = onehot_pattern([induction_targets("bos"), induction_targets("self"), duplicate_targets(), prev_targets(T_REP)])
    assert prefix_matching_score(A, REP_TOKENS).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert duplicate_matching_score(A, REP_TOKENS).tolist() == [0.0, 0.0, 1.0, 0.0]
    # Half the second copy's weight on the target, half on BOS: 0.5.
    half = 0.5 * onehot_pattern([induction_targets("bos")]) + 0.5 * onehot_pattern([[0] * T_REP])
    assert prefix_matching_score(half, REP_TOKENS).item() == pytest.approx(0.5)
    # No repeats: nothing to score.
    assert prefix_matching_score(A[:, :1, :5, :5], torch.tensor([[0, 1, 2, 3, 4]])).isnan().all()


def test_prefix_matching_ignores_padding() -> None:
    A = onehot_pattern([induction_targets("bos"), duplicate_targets()])
    padded, mask, tokens = pad(A, 4, REP_TOKENS)
    # Pad ids equal to real tokens must not create targets.
    tokens[:, T_REP:] = REP_TOKENS[0, 1]
    torch.testing.assert_close(prefix_matching_score(padded, tokens, mask), prefix_matching_score(A, REP_TOKENS))
    torch.testing.assert_close(duplicate_matching_score(padded, tokens, mask), duplicate_matching_score(A, REP_TOKENS))


def test_detection_scores_do_not_modify_inputs() -> None:
    A = random_pattern(2, 3, 8, causal=True)
    tokens = torch.randint(0, 3, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 8, dtype=torch.bool)
    A0, tokens0, mask0 = A.clone(), tokens.clone(), mask.clone()
    for fn in SCORERS.values():
        fn(A, tokens, mask, exclude_bos=True, exclude_current_token=True)
    assert torch.equal(A, A0) and torch.equal(tokens, tokens0) and torch.equal(mask, mask0)


def test_detection_score_is_mean_over_sequences() -> None:
    short, long = random_pattern(1, 2, 5, True, seed=3), random_pattern(1, 2, 8, True, seed=4)
    tok_short, tok_long = torch.tensor([[0, 1, 2, 1, 2]]), torch.tensor([[0, 3, 1, 3, 1, 2, 3, 1]])
    padded, mask, tok_padded = pad(short, 3, tok_short)
    batch = torch.cat([padded, long])
    mask = torch.cat([mask, torch.ones(1, 8, dtype=torch.bool)])
    tokens = torch.cat([tok_padded, tok_long])
    got = induction_score(batch, tokens, mask)
    torch.testing.assert_close(got, (induction_score(short, tok_short) + induction_score(long, tok_long)) / 2)


# ------------------------------------------------------------------------------------------------
# 5. Sinks
# ------------------------------------------------------------------------------------------------


def test_sink_score_and_rate() -> None:
    T = 12
    sink = onehot_pattern([[0] * T])
    assert sink_score(sink).item() == 1.0 and sink_rate(sink, eps=0.3).item() == 1.0
    harmonic = sum(1 / k for k in range(1, T + 1))
    assert sink_score(uniform(T, causal=True)).item() == pytest.approx(harmonic / T)  # 0.259 < 0.3
    batch = torch.cat([sink, uniform(T, causal=True)])
    assert sink_rate(batch, eps=0.3).item() == 0.5
    assert sink_rate(batch, eps=0.2).item() == 1.0


# ------------------------------------------------------------------------------------------------
# 6. Dependency syntax and coreference
# ------------------------------------------------------------------------------------------------

T_DEP = 10
# Relation 0: 2->1, 4->2, 5->4, 7->4, 9->8 (offsets -1 -2 -1 -3 -1). Relation 1: 1->3, 6->8, 8->5 (+2 +2 -3).
DEP_HEADS = torch.tensor([[-1, 3, 1, -1, 2, 4, 8, 4, 5, 8]])
DEP_RELS = torch.tensor([[-1, 1, 0, -1, 0, 0, 1, 0, 1, 0]])


def dep2head_targets() -> list[int]:
    return [h if h >= 0 else q for q, h in enumerate(DEP_HEADS[0].tolist())]


def head2dep_targets() -> list[int]:
    # Governor 4 has two relation-0 dependents (5 and 7) and points at one; 8 governs 9 (rel 0) and 6 (rel 1).
    rows = list(range(T_DEP))
    for g, d in {1: 2, 2: 4, 4: 5, 8: 9, 3: 1, 5: 8}.items():
        rows[g] = d
    return rows


def test_dependency_accuracy_dep2head_and_baseline() -> None:
    A = onehot_pattern([dep2head_targets(), prev_targets(T_DEP)])
    acc = dependency_accuracy(A, DEP_HEADS, DEP_RELS, 2, direction="dep2head")
    torch.testing.assert_close(acc, torch.tensor([[1.0, 1.0], [0.6, 0.0]]))
    base, offset = offset_baseline(DEP_HEADS, DEP_RELS, 2, max_offset=3, direction="dep2head")
    torch.testing.assert_close(base, torch.tensor([0.6, 2 / 3]))
    assert offset.tolist() == [-1, 2]
    base_c, offset_c = offset_baseline(DEP_HEADS, DEP_RELS, 2, max_offset=3, causal=True)
    torch.testing.assert_close(base_c, torch.tensor([0.6, 1 / 3]))
    assert offset_c.tolist() == [-1, -3]
    is_syn, gain = syntactic_heads(A, DEP_HEADS, DEP_RELS, 2, max_offset=3, margin=0.1, causal=False)
    torch.testing.assert_close(gain, torch.tensor([[0.4, 1 / 3], [0.0, -2 / 3]]))
    assert is_syn.tolist() == [[True, True], [False, False]]


def test_dependency_accuracy_head2dep_and_baseline() -> None:
    A = onehot_pattern([head2dep_targets()])
    acc = dependency_accuracy(A, DEP_HEADS, DEP_RELS, 2, direction="head2dep")
    torch.testing.assert_close(acc, torch.tensor([[1.0, 2 / 3]]))
    base, offset = offset_baseline(DEP_HEADS, DEP_RELS, 2, max_offset=3, direction="head2dep")
    torch.testing.assert_close(base, torch.tensor([0.75, 2 / 3]))
    assert offset.tolist() == [1, -2]


def test_transposed_is_clarks_head_from_dep_the_column_argmax() -> None:
    """Clark et al.'s "head<-dep": per dependent, the other word attending to it most is its predicted head."""
    from mhaexp.heads.patterns import Chunk, relation_sums

    # BOS w1 w2 w3; w1 -> w2 and w3 -> w2 (one relation).
    A = torch.tensor([[1.0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.6, 0.1, 0.2], [0.7, 0.1, 0.1, 0.1]])
    chunk = Chunk(A[None, None], torch.ones(1, 4, dtype=torch.bool), causal=False)
    targets = torch.tensor([[[-1, 2, -1, 2]]])
    # dep2head: w1's most-attended other word is w3, w3's is BOS: 0 of 2. Transposed: w1's column peaks at w2
    # (0.6, a hit), w3's at w1 (0.4, a miss): 1 of 2.
    assert relation_sums(chunk, targets, ["dep2head"]).value().item() == 0.0
    assert relation_sums(chunk, targets, ["transposed"]).value().item() == 0.5
    flipped = Chunk(A.T[None, None].contiguous(), chunk.mask, causal=False)
    same = relation_sums(flipped, targets, ["dep2head"]).value()
    assert relation_sums(chunk, targets, ["transposed"]).value() == same


def test_transposed_meets_the_bidirectional_baselines_even_on_a_causal_model() -> None:
    """In a causal model only later words attend to a dependent: its bar is every offset, never the causal one."""
    from mhaexp.analysis.collect import _baselines

    targets = torch.where(DEP_RELS == 1, DEP_HEADS, -1)[None]  # relation 1: heads at +2, +2, -3
    mask = torch.ones(1, T_DEP, dtype=torch.bool)
    cfg = {"max_offset": 3, "position_baseline": True}
    both = _baselines(targets, ["dep2head"], mask, cfg, causal=False)
    causal = _baselines(targets, ["dep2head"], mask, cfg, causal=True)
    transposed = _baselines(targets, ["transposed"], mask, cfg, causal=True)
    assert causal["offset"].item() == pytest.approx(1 / 3) and both["offset"].item() == pytest.approx(2 / 3)
    for key in ("offset", "position", "combined"):
        torch.testing.assert_close(transposed[key], both[key])


def test_dependency_accuracy_excludes_self_and_handles_empty_relations() -> None:
    A = onehot_pattern([list(range(T_DEP))])  # pure self-attention: argmax falls back to BOS after masking
    acc = dependency_accuracy(A, DEP_HEADS, DEP_RELS, 3)
    assert acc[0, :2].tolist() == [0.0, 0.0] and math.isnan(acc[0, 2].item())
    is_syn, _ = syntactic_heads(A, DEP_HEADS, DEP_RELS, 3, margin=0.1, causal=False)
    assert not is_syn.any()


def test_antecedent_accuracy() -> None:
    antecedent = torch.full((1, T_DEP), -1)
    antecedent[0, 5], antecedent[0, 8], antecedent[0, 9] = 2, 5, 2
    targets = list(range(T_DEP))
    targets[5], targets[8], targets[9] = 2, 5, 1
    assert antecedent_accuracy(onehot_pattern([targets]), antecedent).item() == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------------
# 7. Rare tokens
# ------------------------------------------------------------------------------------------------

RARE_TOKENS = torch.tensor([[0, 5, 7, 3, 7, 9]])
RARE_FREQ = torch.tensor([0.0, 0, 0, 1, 0, 50, 0, 70, 0, 90])  # BOS (id 0) is rarest but never a candidate


def test_rare_token_bidirectional() -> None:
    A = onehot_pattern([[3] * 6, [0] * 6])
    torch.testing.assert_close(rare_token_score(A, RARE_TOKENS, RARE_FREQ, causal=False), torch.tensor([1.0, 0.0]))


def test_rare_token_causal_uses_visible_prefix() -> None:
    # Rarest visible non-BOS token: query 1 -> 1, query 2 -> 1 (50 < 70), queries 3-5 -> 3.
    rare_head = [0, 1, 1, 3, 3, 3]
    A = onehot_pattern([rare_head, prev_targets(6)])
    # Query 0 sees only BOS and is left out; the previous-token head hits at queries 2 and 4.
    torch.testing.assert_close(rare_token_score(A, RARE_TOKENS, RARE_FREQ), torch.tensor([1.0, 2 / 5]))


def test_rare_token_ties_all_count() -> None:
    tokens = torch.tensor([[0, 3, 4, 3, 5]])
    freq = torch.tensor([0.0, 0, 0, 1, 1, 9])
    A = onehot_pattern([[1, 1, 2, 3, 2]])  # tokens 3 and 4 tie for rarest
    assert rare_token_score(A, tokens, freq, causal=True).item() == 1.0


def test_rare_token_scores_only_sentences_whose_rarest_token_is_not_frequent() -> None:
    # Voita et al. score sentences whose rarest token lies outside their 500 most frequent of 32k: 2 of 128.
    freq = torch.ones(128)
    freq[10], freq[11], freq[12] = 1000.0, 900.0, 5.0  # tokens 10 and 11 are the 2 most frequent
    common = torch.tensor([[0, 11, 10, 10, 11]])  # its rarest token (11) is among them: not scored
    rare = torch.tensor([[0, 10, 12, 11, 10]])  # its rarest token (12) is not: scored
    A = torch.cat([onehot_pattern([[2, 2, 2, 2, 2]]), onehot_pattern([[2, 2, 2, 2, 2]])])  # key 2 everywhere
    # Key 2 holds the rarest token in the scored sentence only; counting the other too would give 1/2.
    assert rare_token_score(A, torch.cat([common, rare]), freq, causal=False).item() == 1.0
    assert math.isnan(rare_token_score(A[:1], common, freq, causal=False).item())


# ------------------------------------------------------------------------------------------------
# 8-9. Weights: copying score, layer normalization
# ------------------------------------------------------------------------------------------------


def brute_force_copying(w_e, w_u, w_v, w_o) -> torch.Tensor:
    scores = []
    for h in range(w_o.shape[0]):
        eig = torch.linalg.eigvals(w_e @ w_v[h] @ w_o[h] @ w_u)  # (V, V)
        scores.append(eig.real.sum() / eig.abs().sum())
    return torch.stack(scores)


def test_copying_score_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    V, d, hd, H = 11, 6, 3, 4
    W_E, W_U = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in [(V, d), (d, V)])
    W_V, W_O = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in [(H, d, hd), (H, hd, d)])
    torch.testing.assert_close(copying_score(W_E, W_U, W_V, W_O), brute_force_copying(W_E, W_U, W_V, W_O))


def test_copying_score_signs_and_gqa() -> None:
    g = torch.Generator().manual_seed(1)
    V, d, hd = 9, 5, 2
    W_E = torch.randn(V, d, generator=g)
    R = torch.randn(d, hd, generator=g)
    W_V = R.expand(2, d, hd)
    W_O = torch.stack([R.T, -R.T])  # W_V W_O = R R^T (PSD: copies) and its negation (suppresses)
    scores = copying_score(W_E, W_E.T, W_V, W_O)  # tied unembedding
    torch.testing.assert_close(scores, torch.tensor([1.0, -1.0]))
    # GQA: one shared value head gives the same result as passing it expanded per query head.
    torch.testing.assert_close(copying_score(W_E, W_E.T, R[None], W_O), scores)


def test_normalize_by_layer() -> None:
    out = normalize_by_layer([torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0, 2.0])])
    torch.testing.assert_close(out[0], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.0]))  # an all-zero layer stays zero
    torch.testing.assert_close(out[2], torch.tensor([1.0, 0.0, 2.0]) / 5**0.5)  # ragged layers
    # Pruned heads are left out of the norm (Michel et al. re-rank the live heads only).
    live = [torch.tensor([True, False]), torch.tensor([True, True]), torch.tensor([True, True, True])]
    torch.testing.assert_close(normalize_by_layer([torch.tensor([3.0, 4.0])], live[:1])[0], torch.tensor([1.0, 4 / 3]))


# ------------------------------------------------------------------------------------------------
# 11-12. Similarity, MDS, GQA group diversity
# ------------------------------------------------------------------------------------------------


def brute_force_js(attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    N = attn.shape[1]
    out = torch.zeros(N, N)
    rows = [(b, q) for b in range(attn.shape[0]) for q in range(attn.shape[2]) if mask[b, q]]
    for i in range(N):
        for j in range(N):
            total = 0.0
            for b, q in rows:
                p, r = attn[b, i, q].double(), attn[b, j, q].double()
                m = (p + r) / 2
                kl_p = torch.where(p > 0, p * (p / m).log(), 0.0).sum()
                kl_r = torch.where(r > 0, r * (r / m).log(), 0.0).sum()
                total += float(0.5 * kl_p + 0.5 * kl_r)
            out[i, j] = total / len(rows)
    return out


def test_js_identical_and_disjoint_heads() -> None:
    T = 5
    A = onehot_pattern([[0] * T, [0] * T, [T - 1] * T])
    D = js_divergence_matrix(A)
    assert D[0, 1].item() == 0.0 and torch.diagonal(D).eq(0).all()
    assert D[0, 2].item() == pytest.approx(LOG2) and D[2, 1].item() == pytest.approx(LOG2)


def test_js_matches_brute_force_with_padding_and_chunking() -> None:
    A = random_pattern(2, 5, 6, causal=True, seed=5)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    A = A.masked_fill(~mask[:, None, None, :], 0.0)
    A = A / A.sum(-1, keepdim=True)
    expected = brute_force_js(A, mask)
    torch.testing.assert_close(js_divergence_matrix(A, mask), expected)
    torch.testing.assert_close(js_divergence_matrix(A, mask, max_chunk_elements=1), expected)


def test_mds_preserves_planar_distances_deterministically() -> None:
    X = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    D = torch.cdist(X, X)
    Y = mds_embedding(D, dim=2)
    torch.testing.assert_close(torch.cdist(Y, Y), D)
    assert torch.equal(Y, mds_embedding(D, dim=2, seed=123))


def test_gqa_group_diversity_on_planted_groups() -> None:
    T = 5
    A = onehot_pattern([[0] * T, [0] * T, [T - 1] * T, [T - 1] * T])  # groups {0, 1} and {2, 3}
    js = js_divergence_matrix(A)
    out = gqa_group_diversity(js, n_kv_heads=2)
    assert out["within"] == 0.0 and out["across"] == pytest.approx(LOG2) and out["ratio"] == 0.0
    assert math.isnan(gqa_group_diversity(js, n_kv_heads=4)["within"])  # MHA: no shared groups
    assert math.isnan(gqa_group_diversity(js, n_kv_heads=1)["across"])  # MQA: one group


# ------------------------------------------------------------------------------------------------
# Cross-cutting: padding, causal inference, purity
# ------------------------------------------------------------------------------------------------

PAD_TOKENS = torch.tensor([[0, 2, 1, 2, 3, 1, 2]])
PAD_FREQ = torch.tensor([0.0, 5.0, 3.0, 1.0])
PAD_HEADS = torch.tensor([[-1, 2, 0, 2, 3, 4, 1]])
PAD_RELS = torch.tensor([[-1, 0, 1, 0, 1, 0, 1]])

PER_HEAD_METRICS = {
    "entropy": lambda a, m, tok, heads, rels: entropy(a, m),
    "normalized_entropy": lambda a, m, tok, heads, rels: normalized_entropy(a, m),
    "confidence": lambda a, m, tok, heads, rels: confidence(a, m),
    "profile": lambda a, m, tok, heads, rels: torch.cat(relative_position_profile(a, m, 2), -1),
    "positional": lambda a, m, tok, heads, rels: positional_heads(a, m, 2, threshold=0.9)[2],
    "previous_token": lambda a, m, tok, heads, rels: previous_token_score(a, m, True, True),
    "duplicate": lambda a, m, tok, heads, rels: duplicate_token_score(a, tok, m),
    "induction": lambda a, m, tok, heads, rels: induction_score(a, tok, m, exclude_bos=True),
    "sink": lambda a, m, tok, heads, rels: sink_score(a, m),
    "sink_rate": lambda a, m, tok, heads, rels: sink_rate(a, m, eps=0.2),
    "dep2head": lambda a, m, tok, heads, rels: dependency_accuracy(a, heads, rels, 2, m),
    "head2dep": lambda a, m, tok, heads, rels: dependency_accuracy(a, heads, rels, 2, m, "head2dep"),
    "syntactic": lambda a, m, tok, heads, rels: syntactic_heads(a, heads, rels, 2, m, max_offset=2, margin=0.1)[1],
    "antecedent": lambda a, m, tok, heads, rels: antecedent_accuracy(a, heads, m),
    "rare": lambda a, m, tok, heads, rels: rare_token_score(a, tok, PAD_FREQ, m),
    "js": lambda a, m, tok, heads, rels: js_divergence_matrix(a, m),
}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", sorted(PER_HEAD_METRICS))
def test_padding_does_not_change_scores(name: str, causal: bool) -> None:
    fn = PER_HEAD_METRICS[name]
    A = random_pattern(1, 3, 7, causal=causal, seed=6)
    padded, mask, tokens = pad(A, 3, PAD_TOKENS)
    heads = torch.cat([PAD_HEADS, torch.full((1, 3), -1)], dim=1)
    rels = torch.cat([PAD_RELS, torch.full((1, 3), -1)], dim=1)
    expected = fn(A, None, PAD_TOKENS, PAD_HEADS, PAD_RELS)
    torch.testing.assert_close(fn(padded, mask, tokens, heads, rels), expected, equal_nan=True)


def test_causal_inference_ignores_pad_rows() -> None:
    A = random_pattern(2, 2, 6, causal=True)
    assert is_causal(A) and not is_causal(random_pattern(2, 2, 6, causal=False))
    padded, mask = pad(A, 2)
    assert is_causal(padded, mask)  # the NaN pad rows are not looked at


def test_metrics_do_not_modify_inputs() -> None:
    A, mask, tokens = pad(random_pattern(1, 3, 7, causal=True, seed=7), 2, PAD_TOKENS)
    heads = torch.cat([PAD_HEADS, torch.full((1, 2), -1)], dim=1)
    rels = torch.cat([PAD_RELS, torch.full((1, 2), -1)], dim=1)
    before = [t.clone() for t in (A, mask, tokens, heads, rels)]
    for fn in PER_HEAD_METRICS.values():
        fn(A, mask, tokens, heads, rels)
    for t, t0 in zip((A, mask, tokens, heads, rels), before, strict=True):
        assert torch.equal(t.nan_to_num(-1.0), t0.nan_to_num(-1.0))
