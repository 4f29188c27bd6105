"""Data layer: grammar gold arcs, determinism, CoNLL-U, datamodules, induction, text."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from mhaexp.data import (
    RELATIONS,
    SEED_TEXT,
    LMDataModule,
    WordTokenizer,
    arc_masks,
    generate_corpus,
    read_conllu,
    seed_sentence,
    to_conllu,
    write_conllu,
)
from mhaexp.data import grammar as g
from mhaexp.data import lexicon as lex
from mhaexp.data.grammar import relation_list
from mhaexp.data.lexicon import Sentence
from mhaexp.errors import ConfigError

# Module-scoped fixtures: one worker runs the whole module under pytest-xdist (make test).
pytestmark = pytest.mark.xdist_group("test_data")

SMALL = {"n_train": 300, "n_val": 60, "n_probe": 12, "batch_size": 16}
VERB_BY_FORM = {f: v for v in lex.VERBS for f in (v.base, v.s3, v.past)}
LEMMA = {w: pair[0] for pairs in lex.NOUNS.values() for pair in pairs for w in pair}


@pytest.fixture(scope="module")
def corpus() -> list[Sentence]:
    return generate_corpus(800, seed=3)


def tree_problems(s: Sentence) -> list[str]:
    n = len(s)
    problems = []
    if not (len(s.heads) == len(s.rels) == len(s.coref) == n):
        return ["annotation lengths differ"]
    roots = [i for i, h in enumerate(s.heads) if h == -1]
    if len(roots) != 1 or s.rels[roots[0]] != "root":
        problems.append(f"roots {roots}")
    for i, (h, r) in enumerate(zip(s.heads, s.rels, strict=True)):
        if h != -1 and not (0 <= h < n and h != i):
            problems.append(f"bad head {i}->{h}")
        if r not in g.TREE_RELATIONS or (r == "root") != (h == -1):
            problems.append(f"bad rel {i}:{r}")
    for i in range(n):  # every chain must end at the root within n steps
        j, steps = i, 0
        while s.heads[j] != -1 and steps <= n:
            j, steps = s.heads[j], steps + 1
        if steps > n:
            problems.append(f"cycle through {i}")
    return problems


def subject_features(s: Sentence, i: int) -> tuple[frozenset[str], str]:
    """Noun classes and number a subject word stands for (pronoun/that via coref)."""
    w = s.tokens[i]
    if w in lex.NOUN_FEATS:
        cls, num = lex.NOUN_FEATS[w]
        return frozenset({cls}), num
    assert s.coref[i] >= 0, f"{w!r} in {s.text!r} has no antecedent"
    return subject_features(s, s.coref[i])


def test_gold_trees_are_well_formed(corpus: list[Sentence]) -> None:
    bad = {s.text: tree_problems(s) for s in corpus if tree_problems(s)}
    assert not bad
    assert tree_problems(seed_sentence()) == []
    lengths = [len(s) for s in corpus]
    assert max(lengths) <= g.MAX_SENTENCE_LEN
    assert sum(6 <= n <= 24 for n in lengths) / len(lengths) > 0.8
    used = {r for s in corpus for r in s.rels}
    assert used == set(g.TREE_RELATIONS)  # every documented relation is exercised
    assert RELATIONS == [*g.TREE_RELATIONS, "coref"]


def test_coreference_links(corpus: list[Sentence]) -> None:
    n_pron = 0
    for s in corpus:
        for i, ante in enumerate(s.coref):
            w = s.tokens[i]
            if w in lex.PRONOUN_FEATS or w == "that":
                assert 0 <= ante < i and s.tokens[ante] in lex.NOUN_FEATS, s.text
            else:
                assert ante == -1, s.text
            if w in lex.PRONOUN_FEATS:
                n_pron += 1
                classes, number = lex.PRONOUN_FEATS[w]
                cls, ante_number = lex.NOUN_FEATS[s.tokens[ante]]
                assert cls in classes and number == ante_number, s.text
            if w == "that":  # "that" refers to the noun its clause modifies
                assert s.heads[s.heads[i]] == ante and s.rels[s.heads[i]] == "acl:relcl"
    assert n_pron > 100


def test_second_clause_repeats_an_earlier_noun_phrase(corpus: list[Sentence]) -> None:
    """A re-mentioned subject copies an earlier noun phrase word for word, and not always the main subject."""
    n_repeat = n_not_main = 0
    for s in corpus:
        if "and" not in s.tokens:
            continue
        start = s.tokens.index("and") + 1
        if s.tokens[start] in lex.PRONOUN_FEATS:
            continue
        noun = next(i for i in range(start, len(s)) if s.tokens[i] in lex.NOUN_FEATS)
        copy = s.tokens[start : noun + 1]
        earlier = [i for i in range(start - len(copy)) if s.tokens[i : i + len(copy)] == copy]
        assert earlier, s.text
        assert s.rels[noun] == "nsubj" and s.coref[noun] == -1, s.text
        n_repeat += 1
        arcs = enumerate(zip(s.heads, s.rels, strict=True))
        main_subject = next(i for i, (h, r) in arcs if r == "nsubj" and s.rels[h] == "root")
        n_not_main += all(i + len(copy) - 1 != main_subject for i in earlier)
    assert n_repeat > 100 and n_not_main > 30, (n_repeat, n_not_main)


def test_agreement_and_selection(corpus: list[Sentence]) -> None:
    checks = {"subj-verb": 0, "adj": 0, "det": 0, "prep": 0, "distant": 0, "fronted": 0, "tense": 0}
    for s in corpus:
        for i, (w, h, r) in enumerate(zip(s.tokens, s.heads, s.rels, strict=True)):
            if r == "nsubj" and lex.VERB_NUMBER.get(s.tokens[h]) is not None:
                classes, number = subject_features(s, i)
                assert number == lex.VERB_NUMBER[s.tokens[h]], s.text
                checks["subj-verb"] += 1
                between = [lex.NOUN_FEATS[t][1] for t in s.tokens[i + 1 : h] if t in lex.NOUN_FEATS]
                checks["distant"] += any(n != number for n in between)
            if r == "amod":
                assert lex.NOUN_FEATS[s.tokens[h]][0] in lex.ADJ_CLASSES[w], s.text
                checks["adj"] += 1
            if r == "acomp":
                subj = [j for j, hj in enumerate(s.heads) if hj == h and s.rels[j] == "nsubj"]
                classes, _ = subject_features(s, subj[0])
                assert classes & lex.ADJ_CLASSES[w], s.text
                checks["adj"] += 1
            if r == "det" and w != "the":
                assert lex.NOUN_FEATS[s.tokens[h]][1] == ("sg" if w in ("a", "this") else "pl")
                checks["det"] += 1
            if r == "pobj":
                assert LEMMA[w] in lex.PREPOSITIONS[s.tokens[h]], s.text
            if r == "prep" and h > i:  # fronted place PP: attaches to whatever the main predicate is
                assert i == 0 and w in g.FRONTED_PREPS, s.text
                checks["fronted"] += 1
            elif r == "prep":
                assert w in VERB_BY_FORM[s.tokens[h]].preps, s.text
                checks["prep"] += 1
            if r == "advmod":  # the fronted time adverb fixes the tense of every verb
                assert i == 0 and s.rels[h] == "root", s.text
                past = {v.past for v in lex.VERBS} | {"was", "were"}
                verbs = [t for t in s.tokens if t in lex.VERB_NUMBER]
                assert all((t in past) == (lex.TIME_ADVERBS[w] == "past") for t in verbs), s.text
                checks["tense"] += 1
    assert min(checks.values()) > 50, checks


def test_seed_sentence_annotation() -> None:
    s = seed_sentence()
    assert s.text == SEED_TEXT
    arcs = {(s.tokens[i], s.tokens[h], r) for i, (h, r) in enumerate(zip(s.heads, s.rels, strict=True)) if h >= 0}
    assert {
        ("cat", "was", "nsubj"),
        ("sat", "cat", "acl:relcl"),
        ("on", "sat", "prep"),
        ("mat", "on", "pobj"),
        ("fluffy", "was", "acomp"),
    } <= arcs
    assert s.tokens[s.coref[s.tokens.index("that")]] == "cat"


def test_same_seed_same_data_different_seed_differs() -> None:
    a, b, c = generate_corpus(200, 7), generate_corpus(200, 7), generate_corpus(200, 8)
    assert a == b
    assert sum(x != y for x, y in zip(a, c, strict=True)) > 150
    short = generate_corpus(200, 7, max_len=12)
    assert max(len(s) for s in short) <= 12


def test_conllu_round_trip(tmp_path: Path, corpus: list[Sentence]) -> None:
    sents = [seed_sentence(), *corpus[:60]]
    path = tmp_path / "gold.conllu"
    write_conllu(path, sents)
    assert read_conllu(path, WordTokenizer(lex.VOCAB)) == sents
    text = to_conllu([seed_sentence()])
    assert "2\tcat\t_\tNOUN\t_\tNumber=Sing\t8\tnsubj" in text
    assert "Antecedent=2" in text


def test_read_user_treebank(tmp_path: Path) -> None:
    rows = [
        "# text = The Giraffe's cat slept .",
        "1-2\tThe Giraffe's\t_\t_\t_\t_\t_\t_\t_\t_",
        "1\tThe\tthe\tDET\t_\t_\t2\tdet\t_\t_",
        "2\tGiraffe's\tgiraffe\tNOUN\t_\t_\t3\tnmod:poss\t_\t_",
        "3\tcat\tcat\tNOUN\t_\t_\t4\tnsubj\t_\t_",
        "4\tslept\tsleep\tVERB\t_\t_\t0\troot\t_\t_",
        "5\t.\t.\tPUNCT\t_\t_\t4\tpunct\t_\t_",
    ]
    path = tmp_path / "user.conllu"
    path.write_text("\n".join(rows) + "\n\n")
    vocab = WordTokenizer(lex.VOCAB)
    [s] = read_conllu(path, vocab)
    assert s.tokens == ("the", "<unk>", "cat", "slept", "<unk>")
    assert s.heads == (1, 2, 3, -1, 3)
    assert vocab.encode(s.text)[1] == vocab.unk_id
    rels = relation_list([s])
    assert rels[: len(RELATIONS)] == RELATIONS and rels[len(RELATIONS) :] == ["nmod:poss", "punct"]


def make(tmp_path: Path, **kw: object) -> LMDataModule:
    args = {"kind": "grammar", "cache_dir": str(tmp_path / "cache"), **SMALL, **kw}
    return LMDataModule(**args)


def test_grammar_datamodule(tmp_path: Path) -> None:
    dm = make(tmp_path)
    assert dm.vocab_size == len(lex.VOCAB) + 5 and dm.seq_len == 32
    assert not (tmp_path / "cache").exists()  # nothing generated yet
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (16, 32) and ids.dtype == torch.long and mask.dtype == torch.bool
    tok = dm.tokenizer
    assert (ids[:, 0] == tok.bos_id).all()
    assert torch.equal(mask, ids != tok.pad_id)
    last = mask.sum(1) - 1
    assert (ids[torch.arange(16), last] == tok.eos_id).all()

    probe = [b for b in dm.probe_dataloader()]
    again = [b for b in dm.probe_dataloader()]
    assert sum(len(b["input_ids"]) for b in probe) == 12
    assert all(torch.equal(x[k], y[k]) for x, y in zip(probe, again, strict=True) for k in x)
    first = probe[0]
    assert tok.decode(first["input_ids"][0].tolist()) == SEED_TEXT
    assert first["heads"].shape == (12, 32) and first["heads"].dtype == torch.long
    # "cat" (position 2) depends on "was" (position 8); "that" (3) corefers with "cat".
    assert first["heads"][0, 2] == 8 and RELATIONS[first["rels"][0, 2]] == "nsubj"
    assert first["coref"][0, 3] == 2
    assert (first["heads"][~first["attention_mask"]] == -1).all()
    assert [tok.id_to_token(int(i)) for i in first["input_ids"][0, :3]] == ["<bos>", "the", "cat"]
    val = next(iter(dm.val_dataloader()))
    assert {"heads", "rels", "coref"} <= set(val)

    masks = arc_masks(first["heads"], first["rels"], first["coref"], dm.relations)
    assert masks["nsubj"][0, 2, 8] and masks["coref"][0, 3, 2] and masks["amod:pred"][0, 9, 2]
    assert masks["det"][0].sum() == 2  # "the cat", "the mat"

    freqs = dm.token_frequencies()
    train_ids = dm.dataset("train")[:]["input_ids"]
    assert freqs.shape == (dm.vocab_size,) and freqs[tok.bos_id] == 300
    assert freqs.sum() == (train_ids != tok.pad_id).sum()
    loss = dm.unigram_loss()
    assert 1.0 < loss < math.log(dm.vocab_size)  # better than uniform, far from zero


def test_training_order_is_seeded(tmp_path: Path) -> None:
    a, b = make(tmp_path / "a"), make(tmp_path / "b")  # generated twice, independently
    for split in ("train", "val", "probe"):
        rows_a, rows_b = a.dataset(split)[:], b.dataset(split)[:]
        assert all(torch.equal(rows_a[k], rows_b[k]) for k in rows_a)
    first_a = next(iter(a.train_dataloader()))["input_ids"]
    first_b = next(iter(b.train_dataloader()))["input_ids"]
    assert torch.equal(first_a, first_b)
    in_order = a.dataset("train")[:16]["input_ids"]
    assert not torch.equal(first_a, in_order)
    other = make(tmp_path / "other", seed=1)
    assert not torch.equal(other.dataset("train")[:]["input_ids"], a.dataset("train")[:]["input_ids"])


def test_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make(tmp_path)
    dm.prepare_data()
    marker = dm.cache_path / "dataset_dict.json"
    stamp = marker.stat().st_mtime_ns

    def fail(*args: object, **kw: object) -> None:
        raise AssertionError("regenerated")

    again = make(tmp_path)
    monkeypatch.setattr(again.source, "generate", fail)
    again.prepare_data()
    again.setup("fit")
    assert marker.stat().st_mtime_ns == stamp
    assert torch.equal(again.dataset("val")[:]["input_ids"], dm.dataset("val")[:]["input_ids"])
    assert make(tmp_path, n_val=61).cache_path != dm.cache_path


def test_user_treebank_as_probe(tmp_path: Path) -> None:
    user = Sentence(("the", "cat", "purred"), (1, 2, -1), ("det", "nsubj:pass", "root"), (-1, -1, -1))
    path = tmp_path / "user.conllu"
    write_conllu(path, [user, seed_sentence()])
    dm = make(tmp_path, probe_conllu=str(path))
    assert dm.relations == [*RELATIONS, "nsubj:pass"]
    probe = dm.probe_batch()
    assert probe["input_ids"].shape == (2, 32)
    tok = dm.tokenizer
    assert [tok.id_to_token(int(i)) for i in probe["input_ids"][0, :5]] == ["<bos>", "the", "cat", "<unk>", "<eos>"]
    assert probe["heads"][0, :4].tolist() == [-1, 2, 3, -1]
    assert dm.relations[probe["rels"][0, 2]] == "nsubj:pass"
    with pytest.raises(ConfigError, match="data.probe_conllu"):
        make(tmp_path, probe_conllu=str(tmp_path / "nope.conllu"))


def test_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MHAEXP_CACHE", str(tmp_path / "env"))
    dm = LMDataModule(kind="induction", seq_len=9, **SMALL)
    assert dm.cache_path.parent == tmp_path / "env"


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"kind": "grammer"}, "data.kind"),
        ({"seq_len": 0}, "data.seq_len"),
        ({"seq_len": 8}, "data.seq_len"),  # too short for the seed sentence
        ({"n_train": -5}, "data.n_train"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"varient": "repeat"}, "data.varient"),
        ({"kind": "induction", "variant": "zigzag"}, "data.variant"),
        ({"kind": "text"}, "data.path"),
    ],
)
def test_bad_config_raises(tmp_path: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        make(tmp_path, **kwargs)
    assert err.value.field == field and str(err.value).startswith(f"{field}=")


@pytest.mark.parametrize("variant", ["repeat", "copy", "random"])
def test_induction(tmp_path: Path, variant: str) -> None:
    dm = make(tmp_path, kind="induction", seq_len=21, variant=variant, n_tokens=30, fixed_length=True)
    assert dm.vocab_size == 5 + 1 + 30
    ids = dm.dataset("train")[:]["input_ids"]
    assert ids.shape == (300, 21) and (ids[:, 0] == dm.tokenizer.bos_id).all()
    L = dm.source.half_len
    if variant == "repeat":
        assert L == 10
        assert torch.equal(ids[:, 1 : 1 + L], ids[:, 1 + L :])
    elif variant == "copy":
        assert L == 9 and (ids[:, 1 + L] == dm.source.sep_id).all()
        assert torch.equal(ids[:, 1 : 1 + L], ids[:, 2 + L : 2 + 2 * L])
        assert (ids[:, -1] == dm.tokenizer.pad_id).all()
        assert not dm.dataset("train")[:]["attention_mask"][:, -1].any()
    else:
        assert (ids[:, 1 : 1 + L] != ids[:, 1 + L :]).float().mean() > 0.9
    if variant != "random":  # no repeats inside a half: one earlier copy to find
        assert all(len(set(row[1 : 1 + L].tolist())) == L for row in ids)


def test_induction_lengths_vary_so_a_fixed_offset_cannot_copy(tmp_path: Path) -> None:
    dm = make(tmp_path, kind="induction", seq_len=21, variant="repeat", n_tokens=30)
    rows = dm.dataset("train")[:]
    lengths = (rows["attention_mask"].sum(1) - 1) // 2
    assert set(lengths.tolist()) == set(range(5, 11))  # half of the longest (10) up to it
    for ids, k in zip(rows["input_ids"], lengths.tolist(), strict=True):
        assert torch.equal(ids[1 : 1 + k], ids[1 + k : 1 + 2 * k])
    assert dm.source.repeat_offset == (5, 10)


def test_text_local_file(tmp_path: Path) -> None:
    text = "The cat sat on the mat. " * 40 + "Ünïcode ends it."
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    dm = make(tmp_path, kind="text", path=str(path), seq_len=33)
    assert dm.vocab_size == 256 + 5
    tr, va = dm.dataset("train")[:], dm.dataset("val")[:]

    def stream(rows: dict) -> list[int]:
        return rows["input_ids"][:, 1:][rows["attention_mask"][:, 1:]].tolist()

    # The held-out tail starts at the first safe cut (before a space) at or after 90% of the bytes.
    n_bytes = len(text.encode())
    train_text, val_text = dm.tokenizer.decode(stream(tr)), dm.tokenizer.decode(stream(va))
    assert train_text + val_text == text
    assert len(train_text.encode()) >= (n_bytes - n_bytes // 10) and val_text.startswith(" ")
    assert len(train_text.encode()) - (n_bytes - n_bytes // 10) < 4  # the next word boundary
    assert stream(va)[-1] == dm.tokenizer.eos_id and dm.tokenizer.eos_id not in stream(tr)  # one document
    assert len(tr["input_ids"]) == math.ceil(len(train_text.encode()) / 32)
    assert len(va["input_ids"]) == math.ceil((len(val_text.encode()) + 1) / 32)
    assert torch.equal(dm.dataset("probe")[:]["input_ids"], va["input_ids"][:12])
    assert math.isfinite(dm.unigram_loss())


def test_text_directory(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("alpha " * 50)
    (tmp_path / "docs" / "b.txt").write_text("beta " * 50)
    dm = make(tmp_path, kind="text", path=str(tmp_path / "docs"), seq_len=17)
    rows = dm.dataset("train")[:]["input_ids"]
    assert dm.tokenizer.decode(rows[0, 1:].tolist()) == "alpha alpha alph"


@pytest.mark.parametrize("case", ["missing", "empty", "dir-without-txt"])
def test_text_bad_path(tmp_path: Path, case: str) -> None:
    path = tmp_path / case
    if case == "empty":
        path.write_text("")
    elif case == "dir-without-txt":
        path.mkdir()
        (path / "notes.md").write_text("not a .txt file")
    with pytest.raises(ConfigError) as err:
        make(tmp_path, kind="text", path=str(path))
    assert err.value.field == "data.path" and str(path) in str(err.value)


@pytest.mark.parametrize("name", ["grammar", "induction", "text"])
def test_yaml_configs_instantiate(tmp_path: Path, name: str, compose) -> None:
    # Each option composed as the CLI composes it (over conf/data/_base.yaml), then instantiated on its own;
    # the probe set's size follows analysis.probe_sequences.
    doc = tmp_path / "doc.txt"
    doc.write_text("some text " * 100)
    extra = [f"data.cache_dir={tmp_path / 'c'}", f"data.path={doc}"] if name == "text" else []
    cfg = compose([f"data={name}", "analysis.probe_sequences=16", *extra])
    dm = instantiate(cfg.data)
    assert dm.sizes["probe"] == 16
    cfg = cfg.data
    assert isinstance(dm, LMDataModule) and dm.kind == name
    assert dm.vocab_size == {"grammar": 189, "induction": 36, "text": 261}[name]
    assert dm.seq_len == cfg.seq_len
