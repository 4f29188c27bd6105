"""gu2024: the packed 64-token grammar rows it trains and probes on, why short rows could not test it, its
verdicts on fixture runs (holds, fails, inconclusive), and ``--model`` on random-init GPT-2 and Pythia
models saved here with ``save_pretrained`` (offline)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from test_import import gpt2_tokenizer

from mhaexp.config import build
from mhaexp.data.grammar import RELATIONS, pack_sentences, seed_sentence
from mhaexp.data.lexicon import DEFAULT
from mhaexp.data.spec import DataConfig
from mhaexp.data.tokenizers import WordTokenizer
from mhaexp.heads.patterns import sink_rate
from mhaexp.studies import get_study
from mhaexp.studies.gu2024 import NEAR_ZERO, SEQ_LEN
from mhaexp.studies.runner import Budget, StudyContext
from mhaexp.studies.verdict import UNTESTABLE

GU = get_study("gu2024")


# ---- the data ----------------------------------------------------------------------------------
def _grammar(**keys: object) -> DataConfig:
    return build(DataConfig, {"kind": "grammar", "n_train": 8, "n_val": 4, "n_probe": 6, **keys}, "data")


def test_packed_rows_are_full_and_start_with_bos_and_a_whole_sentence() -> None:
    src = _grammar(seq_len=SEQ_LEN, pack=True).source
    rows = list(src.generate("probe"))
    tok = src.tokenizer
    assert len(rows) == 6
    for r in rows:
        assert len(r["input_ids"]) == SEQ_LEN and all(r["attention_mask"])
        assert r["input_ids"][0] == tok.bos_id and tok.eos_id in r["input_ids"]
        assert tok.pad_id not in r["input_ids"]
    # The probe's first sentence, then the next ones, each closed by EOS.
    words = [tok.id_to_token(i) for i in rows[0]["input_ids"]]
    first = seed_sentence()
    assert words[: len(first) + 2] == ["<bos>", *first.tokens, "<eos>"]
    # Its arcs point at the same words as in the unpacked row (both shift positions by BOS).
    unpacked = next(_grammar(seq_len=SEQ_LEN).source.generate("probe"))
    n = len(first) + 2
    for key in ("heads", "rels", "coref"):
        assert rows[0][key][:n] == unpacked[key][:n]
    assert list(_grammar(seq_len=SEQ_LEN, pack=True).source.generate("probe")) == rows  # deterministic


def test_packing_positions_later_sentences_and_drops_arcs_cut_at_the_row_end() -> None:
    tok = WordTokenizer(DEFAULT.vocab)
    s = seed_sentence()  # "the cat that sat on the mat was fluffy": 9 words, "the" -> "cat"
    n = len(s)
    rows = list(pack_sentences([s] * 20, tok, RELATIONS, 2 * (n + 1) + 3))
    row = rows[0]
    assert len(rows) == 6 and len(row["input_ids"]) == 2 * (n + 1) + 3
    # The second copy starts after BOS + 9 words + EOS: its "the" (position 11) points at its "cat" (12).
    assert row["heads"][1] == 2 and row["heads"][n + 2] == n + 3
    assert row["rels"][n + 2] == RELATIONS.index("det")
    # The third copy is cut after "the cat that": "that" -> "sat" (cut) is dropped; "the" -> "cat" stays.
    third = 2 * (n + 1) + 1
    assert [tok.id_to_token(i) for i in row["input_ids"][third:]] == ["the", "cat"]
    assert row["heads"][third] == third + 1
    assert max(row["heads"]) < len(row["input_ids"]) and max(row["coref"]) < len(row["input_ids"])
    # The root keeps its relation although its head is none.
    root = s.rels.index("root") + 1
    assert row["heads"][root] == -1 and row["rels"][root] == RELATIONS.index("root")


def test_pack_changes_the_cache_identity_only_when_set() -> None:
    assert "pack" not in _grammar().source.identity()
    assert _grammar(pack=True).source.identity()["pack"] is True


@pytest.mark.parametrize(("length", "rate"), [(9, 1.0), (10, 0.0), (SEQ_LEN, 0.0)])
def test_uniform_attention_sinks_only_in_rows_of_nine_tokens_or_fewer(length: int, rate: float) -> None:
    """Why the study moved to 64-token rows: uniform causal attention gives the first token H_T / T on
    average (H_T the harmonic number), above eps = 0.3 up to T = 9 (0.314), below it from T = 10 (0.293)."""
    q = torch.arange(length)
    uniform = ((q[None, :] <= q[:, None]).float() / (q[:, None] + 1)).expand(3, 2, length, length)
    assert sink_rate(uniform, eps=0.3).tolist() == [rate, rate]


# ---- verdicts on fixture runs ------------------------------------------------------------------
# Enough training data for the paper's sink (> 100M tokens, Fig. 5 right): 2M rows of 64 tokens.
ENOUGH_ROWS = 2_000_000


def _run(stage: Path, num: int, seed: int, series: dict[int, float], se: float, n_train: int) -> None:
    """A run directory as the readers see it: .hydra/{config,overrides}.yaml, status.json, the head table."""
    run = stage / f"{num}_fixture"
    (run / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "data": {"n_train": n_train, "seq_len": SEQ_LEN}, "analysis": {"thresholds": {"sink": 0.3}}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}"]))
    (run / "status.json").write_text(json.dumps({"status": "ok"}))
    (run / "analysis").mkdir()
    with (run / "analysis" / "head_metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "layer", "head", "metric", "value", "se", "n"])
        for step, rate in series.items():
            # Two heads around the rate; 64 sequences at each step.
            w.writerows(
                [(step, 0, 0, "sink_rate", rate - 0.01, se, 64), (step, 0, 1, "sink_rate", rate + 0.01, se, 64)]
            )


def _gu_runs(
    tmp_path: Path, rates: list[dict[int, float]], se: float = 0.02, n_train: int = ENOUGH_ROWS
) -> StudyContext:
    ctx = StudyContext("gu2024", tmp_path, Budget(steps=1500, seeds=len(rates)))
    for seed, series in enumerate(rates):
        _run(ctx.runs_dir / "train", seed, seed, series, se, n_train)
    return ctx


def test_gu2024_holds_when_no_sink_at_step_0_and_one_after_training(tmp_path: Path) -> None:
    ctx = _gu_runs(tmp_path, [{0: 0.01, 750: 0.1, 1500: 0.3}, {0: 0.01, 750: 0.2, 1500: 0.4}])
    no_sink, emerges = GU.verdicts(ctx)
    assert (no_sink.holds, emerges.holds) == (True, True)
    assert no_sink.ours.values == pytest.approx((0.01, 0.01))
    assert emerges.ours["rise"].values == pytest.approx((0.29, 0.39))
    assert emerges.ours["rise se"].values == pytest.approx((0.02 * 2**0.5,) * 2)
    assert emerges.ours["onset step"].values == (1500.0, 750.0)  # half of 0.3 first at 1500, of 0.4 at 750
    assert "> 0.3" in no_sink.metric and f"{SEQ_LEN}-token packed rows" in no_sink.metric
    assert no_sink.criterion_source and emerges.criterion_source
    GU.plot(ctx)
    assert (tmp_path / "sink_rate.png").stat().st_size > 1000


def test_gu2024_fails_with_a_sink_at_step_0_and_no_rise(tmp_path: Path) -> None:
    no_sink, emerges = GU.verdicts(_gu_runs(tmp_path, [{0: 0.3, 1500: 0.02}, {0: 0.2, 1500: 0.03}]))
    assert (no_sink.holds, emerges.holds) == (False, False)
    assert "every seed misses >= 0.05" in emerges.why


def test_gu2024_is_inconclusive_when_the_rise_is_inside_its_error_bar(tmp_path: Path) -> None:
    # Both seeds end above the no-sink bar, one rises by 0.04 with a 2-se bar of 0.057: not decided.
    no_sink, emerges = GU.verdicts(_gu_runs(tmp_path, [{0: 0.03, 1500: 0.3}, {0: 0.04, 1500: 0.08}]))
    assert no_sink.holds is True and emerges.holds is None
    assert "by more than 2 standard errors" in emerges.why


@pytest.mark.parametrize("final", [0.02, 0.3], ids=["no-sink", "sink"])
def test_gu2024_emergence_is_untestable_on_less_data_than_the_paper_needs(tmp_path: Path, final: float) -> None:
    """The study's default data (20000 rows of 64 tokens: 1.28M tokens) is below the 100M at which Gu et al.
    see no sink (Fig. 5 right): the claim is untestable whatever the rate, decided from the config alone."""
    ctx = _gu_runs(tmp_path, [{0: 0.0, 1500: final}, {0: 0.0, 1500: final}], n_train=20000)
    no_sink, emerges = GU.verdicts(ctx)
    assert no_sink.holds is True and emerges.holds == UNTESTABLE
    assert "1,280,000 tokens of data" in emerges.why and "Fig. 5 right" in emerges.why
    assert emerges.ours["training data tokens"].values == (1_280_000.0, 1_280_000.0)
    # One row past the paper's amount, the same runs are decided by the rate.
    more = 100_000_000 // SEQ_LEN + 1
    ctx = _gu_runs(tmp_path / "more", [{0: 0.0, 1500: final}, {0: 0.0, 1500: final}], n_train=more)
    assert GU.verdicts(ctx)[1].holds is (final > NEAR_ZERO)


# ---- --model on random-init GPT-2 and Pythia -----------------------------------------------------
def _random_model(directory: Path, family: str) -> Path:
    """A random-init HF causal LM at transformers' own initialization, saved with ``save_pretrained``, and a
    byte-level BPE tokenizer beside it (both families use one)."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig

    config = {
        "gpt2": GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=SEQ_LEN, vocab_size=320),
        "gpt_neox": GPTNeoXConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=SEQ_LEN,
            vocab_size=320,
        ),
    }[family]
    directory.mkdir(parents=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(directory))
    gpt2_tokenizer(directory)
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_gu2024_model_finds_no_sink_in_a_random_init_model(family: str, cli, tmp_path: Path) -> None:
    """The study's --model path end to end: import, grammar text through the model's tokenizer in 64-token
    windows, mhaexp-analyze, the verdict. Near-uniform attention at initialization gives the first token
    about H_64 / 64 = 0.074 < 0.3 in every head, so the rate is 0 and "sinks exist" does not hold."""
    source = _random_model(tmp_path / family, family)
    out = tmp_path / "out"
    r = cli("mhaexp-study", "gu2024", "--model", str(source), "--out", str(out), cwd=tmp_path, timeout=600,
            extra_env={"STUDY_SMOKE": "1"})  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    doc = json.loads((out / "verdict.json").read_text())
    assert doc["budget"]["model"] == str(source) and set(doc["stage_seconds"]) == {"import", "analyze"}
    (claim,) = doc["claims"]
    assert claim["holds"] is False and claim["criterion_source"]
    assert claim["ours"]["sink rate"]["values"] == [0.0] and claim["ours"]["lower end"]["values"] == [0.0]
    assert f"on 8 windows of {SEQ_LEN} tokens" in claim["metric"] and "(eps 0.3)" in claim["metric"]
    # Every head of the 2 x 4 was measured on the 8 probe windows.
    with (out / "model" / "analysis" / "head_metrics.csv").open() as f:
        sink = [row for row in csv.DictReader(f) if row["metric"] == "sink_rate"]
    assert len(sink) == 8 and {row["n"] for row in sink} == {"8"} and {float(row["value"]) for row in sink} == {0.0}
    assert NEAR_ZERO > 0 and claim["why"] == f"every seed misses >= {NEAR_ZERO:g} (0)"
