"""Long-context head measures on hand-built patterns with exact answers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mhaexp.analysis.collect import ProbeData
from mhaexp.heads.longctx import massive_activations, retrieval_score, streaming_share


def one_hot_patterns(targets: list[list[int]], n: int) -> torch.Tensor:
    """(1, H, n, n): head h's query q attends only to key targets[h][q]."""
    p = torch.zeros(1, len(targets), n, n)
    for h, row in enumerate(targets):
        for q, k in enumerate(row):
            p[0, h, q, k] = 1.0
    return p


# <bos> f f key 7 8 9 f f query | 7 8 9   (needle values 7 8 9 at positions 4-6, answer copied at 10-12)
TOKENS = torch.tensor([[0, 1, 1, 5, 7, 8, 9, 1, 1, 6, 7, 8, 9]])
T = TOKENS.shape[1]
NEEDLE = torch.zeros(1, T, dtype=torch.bool)
NEEDLE[0, 4:7] = True
ANSWER = torch.zeros(1, T, dtype=torch.bool)
ANSWER[0, 9:12] = True  # queries 9, 10, 11 predict the answer tokens 7, 8, 9


GOLD = TOKENS.roll(-1, dims=1)  # a model that answers right generates the gold next token


def test_retrieval_score_counts_copy_paste_steps() -> None:
    perfect = [0] * 9 + [4, 5, 6, 0]  # at each answer step: the needle token being produced
    half = [0] * 9 + [4, 4, 6, 0]  # step 10 attends to 7 while producing 8: no hit
    sink = [0] * T  # always BOS
    wrong_copy = [0] * 9 + [10, 11, 12, 0]  # the right tokens, but outside the needle
    p = one_hot_patterns([perfect, half, sink, wrong_copy], T)
    score = retrieval_score(p, TOKENS, NEEDLE, ANSWER, GOLD)
    torch.testing.assert_close(score, torch.tensor([1.0, 2 / 3, 0.0, 0.0]))


def test_retrieval_score_follows_the_generated_token_not_the_gold_one() -> None:
    # The model generates 9 9 7 where the gold answer is 7 8 9 (it answers wrong).
    generated = GOLD.clone()
    generated[0, 9:12] = torch.tensor([9, 9, 7])
    on_gold = [0] * 9 + [4, 5, 6, 0]  # attends to the gold tokens: none is what the model generates
    on_generated = [0] * 9 + [6, 6, 4, 0]  # copies what it generates: 9 (twice, one needle token) and 7
    p = one_hot_patterns([on_gold, on_generated], T)
    score = retrieval_score(p, TOKENS, NEEDLE, ANSWER, generated)
    torch.testing.assert_close(score, torch.tensor([0.0, 2 / 3]))


def test_retrieval_score_averages_samples_and_skips_those_without_needle() -> None:
    p = one_hot_patterns([[0] * 9 + [4, 5, 6, 0]], T)
    p2 = torch.cat([p, one_hot_patterns([[0] * 9 + [4, 0, 0, 0]], T), p])
    needle = torch.cat([NEEDLE, NEEDLE, torch.zeros_like(NEEDLE)])
    score = retrieval_score(p2, TOKENS.repeat(3, 1), needle, ANSWER.repeat(3, 1), GOLD.repeat(3, 1))
    torch.testing.assert_close(score, torch.tensor([(1.0 + 1 / 3) / 2]))
    assert math.isnan(float(retrieval_score(p, TOKENS, torch.zeros_like(NEEDLE), ANSWER, GOLD)[0]))


def test_streaming_share() -> None:
    T = 6
    causal = torch.tril(torch.ones(T, T))
    uniform = causal / causal.sum(-1, keepdim=True)
    sink_only = torch.zeros(T, T)
    sink_only[:, 0] = 1.0
    far = torch.zeros(T, T)  # each query attends to key 1 only (query 0: itself)
    far[0, 0] = 1.0
    far[1:, 1] = 1.0
    p = torch.stack([uniform, sink_only, far])[None]  # (1, 3, T, T)
    share = streaming_share(p, window=2)
    # uniform: query q sees q+1 keys; sink + {q-1, q} hold min(q+1, 3) of them.
    want_uniform = sum(min(q + 1, 3) / (q + 1) for q in range(T)) / T
    # far: key 1 is in the window for q = 1, 2 (and query 0 attends to itself): 3 of 6 queries.
    torch.testing.assert_close(share, torch.tensor([want_uniform, 1.0, 3 / 6]))
    with pytest.raises(ValueError, match="window"):
        streaming_share(p, window=0)


def test_streaming_share_ignores_pads() -> None:
    p = torch.zeros(1, 1, 4, 4)
    p[0, 0, :, 0] = 1.0
    p[0, 0, 3] = torch.tensor([0.0, 0.0, 0.0, 0.0])  # a pad row holding nothing
    mask = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(streaming_share(p, 1, mask), torch.tensor([1.0]))


def test_massive_activations_relative_criterion_and_sink() -> None:
    resid = torch.ones(2, 5, 8) * 0.01
    resid[0, 0, 3] = 50.0  # 5000x the median, on the sink token
    resid[1, 2, 6] = -20.0  # 2000x, elsewhere (magnitude counts, not sign)
    resid[1, 3, 1] = 5.0  # 500x: below the bar
    resid[1, 4, 0] = 1e6  # huge, but on a pad
    mask = torch.tensor([[True] * 5, [True, True, True, True, False]])
    out = massive_activations(resid, mask, ratio=1000.0, layer=2)
    assert out.layer == 2 and out.median == pytest.approx(0.01)
    assert out.count == 2
    assert list(zip(out.batch, out.position, out.dim, strict=True)) == [(0, 0, 3), (1, 2, 6)]
    assert out.value == pytest.approx([50.0, -20.0])
    assert out.on_sink == 1


def test_retrieval_and_streaming_roles_use_the_configured_bars() -> None:
    from pathlib import Path

    import yaml

    from mhaexp.analysis.roles import classify_heads

    conf = Path(__file__).resolve().parents[1] / "conf" / "analysis" / "default.yaml"
    thresholds = yaml.safe_load(conf.read_text())["thresholds"]
    assert thresholds["retrieval"] == 0.1 and thresholds["streaming"] == 0.9  # Wu et al. 2024; DuoAttention
    metrics = {
        "retrieval": torch.tensor([[0.1, 0.09, 0.6]]),
        "streaming": torch.tensor([[0.95, 0.9, 0.2]]),
    }
    roles = {(r.layer, r.head, r.role) for r in classify_heads(metrics, thresholds, relation_names=[])}
    assert {(0, 0, "retrieval"), (0, 2, "retrieval"), (0, 0, "streaming"), (0, 1, "streaming")} <= roles
    assert (0, 1, "retrieval") not in roles and (0, 2, "streaming") not in roles


def test_analysis_reports_a_planted_massive_activation_on_the_sink() -> None:

    from mhaexp.analysis.collect import _massive, compute_head_metrics
    from mhaexp.nn.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=40, n_layers=2, d_model=32, n_heads=4, max_seq_len=16)).eval()
    with torch.no_grad():
        model.pos_emb.weight[0, 7] = 5e3  # position 0, dimension 7: ~1e5 x the typical 0.02-scale value
        ids = torch.randint(0, 40, (3, 12))
        mask = torch.ones(3, 12, dtype=torch.bool)
        mask[2, 8:] = False
        alone = _massive(model.residual_stream(ids, mask), mask, 1000.0)
    # The analysis reads the residual stream from its importance forwards (row groups cut to their extent).
    probe = _probe({"input_ids": ids, "attention_mask": mask}, vocab_size=40)
    in_analysis = compute_head_metrics(model, probe, _analysis_cfg(), expensive=False).layer_metrics
    for found in (alone, in_analysis):
        # Pre-norm blocks carry the spike down the residual stream: one per sequence, in every layer.
        assert found["massive_count"].tolist() == [3.0, 3.0]
        assert found["massive_on_sink"].tolist() == [3.0, 3.0]
        assert found["massive_top_position"].tolist() == [0.0, 0.0]
        assert found["massive_top_dim"].tolist() == [7.0, 7.0]
        assert (found["massive_max_ratio"] > 1000).all()
    torch.testing.assert_close(in_analysis["massive_max_ratio"], alone["massive_max_ratio"], rtol=1e-5, atol=0)


def test_analysis_scores_retrieval_against_what_the_model_generates() -> None:

    from mhaexp.analysis.collect import compute_head_metrics
    from mhaexp.nn.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=16, n_layers=2, d_model=32, n_heads=4, max_seq_len=16)).eval()
    ids = TOKENS.repeat(4, 1)
    ids[1:, 4:7] = torch.tensor([[9, 8, 7], [8, 9, 7], [7, 7, 8]])  # other needles, same answer 7 8 9
    mask = torch.ones_like(ids, dtype=torch.bool)
    needle, answer = NEEDLE.repeat(4, 1), ANSWER.repeat(4, 1)
    with torch.no_grad():
        logits, patterns = model(ids, mask, need_weights=True)
    generated = logits.argmax(-1)
    probe = _probe({"input_ids": ids, "attention_mask": mask, "needle": needle, "answer": answer}, vocab_size=16)
    got = compute_head_metrics(model, probe, _analysis_cfg(), expensive=False).metrics["retrieval"]  # (L, H)
    gold = torch.stack([retrieval_score(p, ids, needle, answer, ids.roll(-1, 1), mask) for p in patterns])
    want = torch.stack([retrieval_score(p, ids, needle, answer, generated, mask) for p in patterns])
    torch.testing.assert_close(got, want)
    # Scored against the gold answer, heads of this untrained model would be credited for copies it never makes.
    assert not torch.equal(want, gold), (want, gold)


def test_js_within_and_across_layers_are_the_block_means() -> None:
    from mhaexp.analysis.collect import js_within_across

    # 2 heads in layer 0, 1 in layer 1 (pruned), then 2 in layer 2.
    js = torch.tensor(
        [
            [0.0, 0.1, 0.5, 0.6, 0.7],
            [0.1, 0.0, 0.4, 0.8, 0.9],
            [0.5, 0.4, 0.0, 0.3, 0.2],
            [0.6, 0.8, 0.3, 0.0, 0.2],
            [0.7, 0.9, 0.2, 0.2, 0.0],
        ]
    )
    out = js_within_across(js, [2, 1, 2])
    assert out["js_within"][0] == pytest.approx(0.1) and math.isnan(float(out["js_within"][1]))
    assert out["js_within"][2] == pytest.approx(0.2)
    assert out["js_across"].tolist() == pytest.approx(
        [(0.5 + 0.6 + 0.7 + 0.4 + 0.8 + 0.9) / 6, (0.5 + 0.4 + 0.3 + 0.2) / 4, (0.6 + 0.8 + 0.3 + 0.7 + 0.9 + 0.2) / 6]
    )


def _probe(batch: dict, vocab_size: int) -> ProbeData:
    """One-batch probe with no relations, for running the analysis on hand-built sequences."""
    return ProbeData(
        batches=[batch], relations=[], id_to_token=str, special_ids=frozenset(), bos_id=0, vocab_size=vocab_size
    )


def _analysis_cfg() -> dict:
    """The shipped analysis config (conf/analysis/default.yaml)."""
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "analysis" / "default.yaml").read_text())
