"""The needle-in-a-haystack generator: lengths, needles, the answer, determinism, bad settings."""

from __future__ import annotations

import csv
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mhaexp.data.retrieval import KEY, QUERY, VAL, RetrievalSource, depth_bin, depth_bin_labels
from mhaexp.errors import ConfigError
from mhaexp.nn.objectives import IGNORE, LOSS_MASK, answer_depth, answer_exact_match, causal_lm_objective

SIZES = {"train": 50, "val": 10, "probe": 5}


@pytest.mark.parametrize("filler", ["random", "grammar"])
def test_sequences_hold_the_asked_needle_and_its_answer(filler: str) -> None:
    src = RetrievalSource(seq_len=64, sizes=SIZES, seed=0, filler=filler, value_len=3, n_needles=2)
    tok = src.tokenizer
    rows = list(src.generate("train"))
    assert len(rows) == 50
    depths = set()
    for row in rows:
        words = [tok.id_to_token(i) for i in row["input_ids"]]
        assert len(words) == 64 and words[0] == "<bos>" and words.count(KEY) == 2 and words.count(QUERY) == 1
        assert "<unk>" not in words
        q = words.index(QUERY)
        key, answer = words[q + 1], words[q + 3 :]
        assert words[q + 2] == VAL and len(answer) == 3
        # The asked needle is the one with the queried key, and "needle" marks its values.
        k = [i for i, w in enumerate(words[:q]) if w == KEY and words[i + 1] == key]
        assert len(k) == 1
        start = k[0] + 3
        assert [i for i, v in enumerate(row["needle"]) if v] == [start, start + 1, start + 2]
        assert words[start : start + 3] == answer
        # "answer" marks the queries that predict an answer token: <val> and the first two answer tokens.
        assert [i for i, v in enumerate(row["answer"]) if v] == [q + 2, q + 3, q + 4]
        assert {row["answer"][i] for i in (q + 2, q + 3, q + 4)} == {1}
        # The depth is recorded at the answer steps only, and it is where the asked needle sits.
        d = {row["depth"][i] for i in (q + 2, q + 3, q + 4)}
        assert len(d) == 1 and set(row["depth"]) == d | {-1}
        hay_before = k[0] - 1 - (6 if start > [i for i, w in enumerate(words[:q]) if w == KEY][0] + 3 else 0)
        assert d == {round(100 * hay_before / (64 - 1 - 3 * 6))}
        depths |= d
    assert len(depths) > 10  # depths spread over the haystack


def test_several_queries_ask_distinct_needles_in_turn() -> None:
    src = RetrievalSource(seq_len=96, sizes=SIZES, seed=1, n_needles=4, n_queries=3, value_len=2)
    tok = src.tokenizer
    for row in src.generate("val"):
        words = [tok.id_to_token(i) for i in row["input_ids"]]
        queries = [i for i, w in enumerate(words) if w == QUERY]
        assert len(queries) == 3 and queries[-1] == 96 - 5
        asked = [words[q + 1] for q in queries]
        assert len(set(asked)) == 3
        for n, q in enumerate(queries, start=1):
            k = next(i for i, w in enumerate(words[:q]) if w == KEY and words[i + 1] == words[q + 1])
            assert words[q + 3 : q + 5] == words[k + 3 : k + 5]  # the answer is that needle's value
            assert [i for i, a in enumerate(row["answer"]) if a == n] == [q + 2, q + 3]
            assert row["needle"][k + 3] == row["needle"][k + 4] == 1
        assert sum(row["needle"]) == 6 and sum(a > 0 for a in row["answer"]) == 6


def test_deterministic_and_split_dependent() -> None:
    a = list(RetrievalSource(seq_len=48, sizes=SIZES, seed=3).generate("val"))
    b = list(RetrievalSource(seq_len=48, sizes=SIZES, seed=3).generate("val"))
    c = list(RetrievalSource(seq_len=48, sizes=SIZES, seed=3).generate("train"))[:10]
    assert a == b and a != c


def test_depth_range() -> None:
    # seq_len 81: a haystack of 68 = 81 - <bos> - needle (6) - query (6), cut at 34.
    rows = RetrievalSource(seq_len=81, sizes=SIZES, seed=0, n_needles=1, min_depth=0.5, max_depth=0.5).generate("train")
    assert {d for r in rows for d in r["depth"]} == {50, -1}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"filler": "lorem"}, "data.filler"),
        ({"value_len": 0}, "data.value_len"),
        ({"n_needles": 0}, "data.n_needles"),
        ({"n_needles": 2, "n_queries": 3}, "data.n_queries"),
        ({"n_keys": 1}, "data.n_keys"),
        ({"min_depth": 0.8, "max_depth": 0.2}, "data.min_depth"),
        ({"seq_len": 10}, "data.seq_len"),
        ({"loss": "needle"}, "data.loss"),
        ({"n_values": 4, "n_needles": 3, "value_len": 2}, "data.distinct_values"),
        ({"distinct_values": "yes"}, "data.distinct_values"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict, field: str) -> None:
    args = {"seq_len": 64, "sizes": SIZES, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=rf"^{field}="):
        RetrievalSource(**args)


def test_training_on_retrieval_data_scores_retrieval_and_streaming(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    run = tmp_path / "run"
    args = [
        "data=retrieval",
        "model=tiny",
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
        "data.n_train=300",
        "data.n_val=32",
        "analysis.probe_sequences=8",
        "data.seq_len=128",
        "logger=csv",
        f"hydra.run.dir={run}",
    ]
    env = {**os.environ, "MHAEXP_CACHE": str(tmp_path / "cache")}
    proc = cli("mhaexp-train", *args, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "head roles    :" in proc.stdout
    with open(run / "analysis" / "head_metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] in ("retrieval", "streaming")]
    final = max(int(r["step"]) for r in rows)
    per_metric = {
        m: [float(r["value"]) for r in rows if r["metric"] == m and int(r["step"]) == final]
        for m in ("retrieval", "streaming")
    }
    assert len(per_metric["retrieval"]) == len(per_metric["streaming"]) == 8  # 2 layers x 4 heads
    assert all(0.0 <= v <= 1.0 for vs in per_metric.values() for v in vs)
    # Validation scores the copied value by needle depth; every bin that holds a needle is logged.
    with open(run / "metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("val/retrieval_acc")]
    assert [int(r["step"]) for r in logged] == [9, 19]
    bins = [k for k in logged[-1] if k.startswith("val/retrieval_acc/depth_")]
    assert bins and set(bins) <= {f"val/retrieval_acc/depth_{b}" for b in depth_bin_labels()}
    assert all(0.0 <= float(logged[-1][k]) <= 1.0 for k in ["val/retrieval_acc", *bins])


def test_exact_match_is_per_query_and_binned_by_the_needle_depth() -> None:
    # Two rows, T = 6. Row 0 answers query 1 at steps 1-2 and query 2 at step 4; row 1 only query 1.
    targets = torch.tensor([[5, 6, 7, 8, 9, -100], [5, 6, 7, 8, 9, -100]])
    answer = torch.tensor([[0, 1, 1, 0, 2, 0], [0, 0, 0, 1, 1, 0]])
    depth = torch.tensor([[-1, 30, 30, -1, 100, -1], [-1, -1, -1, 0, 0, -1]])
    pred = targets.clamp(min=0).clone()
    pred[0, 2] = 0  # query 1 of row 0 misses its second step
    logits = torch.nn.functional.one_hot(pred, 10).float()
    hit = answer_exact_match(logits, targets, answer)
    assert hit[0].tolist() == [0.0, 1.0]
    assert hit[1, 0] == 1.0 and hit[1, 1].isnan()
    assert answer_depth(depth, answer).tolist() == [[30, 100], [0, -1]]
    assert depth_bin(torch.tensor([0, 19, 20, 99, 100])).tolist() == [0, 0, 1, 4, 4]
    assert depth_bin_labels() == ["00-20", "20-40", "40-60", "60-80", "80-100"]


def test_without_the_marker_the_value_follows_its_key() -> None:
    src = RetrievalSource(seq_len=40, sizes=SIZES, seed=2, n_needles=2, n_queries=1, value_len=2, marker=False)
    tok = src.tokenizer
    for row in src.generate("train"):
        words = [tok.id_to_token(i) for i in row["input_ids"]]
        assert VAL not in words and len(words) == 40
        q = words.index(QUERY)
        assert q == 40 - 4  # <query> k v v
        k = next(i for i, w in enumerate(words[:q]) if w == KEY and words[i + 1] == words[q + 1])
        assert words[k + 2 : k + 4] == words[q + 2 : q + 4]
        assert [i for i, v in enumerate(row["needle"]) if v] == [k + 2, k + 3]
        # The queried key predicts the first value token; the first value predicts the second.
        assert [i for i, a in enumerate(row["answer"]) if a] == [q + 1, q + 2]


def test_answer_only_loss_scores_exactly_the_answer_steps() -> None:
    src = RetrievalSource(seq_len=64, sizes=SIZES, seed=3, n_needles=3, n_queries=2, value_len=2, loss="answer")
    plain = RetrievalSource(seq_len=64, sizes=SIZES, seed=3, n_needles=3, n_queries=2, value_len=2)
    assert src.train_columns == (LOSS_MASK,) and plain.train_columns == ()
    assert src.identity() != plain.identity()  # a different cache entry
    for row, same in zip(src.generate("train"), plain.generate("train"), strict=True):
        assert row["input_ids"] == same["input_ids"] and LOSS_MASK not in same
        batch = {k: torch.tensor([v]) for k, v in row.items()}
        _, targets = causal_lm_objective(batch)
        scored = (targets[0] != IGNORE).nonzero().flatten().tolist()
        # 2 queries x 2 value tokens, each predicted at the step before it: the answer steps.
        assert scored == [i for i, a in enumerate(row["answer"]) if a] and len(scored) == 4
        words = [src.tokenizer.id_to_token(int(i)) for i in targets[0][targets[0] != IGNORE]]
        assert all(w.startswith("v") for w in words)
        full = causal_lm_objective({k: v for k, v in batch.items() if k != LOSS_MASK})[1]
        assert int((full != IGNORE).sum()) == 63


def test_distinct_values_never_repeat_a_value_token_in_a_sequence() -> None:
    """8 needles x 3 values from 24 values: without replacement every value token occurs once per
    sequence, so each answer step after the first is one induction step; with replacement repeats occur."""
    kw = {"seq_len": 96, "sizes": SIZES, "seed": 4, "n_needles": 8, "n_queries": 1, "value_len": 3, "n_values": 24}
    distinct, repeated = RetrievalSource(**kw), RetrievalSource(**kw, distinct_values=False)
    assert distinct.identity() != repeated.identity()  # a different cache entry

    def value_counts(src: RetrievalSource) -> list[int]:
        counts = []
        for row in src.generate("train"):
            before_query = [src.tokenizer.id_to_token(i) for i in row["input_ids"][: -src.needle_len]]
            values = [w for w in before_query if w.startswith("v")]
            assert len(values) == 24
            counts.append(len(set(values)))
        return counts

    assert value_counts(distinct) == [24] * SIZES["train"]
    assert min(value_counts(repeated)) < 24
