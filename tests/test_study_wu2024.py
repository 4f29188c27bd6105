"""wu2024 (issue 29, issue 30): sparsity untestable below 20 heads, the paired random-head control, the
needles written through a model's own tokenizer, and ``mhaexp-study wu2024 --model <dir>`` end to end on
random-init Qwen2 and Llama (GQA) directories saved with ``save_pretrained``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_import import gpt2_tokenizer, hf_dir  # the import tests' save_pretrained directories

from mhaexp.studies import get_study
from mhaexp.studies.runner import Budget, StudyContext
from mhaexp.studies.verdict import UNTESTABLE


def _claims(tmp_path: Path, rows: list[dict], n_heads: int) -> list:
    ctx = StudyContext("wu2024", tmp_path, Budget())
    for i, r in enumerate(rows):
        r.update(run=str(tmp_path / "runs" / "train" / f"{i}_x"), n_heads=n_heads, n_scored=n_heads)
        r.setdefault("retrieval_bar", 0.1)
    ctx.eval_path("masking.json").write_text(json.dumps(rows))
    return get_study("wu2024").verdicts(ctx)


CLEAR = [
    {"retrieval_heads": [[1, 2]], "acc_full": 0.95, "acc_retrieval_masked": 0.1, "acc_random_masked": [0.9, 0.93]},
    {"retrieval_heads": [[1, 5]], "acc_full": 0.9, "acc_retrieval_masked": 0.2, "acc_random_masked": [0.88, 0.9]},
]


def test_sparsity_is_untestable_below_twenty_heads_whatever_the_runs_did(tmp_path: Path) -> None:
    """On 16 heads one retrieval head is 6.25%: 'at least one and at most 5%' cannot hold, so it is untestable
    (never false), while the other claims are decided on the same runs."""
    exists, sparse, collapse, control = _claims(tmp_path / "a", [dict(r) for r in CLEAR], n_heads=16)
    assert sparse.holds == UNTESTABLE
    assert "6.25% of them" in sparse.why and "below 20 heads" in sparse.why
    assert (exists.holds, collapse.holds, control.holds) == (True, True, True)
    assert sparse.criterion_source and all(c.criterion_source for c in (exists, collapse, control))
    # 20 heads: one of them is exactly 5%, so the claim is decided.
    assert _claims(tmp_path / "b", [dict(r) for r in CLEAR], n_heads=20)[1].holds is True


def test_random_control_is_paired_and_needs_the_draws_to_agree(tmp_path: Path) -> None:
    """Random sets that sometimes break retrieval too (as a sink head in them does): the mean is above the
    retrieval-masked accuracy, but not by 2 standard errors of the draws, so the control is inconclusive."""
    rows = [
        {"retrieval_heads": [[1, 2]], "acc_full": 0.7, "acc_retrieval_masked": 0.0, "acc_random_masked": [0, 0, 0.46]},
        {"retrieval_heads": [[1, 5]], "acc_full": 0.7, "acc_retrieval_masked": 0.0, "acc_random_masked": [0.5, 0.0]},
    ]
    control = _claims(tmp_path, rows, n_heads=24)[3]
    assert control.holds is None and "2 standard errors" in control.why
    assert control.ours["paired difference"].values == pytest.approx((0.46 / 3, 0.25))
    assert control.ours["its se"].values == pytest.approx((0.46 / 3, 0.25))  # scipy.stats.sem of the draws


def test_needles_hold_the_same_tokens_as_their_answers(tmp_path: Path) -> None:
    from mhaexp.data.retrieval import text_needles
    from mhaexp.data.tokenizers import HFTokenizer

    gpt2_tokenizer(tmp_path)
    tok = HFTokenizer(str(tmp_path))
    rows = text_needles(tok, 5, 192, seed=0)
    assert rows == text_needles(tok, 5, 192, seed=0)  # same seed, same needles
    for i, r in enumerate(rows):
        ids = r["input_ids"]
        assert len(ids) == 192 and ids[0] == tok.bos_id
        needle = [ids[t] for t, v in enumerate(r["needle"]) if v]
        answer = [ids[t + 1] for t, v in enumerate(r["answer"]) if v]
        assert needle == answer and len(needle) > 6  # six lexicon words, one or more pieces each
        assert answer == ids[-len(answer) :]  # the answer ends the sequence
        assert {d for d in r["depth"] if d >= 0} == {round(100 * i / 4)}
    assert "The secret code of the" in tok.decode(rows[0]["input_ids"])


@pytest.mark.parametrize(
    ("family", "config", "n_heads"),
    [
        ("qwen2", {}, 8),  # 2 x 4 heads, 2 K/V heads
        ("llama", {"hidden_size": 48, "num_attention_heads": 12, "num_key_value_heads": 4, "head_dim": 4}, 24),
    ],
)
def test_model_runs_the_measurement_claims_on_an_imported_model(
    tmp_path: Path, cli, family: str, config: dict, n_heads: int
) -> None:
    source = hf_dir(tmp_path, family, gpt2_tokenizer, max_position_embeddings=256, **config)
    out = tmp_path / "out"
    r = cli(
        "mhaexp-study", "wu2024", "--model", str(source), "--out", str(out), cwd=tmp_path, timeout=600,
        extra_env={"STUDY_SMOKE": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    measured = json.loads((out / "eval" / "model_retrieval.json").read_text())
    assert measured["n_heads"] == n_heads and measured["n_needles"] == 4 and measured["length"] == 192
    assert len(measured["scores"]) == n_heads
    for _layer, _head, score, se, needles in measured["scores"]:
        assert 0.0 <= score <= 1.0 and needles == 4 and math.isfinite(se)
    doc = json.loads((out / "verdict.json").read_text())
    assert doc["budget"]["model"] == str(source)
    exists, sparse, collapse, control = doc["claims"]
    # A random-init model answers no needle: the claims about a model that retrieves are inconclusive,
    # and sparsity is untestable on 8 heads, decided on 24.
    assert measured["acc_full"] == 0.0 and exists["holds"] is None and "does not answer our needles" in exists["why"]
    assert sparse["holds"] == (UNTESTABLE if n_heads < 20 else None)
    assert collapse["holds"] is None and control["holds"] is None
    assert all(c["criterion_source"] for c in doc["claims"])
    assert exists["runs"] == ["model/model.ckpt"]


def test_model_verdicts_on_a_model_that_answers(tmp_path: Path) -> None:
    """One imported model (no seeds): 1 retrieval head of 24 that breaks retrieval when masked, holds."""
    ctx = StudyContext("wu2024", tmp_path, Budget(model="some/model"))
    scores = [[0, h, 0.9 if h == 3 else 0.01, 0.02, 20] for h in range(24)]
    result = {
        "source": "some/model",
        "retrieval_bar": 0.1,
        "scores": scores,
        "retrieval_heads": [[0, 3]],
        "best_retrieval": 0.9,
        "n_heads": 24,
        "acc_full": 0.95,
        "acc_retrieval_masked": 0.05,
        "acc_random_masked": [0.95, 0.9, 0.95],
    }
    ctx.eval_path("model_retrieval.json").write_text(json.dumps(result))
    claims = get_study("wu2024").model_verdicts(ctx)
    assert [c.holds for c in claims] == [True, True, True, True]
    assert claims[1].ours["share"].values == (1 / 24,)
    result["retrieval_heads"] = [[0, h] for h in range(3)]  # 3 of 24: 12.5%
    ctx.eval_path("model_retrieval.json").write_text(json.dumps(result))
    assert get_study("wu2024").model_verdicts(ctx)[1].holds is False


def test_study_trains_the_presets_own_budget(compose) -> None:
    # The preset's reliability (seeds 0-4 at 1 and 2 threads) was measured at its trainer.max_steps; a
    # study on fewer steps would train a run nobody measured.
    cfg = compose(["experiment=retrieval"])
    assert get_study("wu2024").default_steps == cfg.trainer.max_steps
    assert get_study("wu2024").task_overrides() == ["experiment=retrieval"]


def test_masking_zeroes_the_queries_only_while_answering(compose, tmp_path: Path, monkeypatch) -> None:
    """Wu et al.'s code masks a head by zeroing its query at the decoding steps; the prompt is encoded with
    every head. So the logits before the first answer step are the unmasked ones, and the answer steps
    change; a 0 gate (our old masking) also changed the prompt's."""
    import torch

    from mhaexp.config import instantiate_plain
    from mhaexp.nn.config import ModelConfig
    from mhaexp.nn.model import Transformer
    from mhaexp.studies.wu2024 import masked_logits

    monkeypatch.setenv("MHAEXP_CACHE", str(tmp_path / "cache"))
    cfg = compose(["experiment=retrieval", "data.n_train=64", "data.n_val=8"])
    dm = instantiate_plain(cfg.data)
    dm.prepare_data()
    batch = next(iter(dm.val_dataloader()))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=dm.vocab_size, n_layers=2, d_model=32, n_heads=4, max_seq_len=64))
    model.eval()
    heads = [(0, 1), (1, 2)]
    full = masked_logits(model, batch, [])
    with torch.no_grad():
        torch.testing.assert_close(full, model(batch["input_ids"], attention_mask=batch["attention_mask"])[0])
    masked = masked_logits(model, batch, heads)
    assert all(a.query_gate is None for a in model.attention_layers)  # restored
    steps = batch["answer"] > 0
    first = int(steps.long().argmax(dim=1).min())  # no row decodes before this position
    torch.testing.assert_close(masked[:, :first], full[:, :first])
    assert (masked[steps] - full[steps]).abs().max() > 1e-4
    for layer, head in heads:
        model.attention_layers[layer].head_gate[head] = 0.0
    with torch.no_grad():
        gated, _ = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    assert (gated[:, :first] - full[:, :first]).abs().max() > 1e-4
