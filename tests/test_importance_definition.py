"""Head importance as Michel et al. 2019 define it (per token, per sentence), against references that do not
use the estimator's per-token gate, and the standard errors over sentences of importance and ablation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from mhaexp.heads.importance import (
    IMPORTANCE_ESTIMATORS,
    ablation_importance,
    ablation_values,
    gradient_importance,
    group_importance,
    group_importance_values,
    importance_values,
    kv_groups,
)
from mhaexp.nn.config import ModelConfig
from mhaexp.nn.model import Transformer
from mhaexp.nn.objectives import IGNORE, causal_lm_objective

V, T, N = 32, 12, 64


def model(n_kv_heads: int = 4, causal: bool = True) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=V, n_layers=2, d_model=32, n_heads=4, n_kv_heads=n_kv_heads, d_ff=32, max_seq_len=16, causal=causal
    )
    return Transformer(cfg).eval()


def sentences() -> list[torch.Tensor]:
    """N random sentences of 3..T tokens."""
    g = torch.Generator().manual_seed(7)
    lengths = torch.randint(3, T + 1, (N,), generator=g)
    return [torch.randint(0, V, (int(n),), generator=g) for n in lengths]


def one_batch(sents: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """All sentences in one right-padded batch."""
    width = max(len(s) for s in sents)
    ids = torch.zeros(len(sents), width, dtype=torch.long)
    mask = torch.zeros(len(sents), width, dtype=torch.bool)
    for i, s in enumerate(sents):
        ids[i, : len(s)], mask[i, : len(s)] = s, True
    return [{"input_ids": ids, "attention_mask": mask}]


def one_each(sents: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Each sentence a batch of its own, unpadded."""
    return [{"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.bool)} for s in sents]


def reference_token_gradients(m: Transformer, sent: torch.Tensor, group: bool = False) -> list[torch.Tensor]:
    """Per layer ``(T, H)`` (or ``(T, G)``): ``dL(x)/dxi_{h,t}`` of one sentence, ``L`` its summed loss.

    Independent of the per-token gate: ``eps[t, h]`` adds ``eps * c_{h,t}`` to the attention output, ``c`` the
    head's contribution (``head_contributions``), so ``dL/deps`` at 0 is the derivative of the loss when head
    ``h``'s output at token ``t`` is scaled; ``group``: one ``eps`` per K/V group on the sum of its heads.
    """
    batch = {"input_ids": sent[None], "attention_mask": torch.ones(1, len(sent), dtype=torch.bool)}
    eps, hooks = [], []
    for attn, grp in zip(m.attention_layers, kv_groups(m), strict=True):
        width = int(grp.max()) + 1 if group else attn.n_heads
        e = torch.zeros(len(sent), width, requires_grad=True)
        eps.append(e)

        def hook(mod, args, out, e=e, grp=grp):  # noqa: ANN001, ANN202
            c = mod.head_contributions(args[0]).detach()[:, 0]  # (H, T, d)
            if group:
                c = torch.zeros(e.shape[1], *c.shape[1:]).index_add_(0, grp, c)  # (G, T, d)
            return out[0] + torch.einsum("th,htd->td", e, c)[None], out[1]

        hooks.append(attn.register_forward_hook(hook))
    try:
        with torch.enable_grad():
            x, y = causal_lm_objective(batch)
            logits = m(x, attention_mask=batch["attention_mask"])[0]
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")
            return list(torch.autograd.grad(loss, eps))
    finally:
        for h in hooks:
            h.remove()


def reference_importance(m: Transformer, sents: list[torch.Tensor], estimator: str, group: bool = False) -> list:
    """Michel et al.'s importance, one sentence and one reference gradient at a time."""
    per_sentence = [reference_token_gradients(m, s, group) for s in sents]
    out = []
    for li in range(len(m.attention_layers)):
        if estimator == "per_token":  # sum over tokens and sentences of |g|, over the number of tokens
            total = sum(g[li].abs().sum(0) for g in per_sentence)
            out.append(total / sum(len(s) for s in sents))
        else:  # the mean over sentences of |sum over tokens|
            out.append(sum(g[li].sum(0).abs() for g in per_sentence) / len(sents))
    return out


@pytest.mark.parametrize("estimator", IMPORTANCE_ESTIMATORS)
def test_importance_does_not_depend_on_batching(estimator: str) -> None:
    # The same 64 sentences as 1 batch of 64 and as 64 batches of 1: today's estimator (abs of the batch
    # gradient) gives rankings that barely agree; a per-sentence or per-token average gives the same numbers.
    m, sents = model(), sentences()
    whole = gradient_importance(m, one_batch(sents), estimator=estimator)
    single = gradient_importance(m, one_each(sents), estimator=estimator)
    for a, b in zip(whole, single, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        assert bool((a > 0).all())
    split = gradient_importance(m, one_batch(sents), max_tokens=5 * T, estimator=estimator)  # micro-batches
    for a, b in zip(whole, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("estimator", IMPORTANCE_ESTIMATORS)
def test_group_importance_does_not_depend_on_batching(estimator: str) -> None:
    m, sents = model(n_kv_heads=2), sentences()
    whole = group_importance(m, one_batch(sents), estimator=estimator)
    single = group_importance(m, one_each(sents), estimator=estimator)
    for a, b in zip(whole, single, strict=True):
        assert a.shape == (2,)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_ablation_does_not_depend_on_batching() -> None:
    m, sents = model(), sentences()
    whole, single = ablation_values(m, one_batch(sents)), ablation_values(m, one_each(sents))
    for a, b in zip(whole, single, strict=True):
        assert a.n == b.n == N
        torch.testing.assert_close(a.totals, b.totals, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.mean(), b.mean(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("estimator", IMPORTANCE_ESTIMATORS)
@pytest.mark.parametrize("causal", [True, False])
def test_importance_is_the_mean_absolute_per_token_or_per_sentence_gradient(estimator: str, causal: bool) -> None:
    m, sents = model(causal=causal).train(), sentences()[:12]
    got = gradient_importance(m, one_batch(sents), estimator=estimator)
    # Eval mode for the estimate, then given back; neither the weights' .grad nor the gates are touched.
    assert m.training and all(p.grad is None for p in m.parameters())
    assert all(a.token_gate is None and not a.head_gate.requires_grad for a in m.attention_layers)
    want = reference_importance(m.eval(), sents, estimator)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("estimator", IMPORTANCE_ESTIMATORS)
def test_group_importance_gates_the_group_per_token(estimator: str) -> None:
    m, sents = model(n_kv_heads=2), sentences()[:12]
    got = group_importance(m, one_batch(sents), estimator=estimator)
    want = reference_importance(m, sents, estimator, group=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-7)
    # One K/V head per query head: a group is a head.
    mha = model(n_kv_heads=4)
    for g, h in zip(group_importance(mha, one_batch(sents)), gradient_importance(mha, one_batch(sents)), strict=True):
        torch.testing.assert_close(g, h)


def test_planted_heads_score_what_they_do() -> None:
    # Head (0, 1) writes nothing (its o_proj columns are 0) and head (1, 3) is gated off: neither can change the
    # loss, so both score exactly 0 on importance (either estimator) and ablation; every other head does something.
    m, sents = model(), sentences()[:16]
    with torch.no_grad():
        attn = m.attention_layers[0]
        attn.o_proj.weight.view(-1, attn.n_heads, attn.head_dim)[:, 1] = 0.0
        m.attention_layers[1].head_gate[3] = 0.0
    dead = {(0, 1), (1, 3)}
    scores = {e: gradient_importance(m, one_batch(sents), estimator=e) for e in IMPORTANCE_ESTIMATORS}
    scores["ablation"] = ablation_importance(m, one_batch(sents))
    for name, per_layer in scores.items():
        for li, s in enumerate(per_layer):
            for h in range(4):
                assert (float(s[h]) == 0.0) == ((li, h) in dead), (name, li, h)
    # |sum_t g_t| <= sum_t |g_t|: sentence by sentence, per sentence never exceeds the per-token total.
    tok = importance_values(m, one_batch(sents), estimator="per_token")
    sen = importance_values(m, one_batch(sents), estimator="per_sentence")
    for a, b in zip(tok, sen, strict=True):
        assert bool((b.totals <= a.totals + 1e-6).all())


def test_a_one_token_change_is_seen_by_hand() -> None:
    # A 1-layer attention-only model reading one token: the loss at position 0 is CE(W_u (e + b_o + c), y) with
    # c the heads' contributions, so dL/dxi_h = c_h . (softmax - onehot(y)) W_u, computed here by hand.
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, n_layers=1, d_model=16, n_heads=4, d_ff=16, max_seq_len=8, attn_only=True)
    m = Transformer(cfg).eval()
    ids = torch.tensor([[5, 9]])
    batch = [{"input_ids": ids, "attention_mask": torch.ones(1, 2, dtype=torch.bool)}]
    with torch.no_grad():
        x_in = m.tok_emb(ids) + m.pos_emb(torch.arange(2))  # (1, 2, d): the stream entering the block
        c = m.attention_layers[0].head_contributions(m.blocks[0].ln_1(x_in))[:, 0, 0]  # (H, d) at token 0
        dlogits = m(ids)[0][0, 0].softmax(-1) - F.one_hot(torch.tensor(9), V).float()  # dL/dlogits at token 0
    # dL/d(stream leaving the block) at token 0: dlogits back through lm_head and ln_f.
    x_out = m.residual_stream(ids)[0][0, 0].detach().requires_grad_(True)
    (dx,) = torch.autograd.grad(m.lm_head(m.ln_f(x_out)) @ dlogits, x_out)
    by_hand = (c @ dx).abs()  # token 1 predicts nothing: only token 0's gate moves the loss
    got = gradient_importance(m, batch)[0]
    torch.testing.assert_close(got, (by_hand / 2).float(), rtol=1e-4, atol=1e-7)  # two tokens in the sentence


def test_standard_errors_and_n_are_over_sentences() -> None:
    m, sents = model(), sentences()
    equal = [s[:3] for s in sents]  # every sentence 3 tokens: a token mean is a sentence mean
    for values in (importance_values(m, one_batch(equal)), ablation_values(m, one_batch(equal))):
        for v in values:
            assert v.n == N
            torch.testing.assert_close(v.mean(), v.values().mean(0))
            torch.testing.assert_close(v.se(), torch.from_numpy(stats.sem(v.values().numpy(), axis=0)))
    # Unequal lengths: the token-weighted mean, and the ratio estimator's standard error, which a duplicated
    # probe halves by sqrt(2) (up to the n - 1 of the SEM).
    v = importance_values(m, one_batch(sents))[0]
    torch.testing.assert_close(v.mean(), v.totals.sum(0) / sum(len(s) for s in sents))
    twice = importance_values(m, one_batch(sents + sents))[0]
    assert twice.n == 2 * N
    torch.testing.assert_close(twice.mean(), v.mean())
    torch.testing.assert_close(twice.se() * (2**0.5), v.se() * ((N - 1) / (N - 0.5)) ** 0.5)
    single = importance_values(m, one_each(sents[:1]))[0]
    assert single.n == 1 and bool(single.se().isnan().all())


@pytest.mark.parametrize(
    "values",
    [lambda m, b: importance_values(m, b), lambda m, b: group_importance_values(m, b), ablation_values],
    ids=["importance", "group_importance", "ablation"],
)
def test_sentences_without_a_scored_token_are_no_sample(values: Callable) -> None:
    m = model(n_kv_heads=2)
    sents = sentences()[:8]
    batch = one_batch(sents)
    batch[0]["attention_mask"][3] = False  # an empty row: no token, no target
    got = values(m, batch)
    assert all(v.n == 7 for v in got)
