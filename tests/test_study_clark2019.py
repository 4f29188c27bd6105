"""clark2019: BERT's input format on the grammar, attention to [CLS]/[SEP]/punctuation per head, the
verdicts on fixture files (passing, failing, untestable), and ``--model`` on a random-init BERT, offline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from mhaexp.analysis.collect import ProbeData, token_class_keys
from mhaexp.data.grammar import GrammarSource, encode_sentence
from mhaexp.heads.patterns import Chunk, token_class_sums
from mhaexp.studies import get_study
from mhaexp.studies.clark2019 import FIXED_OFFSET, _treebank_dir, layer_alike_test, relation_scores
from mhaexp.studies.runner import Budget, StudyContext


def test_pair_sentences_frame_two_sentences_as_bert_does_and_keep_their_arcs() -> None:
    src = GrammarSource(seq_len=73, sizes={"probe": 3}, seed=0, pair_sentences=True)
    single = GrammarSource(seq_len=73, sizes={"probe": 6}, seed=0)
    a, b = list(single.sentences("probe"))[:2]  # the same stream, two sentences a sequence
    row = next(src.generate("probe"))
    tok = src.tokenizer
    n = len(a) + len(b) + 3
    assert row["input_ids"][:n] == [tok.bos_id, *map(tok.token_to_id, a.tokens), tok.eos_id,
                                    *map(tok.token_to_id, b.tokens), tok.eos_id]  # fmt: skip
    assert sum(row["attention_mask"]) == n and len(row["input_ids"]) == 73
    # Each arc joins the same two words it joined in its own sentence, B's moved past A and its [SEP].
    alone = encode_sentence(b, tok, src.relations, len(b) + 2)
    for i in range(1, len(b) + 1):
        h = alone["heads"][i]
        assert row["heads"][len(a) + 1 + i] == (h + len(a) + 1 if h >= 0 else -1)
        assert row["rels"][len(a) + 1 + i] == alone["rels"][i]
    assert row["heads"][len(a) + 1] == -1 and row["heads"][n - 1] == -1  # the [SEP]s have no head
    with pytest.raises(Exception, match=r"data.seq_len=20 is invalid: an int >= 21 \(BOS \+ A \+ EOS \+ B \+ EOS"):
        GrammarSource(seq_len=20, sizes={"probe": 1}, seed=0, pair_sentences=True)


def test_attention_to_each_token_class_per_head() -> None:
    # [CLS] a , b [SEP] c [SEP]: ids 0 [CLS], 1 [SEP], 2 ",", 3.. words.
    names = {0: "[CLS]", 1: "[SEP]", 2: ",", 3: "a", 4: "b", 5: "c", 6: "##."}
    ids = torch.tensor([[0, 3, 2, 4, 1, 5, 6, 1]])
    mask = torch.tensor([[True] * 7 + [False]])
    probe = ProbeData([], [], names.__getitem__, frozenset({0, 1}), bos_id=0, vocab_size=7, eos_id=1)
    keys = token_class_keys(probe, ids, mask)
    assert keys["sep_keys"].tolist() == [[False, False, False, False, True, False, False, False]]  # pad: not a key
    assert keys["punct_keys"].tolist() == [[False, False, True, False, False, False, True, False]]  # "##." too
    # Head 0 puts 0.6 on [SEP] (0.4 + 0.2 over its two) and 0.1 on [CLS]; head 1 is uniform over 7 keys.
    p = torch.zeros(1, 2, 8, 8)
    p[0, 0, :, [0, 1, 4, 7]] = torch.tensor([0.1, 0.3, 0.4, 0.2])
    p[0, 0, :, 7] = 0.0
    p[0, 0, :, 1] += 0.2
    p[0, 1, :, :7] = 1 / 7
    chunk = Chunk(p, mask, causal=False)
    assert token_class_sums(chunk, keys["sep_keys"]).value().tolist() == pytest.approx([0.4, 1 / 7])
    assert token_class_sums(chunk, keys["cls_keys"]).value().tolist() == pytest.approx([0.1, 1 / 7])
    # A probe without punctuation leaves the class out: its metric is not computed, rather than zero.
    assert "punct_keys" not in token_class_keys(probe, torch.tensor([[0, 3, 1]]), torch.ones(1, 3, dtype=torch.bool))


def test_the_layer_permutation_test_decides_both_ways() -> None:
    heads = [(layer, h) for layer in range(3) for h in range(4)]
    alike = [[0.0 if a == b else (0.1 if a[0] == b[0] else 0.5) for b in heads] for a in heads]
    effect, p = layer_alike_test(heads, alike)
    assert effect == pytest.approx(0.4) and p < 0.001
    unlike = [[0.0 if a == b else (0.5 if a[0] == b[0] else 0.1) for b in heads] for a in heads]
    effect, p = layer_alike_test(heads, unlike)
    assert effect < 0 and p > 0.5
    assert layer_alike_test(heads, alike) == layer_alike_test(heads, alike)  # seeded: the same p every time


# ---- verdicts on the files the readers read ------------------------------------------------------------


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _run(run: Path, seed: int, sep: float, entropy: float, broad: bool, js_alike: bool) -> None:
    """One trained run's analysis: 2 layers x 4 heads, attention on [SEP]/[CLS], entropies, roles, JS."""
    heads = [(layer, h) for layer in range(2) for h in range(4)]
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"seed: {seed}\n")
    (run / ".hydra" / "overrides.yaml").write_text("[]\n")
    (run / "status.json").write_text(json.dumps({"status": "ok"}))
    rows = []
    for layer, h in heads:
        rows.append((300, layer, h, "attn_sep", sep if layer == 1 else 0.1, 0.01, 64))
        rows.append((300, layer, h, "attn_cls", 0.2, 0.01, 64))
        rows.append((300, layer, h, "normalized_entropy", entropy if (layer, h) == (0, 0) else 0.5, 0.01, 64))
    _write_csv(run / "analysis" / "head_metrics.csv", ["step", "layer", "head", "metric", "value", "se", "n"], rows)
    roles = [(300, 0, 0, "broad" if broad else "unassigned", "broad", 0.95, 0.05, 0.01)]
    _write_csv(
        run / "analysis" / "head_roles.csv", ["step", "layer", "head", "role", "family", "score", "margin", "se"], roles
    )
    near, far = (0.1, 0.5) if js_alike else (0.5, 0.1)
    js = [(300, *a, *b, 0.0 if a == b else near if a[0] == b[0] else far + 0.01 * seed) for a in heads for b in heads]
    _write_csv(run / "analysis" / "head_js.csv", ["step", "layer", "head", "other_layer", "other_head", "js"], js)


def _relations(path: Path, margins: dict[str, float], fixed: tuple[str, ...] = ("amod", "acomp")) -> None:
    """treebank_relations.csv: per relation, dep2head and transposed rows; ``fixed`` relations at baseline 1."""
    rows = []
    for rel, margin in margins.items():
        base = 1.0 if rel in fixed else 0.4
        rows.append((rel, 100, "dep2head", 1, 2, min(1.0, base + margin), 0.02, base, 0.3, margin))
        rows.append((rel, 100, "transposed", 0, 1, base - 0.2, 0.02, base, 0.3, -0.2))
    header = ["relation", "arcs", "direction", "layer", "head", "accuracy", "se", "offset_baseline",
              "position_baseline", "margin"]  # fmt: skip
    _write_csv(path, header, rows)


def _study(tmp_path: Path, sep: float, entropy: float, broad: bool, margins: dict[str, float], js_alike: bool):
    ctx = StudyContext("clark2019", tmp_path, Budget(seeds=2))
    for seed in (0, 1):
        _run(ctx.runs_dir / "train" / f"{seed}_fixture", seed, sep, entropy, broad, js_alike)
        _relations(_treebank_dir(ctx, seed) / "treebank_relations.csv", margins)
    return get_study("clark2019").verdicts(ctx)


def test_clark2019_verdicts_hold(tmp_path: Path) -> None:
    margins = {"nsubj": 0.3, "det": 0.2, "prep": -0.1, "amod": 0.0}
    sep, broad, syntax, alike = _study(tmp_path, 0.7, 0.97, True, margins, js_alike=True)
    assert (sep.holds, broad.holds, syntax.holds, alike.holds) == (True, True, True, True)
    assert sep.ours["[SEP], best layer mean"].values == (0.7, 0.7)
    assert broad.ours["largest normalised entropy"].values == (0.97, 0.97)
    # nsubj and det beaten, prep not: 2 of 3 testable; amod (baseline 1.0) is untestable, not a failure.
    assert syntax.ours["relations beaten"].values == (2, 2) and "margin amod" not in syntax.ours
    assert "amod (baseline 1.000)" in syntax.why and "at least 2 of 3" in syntax.criterion
    assert alike.ours["across minus within"].values == pytest.approx((0.4, 0.41))
    assert all(c.criterion_source for c in (sep, broad, syntax, alike))


def test_clark2019_verdicts_fail(tmp_path: Path) -> None:
    margins = {"nsubj": -0.3, "det": 0.2, "prep": -0.1, "amod": 0.0}
    sep, broad, syntax, alike = _study(tmp_path, 0.3, 0.6, False, margins, js_alike=False)
    assert (sep.holds, broad.holds, syntax.holds, alike.holds) == (False, False, False, False)
    assert syntax.ours["relations beaten"].values == (1, 1)


def test_clark2019_relations_all_fixed_to_one_offset_are_untestable(tmp_path: Path) -> None:
    _, _, syntax, _ = _study(tmp_path, 0.7, 0.97, True, {"amod": 0.0, "acomp": 0.0}, js_alike=True)
    assert syntax.holds == "untestable" and "acomp" in syntax.why
    scores = relation_scores(_treebank_dir(StudyContext("clark2019", tmp_path, Budget()), 0) / "treebank_relations.csv")
    assert scores["acomp"].fixed >= FIXED_OFFSET and scores["acomp"].direction == "dep2head"


def test_relations_read_clarks_two_directions_only(tmp_path: Path) -> None:
    # obj: dep2head 0.50 vs 0.40 (+0.10); transposed 0.65 vs 0.40 (+0.25): the relation's best of Clark's two.
    # Voita's head2dep reading (0.90 vs 0.30) is in the table but is not Clark's: not read.
    table = tmp_path / "treebank_relations.csv"
    header = ["relation", "arcs", "direction", "layer", "head", "accuracy", "se", "offset_baseline"]
    rows = [("obj", 50, "dep2head", 0, 1, 0.5, 0.01, 0.4), ("obj", 50, "transposed", 1, 3, 0.65, 0.2, 0.4)]
    _write_csv(table, header, [*rows, ("obj", 50, "head2dep", 2, 0, 0.9, 0.01, 0.3)])
    obj = relation_scores(table)["obj"]
    assert (obj.direction, obj.head, obj.baseline, obj.fixed) == ("transposed", "L1H3", 0.4, 0.4)
    assert obj.margin == pytest.approx(0.25) and obj.testable and not obj.beats  # 0.65 - 2 x 0.2 < 0.4


# ---- --model on a random-init BERT, offline ------------------------------------------------------------


def _bert(tmp_path: Path) -> Path:
    from test_import import bert_tokenizer  # the WordPiece with BERT's specials the import tests build
    from transformers import BertConfig

    from mhaexp.tools.import_parity import save_random_hf

    source = tmp_path / "bert"
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    save_random_hf(config, source, std=0.3)
    bert_tokenizer(source)
    return source


def test_clark2019_on_a_bert_through_mhaexp_study(tmp_path: Path, cli) -> None:
    source = _bert(tmp_path)
    out = tmp_path / "study"
    r = cli("mhaexp-study", "clark2019", "--model", str(source), "--out", str(out), cwd=tmp_path,
            extra_env={"STUDY_SMOKE": "1"}, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "verdict.json").read_text())
    claims = {c["claim"]: c for c in doc["claims"]}
    assert len(claims) == 4 and all(c["criterion_source"] for c in claims.values())
    # The imported model read the grammar's sentences as [CLS] sentence [SEP] through its own WordPiece.
    table = (out / "model" / "analysis" / "treebank_relations.csv").read_text()
    assert "dep2head" in table and "transposed" in table
    metrics = (out / "model" / "analysis" / "head_metrics.csv").read_text()
    assert ",attn_sep," in metrics and ",attn_cls," in metrics
    sep = next(c for c in doc["claims"] if "[SEP]" in c["claim"])
    assert 0.0 <= sep["ours"]["[SEP], best layer mean"]["values"][0] <= 1.0
    assert (out / "model" / "analysis" / "head_js.csv").is_file()

    # A treebank of the user's own, given after the study name; a missing one is refused in one line.
    bad = cli("mhaexp-study", "clark2019", "--model", str(source), "conllu=nope.conllu", "--out", str(tmp_path / "x"),
              cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "conllu='nope.conllu' is invalid" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()
