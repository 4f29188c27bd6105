"""Treebank scoring for any tokenizer: word alignment, word-level attention (Clark et al. 2019, Sec. 4.1),
the UD file's hard cases, the grammar path as the same code, and ``mhaexp-analyze conllu=`` on a
byte-level text model (with ``analysis.treebank`` tracking syntax during its training)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from mhaexp.data.tokenizers import ByteTokenizer, WordTokenizer
from mhaexp.data.treebank import AlignmentError, align_words, load_treebank, word_of_token
from mhaexp.errors import ConfigError
from mhaexp.heads import patterns as M
from mhaexp.heads.wordlevel import word_attention, word_mask

UD = Path(__file__).parent / "data" / "ud_hard.conllu"
BPE_STEPS = 600
SPECIALS = ["<pad>", "<bos>", "<eos>", "<mask>", "<unk>"]


# ------------------------------------------------------------------------------------ word level --


def test_word_attention_sums_to_and_averages_from_the_pieces() -> None:
    # [BOS, a1, a2, b, EOS]: word "a" has two pieces.
    A = torch.tensor(
        [
            [1.0, 0, 0, 0, 0],
            [0.5, 0.5, 0, 0, 0],
            [0.2, 0.3, 0.5, 0, 0],
            [0.25, 0.2, 0.15, 0.4, 0],
            [0.1, 0.1, 0.1, 0.1, 0.6],
        ]
    )[None, None]
    words = torch.tensor([[0, 1, 1, 2, 3]])
    got = word_attention(A, words, 4)[0, 0]
    expected = torch.tensor(
        [
            [1.0, 0, 0, 0],
            [0.35, 0.65, 0, 0],  # mean of rows a1, a2 after summing a1 + a2 columns
            [0.25, 0.35, 0.4, 0],  # b -> a = 0.2 + 0.15
            [0.1, 0.2, 0.1, 0.6],
        ]
    )
    torch.testing.assert_close(got, expected)
    # Token level, b's most-attended other token is BOS (0.25); at word level it is its head "a" (0.35).
    heads = torch.tensor([[-1, -1, 1, -1]])  # b's head is a
    mask = torch.ones(1, 4, dtype=torch.bool)
    acc = M.dep2head_accuracy(M.argmax_keys(got[None, None], mask), heads[None], mask)
    assert acc.item() == 1.0
    token_pred = M.argmax_keys(A, torch.ones(1, 5, dtype=torch.bool))[0, 0, 3]
    assert int(token_pred) == 0


def test_word_attention_one_piece_words_is_the_identity_and_pads_stay_out() -> None:
    g = torch.Generator().manual_seed(0)
    T = 7
    logits = torch.randn(2, 3, T, T, generator=g).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -1e9)
    A = logits.softmax(-1)
    identity = torch.arange(T).expand(2, T)
    torch.testing.assert_close(word_attention(A, identity), A)
    # Row 2 of sequence 1 is padding, filled with NaN: word rows stay finite and sum to 1.
    A[1, :, 5:] = float("nan")
    words = torch.tensor([[0, 1, 1, 2, 3, 3, 4], [0, 1, 2, 2, 3, -1, -1]])
    W = word_attention(A, words, 5)
    real = word_mask(words, 5)
    assert real.tolist() == [[True] * 5, [True, True, True, True, False]]
    assert torch.isfinite(W).all()
    torch.testing.assert_close(W.sum(-1)[real[:, None].expand(-1, 3, -1)], torch.ones(2 * 3 * 5 - 3))
    assert bool((W.triu(1) == 0).all())  # causal in, causal out


# ------------------------------------------------------------------------------------ alignment --


def test_align_bytes_and_words() -> None:
    words = ["The", "naïve", "café"]
    pieces = align_words(words, ByteTokenizer())
    # The space before a word is its first piece; ï and é are two bytes each.
    assert [len(p) for p in pieces] == [3, 7, 6]
    assert bytes(pieces[1]).decode() == " naïve"
    assert word_of_token(pieces) == [0] * 3 + [1] * 7 + [2] * 6
    assert align_words(["the", "cat", "Fluffy"], WordTokenizer(["the", "cat"])) == [[5], [6], [4]]


def _hf_dir(tmp_path: Path, lines: list[str], byte_level: bool, vocab: int) -> str:
    """A real BPE tokenizer trained here and saved as a hub tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    alphabet: list[str] = []
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIALS, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(lines, trainer)
    out = tmp_path / ("bpe" if byte_level else "bpe-across-spaces")
    names = dict(pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", mask_token="<mask>", unk_token="<unk>")
    PreTrainedTokenizerFast(tokenizer_object=tok, **names).save_pretrained(str(out))
    return str(out)


class WordsOnly:
    """A tokenizer seen through ``encode`` alone (no character spans): the prefix-encoding alignment."""

    def __init__(self, tok: object) -> None:
        self.encode = tok.encode


def test_align_byte_level_bpe_and_a_tokenizer_that_merges_across_spaces(tmp_path: Path) -> None:
    from mhaexp.data.tokenizers import HFTokenizer

    lines = ["the cat sat on the mat", "the dog sat on the rug", "a cat ran to the park"] * 50
    bpe = HFTokenizer(_hf_dir(tmp_path, lines, byte_level=True, vocab=300))
    words = "the cat sat on the wooden mat".split()
    pieces = align_words(words, bpe)
    assert [bpe.hf.convert_ids_to_tokens(p) for p in pieces[:2]] == [["the"], ["Ġcat"]]  # no space before word 1
    assert sum(pieces, []) == bpe.encode("the cat sat on the wooden mat")
    assert len(pieces[5]) > 1  # "wooden" was never seen: split into pieces
    # Without a pre-tokenizer, BPE learns merges across the space: "the cat" is one token. This BPE has
    # no unknown token and drops what it has no piece for, shifting its character spans: it is aligned by
    # prefix encodings, which see the merge.
    across = HFTokenizer(_hf_dir(tmp_path, lines, byte_level=False, vocab=120))
    assert across.encode_offsets("the cat") is None and bpe.encode_offsets("the cat") is not None
    with pytest.raises(AlignmentError, match="changes how the words before it are tokenized"):
        align_words(["the", "cat", "sat"], across)
    # The byte-level BPE's spans and its prefix encodings give the same pieces.
    assert align_words(words, WordsOnly(bpe)) == pieces
    # Nothing of the UD file aligns (its alphabet lacks "I"): one line says why, for the first sentence.
    with pytest.raises(ConfigError, match=r"skipped 5 not aligned with the tokenizer; first: sentence 1: word 1"):
        load_treebank(UD, across, 64, "conllu")


# ------------------------------------------------------------------------------------ UD file --


def test_ud_hard_cases_are_read_skipped_and_reported() -> None:
    tb = load_treebank(UD, ByteTokenizer(), 64, "conllu", min_arcs=2)
    assert tb.n_read == 6 and len(tb.rows) == 4
    assert dict(tb.skipped) == {"long": 1, "no_arc": 1}
    assert (tb.read.multiword_tokens, tb.read.empty_nodes) == (1, 1)
    assert tb.report(64) == (
        "4 of 6 sentences scored; skipped 1 longer than the model's context (64 tokens with BOS/EOS); "
        "skipped 1 without an arc; ignored 1 multiword-token lines (their words are scored) and 1 empty nodes; "
        "not scored, under min_arcs arcs: aux (1), advmod (1), cc (1), conj (1), orphan (1), amod (1), "
        "compound (1), ccomp (1)"
    )
    assert tb.relations == ["nsubj", "obj", "punct", "det"] and tb.arcs["nsubj"] == 5
    mwt, empty, accents, coref = tb.rows
    # "I do n't like Zürich ." : the multiword token's words are the words; Zürich is 7 bytes + its space.
    assert bytes(i for i in mwt["input_ids"] if i < 256).decode() == "I do n't like Zürich ."
    assert mwt["word_of_token"][mwt["input_ids"].index(ord("Z")) - 1 :][:8] == [5] * 8
    assert empty["heads"][1:8] == [2, -1, 2, 5, 2, 5, 2]  # units: BOS = 0, "Sam" = 1; root -1; no empty node
    assert accents["word_of_token"][1:4] == [1, 1, 1] and accents["word_of_token"].count(2) == 7
    assert coref["coref"][4] == 2  # "it" -> "cat"
    with pytest.raises(ConfigError, match=r"^conllu=.* has no sentence that can be scored: 0 of 6"):
        load_treebank(UD, ByteTokenizer(), 8, "conllu")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("1\tThe\tthe\n\n", "line 1: 3 tab-separated columns, CoNLL-U has 10"),
        ("1\tThe\t_\t_\t_\t_\tx\tdet\t_\t_\n\n", "line 1: HEAD 'x' is not a number"),
        ("# only a comment\n", "holds no sentence"),
    ],
)
def test_bad_treebank_file_is_one_clear_error(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "bad.conllu"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_treebank(path, ByteTokenizer(), 64, "conllu")
    assert str(info.value).startswith(f"conllu='{path}' is invalid: ") and reason in str(info.value)
    assert len(str(info.value).splitlines()) == 1
    path.write_bytes(b"1\t\xff\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_treebank(path, ByteTokenizer(), 64, "conllu")


# ------------------------------------------------------------------- the grammar path, same code --


def test_grammar_export_through_the_treebank_path_scores_as_the_grammar_path(tmp_path: Path) -> None:
    """Word-level tokenizer: one piece per word, so the treebank path is the grammar path's numbers."""
    from mhaexp.analysis.collect import compute_head_metrics, probe_from_datamodule
    from mhaexp.analysis.config import AnalysisConfig
    from mhaexp.analysis.treebank_scores import treebank_probe
    from mhaexp.data import LMDataModule, generate_corpus, write_conllu
    from mhaexp.data.lexicon import VOCAB
    from mhaexp.nn.config import ModelConfig
    from mhaexp.nn.model import Transformer

    gold = tmp_path / "gold.conllu"
    write_conllu(gold, generate_corpus(48, seed=5, max_len=20))
    dm = LMDataModule(
        kind="grammar", seq_len=37, batch_size=16, n_train=32, n_val=16, n_probe=48, probe_conllu=str(gold)
    )
    dm.cache_root = tmp_path / "cache"
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=dm.vocab_size, n_layers=2, d_model=32, n_heads=4, max_seq_len=37))
    settings = AnalysisConfig().to_dict()
    grammar = probe_from_datamodule(dm, 48)
    tb = load_treebank(gold, WordTokenizer(VOCAB), 37, "conllu", min_arcs=1)
    treebank = treebank_probe(tb, WordTokenizer(VOCAB), 16, token_freq=grammar.token_freq)
    assert all(b["word_of_token"].shape == b["input_ids"].shape for b in treebank.batches)
    a = compute_head_metrics(model, grammar, settings, expensive=False, importance=False)
    b = compute_head_metrics(model, treebank, settings, expensive=False, importance=False)
    shared = [r for r in b.relation_names if r in a.relation_names]
    assert {"nsubj", "pobj", "det", "prep", "amod:pred"} <= set(shared)
    for name in shared:
        i, j = a.relation_names.index(name), b.relation_names.index(name)
        acc_b, acc_a = b.metrics["syntactic_accuracy"][..., j], a.metrics["syntactic_accuracy"][..., i]
        torch.testing.assert_close(acc_b, acc_a, equal_nan=True)  # NaN: no predictive arc (amod is adjacent)
        for key in ("syntactic_offset_baseline", "syntactic_position_baseline"):
            torch.testing.assert_close(b.metrics[key][j], a.metrics[key][i], equal_nan=True)
    torch.testing.assert_close(b.metrics["coreference"], a.metrics["coreference"])
    assert not bool(torch.isnan(a.metrics["syntactic_accuracy"][..., a.relation_names.index("nsubj")]).any())


def test_arc_keys_words_ignores_the_frame_as_clarks_notebook_does(tmp_path: Path) -> None:
    """analysis.arc_keys=words: a head's prediction is its most-attended word, [CLS]/[SEP] (BOS/EOS) ignored
    (Clark et al.'s attn_head_predictor); the arcs and the baselines do not move."""
    from mhaexp.analysis.collect import ChunkInputs, compute_head_metrics
    from mhaexp.analysis.config import AnalysisConfig
    from mhaexp.analysis.treebank_scores import treebank_probe
    from mhaexp.data import generate_corpus, write_conllu
    from mhaexp.data.lexicon import VOCAB
    from mhaexp.nn.config import ModelConfig
    from mhaexp.nn.model import Transformer

    # One sentence, BOS w1 w2 w3 EOS, w1 -> w2 (det), w2 -> w3: each word rests 0.6 on EOS, 0.4 on its head.
    p = torch.zeros(1, 1, 5, 5)
    p[0, 0, :, 4] = 0.6
    p[0, 0, 1, 2] = p[0, 0, 2, 3] = 0.4
    p[0, 0, [0, 3, 4], 0] = 0.4
    sub = {
        "word_of_token": torch.tensor([[0, 1, 2, 3, 4]]),
        "cls_keys": torch.tensor([[True, False, False, False, False]]),
        "sep_keys": torch.tensor([[False, False, False, False, True]]),
    }
    heads, rels = torch.tensor([[-1, 2, 3, -1, -1]]), torch.tensor([[-1, 0, 0, -1, -1]])
    acc = {}
    for keys in ("all", "words"):
        words = ChunkInputs(M.Chunk(p, torch.ones(1, 5, dtype=torch.bool), False), {}, sub=sub, arc_keys=keys).words
        acc[keys] = M.dependency_sums(words, heads, rels, 1).value().item()
    assert acc == {"all": 0.0, "words": 1.0}

    gold = tmp_path / "gold.conllu"
    write_conllu(gold, generate_corpus(64, seed=5, max_len=20))
    tokenizer = WordTokenizer(VOCAB)
    tb = load_treebank(gold, tokenizer, 37, "conllu", min_arcs=1)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, n_layers=2, d_model=32, n_heads=4,
                                    max_seq_len=37, causal=False))  # fmt: skip
    out = {
        keys: compute_head_metrics(
            model, treebank_probe(tb, tokenizer, 16), AnalysisConfig(arc_keys=keys, direction="dep2head").to_dict(),
            expensive=False, importance=False,
        ).metrics
        for keys in ("all", "words")
    }  # fmt: skip
    a, w = out["all"]["syntactic_accuracy"], out["words"]["syntactic_accuracy"]
    seen = ~torch.isnan(a)
    assert bool((w[seen] >= a[seen]).all()) and bool((w[seen] > a[seen]).any())  # a miss on the frame can only hit
    for key in ("syntactic_offset_baseline", "syntactic_position_baseline", "syntactic_baseline"):
        torch.testing.assert_close(out["words"][key], out["all"][key], equal_nan=True)


# ------------------------------------------------------------------------------ the CLI, bytes --


def test_byte_text_model_tracks_and_scores_a_treebank(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess], tiny: list[str]
) -> None:
    from mhaexp.data import generate_corpus, write_conllu

    text = tmp_path / "text.txt"
    text.write_text("\n".join(s.text for s in generate_corpus(400, seed=1)) + "\n")
    gold = tmp_path / "gold.conllu"
    write_conllu(gold, generate_corpus(40, seed=7, max_len=9))
    run = tmp_path / "run"
    args = [*tiny, "data=text", f"data.path={text}", "data.n_val=16", "logger=csv", "analysis=default"]
    args += ["analysis.every_n_steps=15", "analysis.max_pictures=0", f"analysis.treebank={gold}"]
    proc = cli("mhaexp-train", *args, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tidy = pd.read_csv(run / "analysis" / "head_metrics.csv")
    nsubj = tidy[tidy.metric == "syntactic_accuracy/nsubj"]
    assert sorted(nsubj.step.unique()) == [0, 15, 30] and len(nsubj) == 3 * 8  # every analysis, every head
    assert {"prev_token_attn", "sink", "entropy"} <= set(tidy.metric)  # the text metrics beside it

    ckpt = run / "checkpoints" / "last.ckpt"
    proc = cli("mhaexp-analyze", f"ckpt={ckpt}", f"conllu={UD}", f"out={tmp_path / 'a'}", "min_arcs=2",
               "max_pictures=0", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert "treebank: 4 of 6 sentences scored; skipped 1 longer than the model's context (64 tokens" in proc.stdout
    header = next(i for i, line in enumerate(out) if line.startswith("relation "))
    assert out[header].split() == "relation arcs direction best head accuracy offset position margin".split()
    table = pd.read_csv(tmp_path / "a" / "treebank_relations.csv")
    assert set(table.relation) == {"nsubj", "obj", "punct", "det"}
    assert set(table.direction) <= {"dep2head", "head2dep", "transposed", "predictive"}
    assert {"head2dep", "transposed"} <= set(table.direction)
    assert table.set_index(["relation", "direction"]).arcs.xs("nsubj", level=0).eq(5).all()
    for row in table.itertuples():  # margin = accuracy - the larger baseline
        bar = row.offset_baseline if pd.isna(row.position_baseline) else max(row.offset_baseline, row.position_baseline)
        assert row.margin == pytest.approx(row.accuracy - bar)
    printed = [line.split() for line in out[header + 1 : header + 1 + len(table)]]
    assert [(p[0], p[2]) for p in printed] == list(zip(table.relation, table.direction, strict=True))

    # The whole file by default (the old default read one batch: 32 sentences here), or the first N.
    many = tmp_path / "many.conllu"
    write_conllu(many, generate_corpus(150, seed=3, max_len=9))  # every sentence fits 64 bytes
    for cap, scored in ((None, 150), (40, 40)):
        extra = [] if cap is None else [f"treebank_max_sentences={cap}"]
        proc = cli("mhaexp-analyze", f"ckpt={ckpt}", f"conllu={many}", f"out={tmp_path / 'm'}", "max_pictures=0",
                   *extra, cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f": {scored} probe sequences" in proc.stdout
        assert f"treebank: {scored} of 150 sentences scored" in proc.stdout
        assert ("110 more not looked at (treebank_max_sentences caps" in proc.stdout) == (cap is not None)

    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tThe\n\n")
    for entry, word in (("mhaexp-analyze", f"conllu={bad}"), ("mhaexp-train", f"analysis.treebank={bad}")):
        first = [f"ckpt={ckpt}"] if entry == "mhaexp-analyze" else [*args[:-1], f"hydra.run.dir={tmp_path / 'r2'}"]
        proc = cli(entry, *first, word, cwd=tmp_path)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and "line 1: 2 tab-separated columns, CoNLL-U has 10" in err[0]
    assert not (tmp_path / "r2").exists()


# ------------------------------------------------------------------ BPE finds the grammar's heads --


def _relation_rows(ckpt: Path, gold: Path) -> list:
    """The treebank path of ``mhaexp-analyze ckpt= conllu=`` without the role files: the table rows."""
    from mhaexp.analysis.config import AnalysisConfig
    from mhaexp.analysis.treebank_scores import relation_table, treebank_probe
    from mhaexp.cli.analyze import compose
    from mhaexp.config import instantiate_plain
    from mhaexp.training.module import load_module

    module = load_module(ckpt)
    tokenizer = instantiate_plain(compose({"ckpt": str(ckpt)}, []).data).tokenizer  # the run's, as saved
    tb = load_treebank(gold, tokenizer, module.model.cfg.max_seq_len, "conllu", min_arcs=20)
    return relation_table(module.model, treebank_probe(tb, tokenizer, 64), AnalysisConfig())


def test_bpe_model_on_grammar_text_finds_the_heads_the_word_level_model_finds(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    from mhaexp.data import generate_corpus, write_conllu
    from mhaexp.data.grammar import render_text

    corpus = tmp_path / "corpus"
    render_text(corpus, 4000, seed=1, n_files=1, style="plain")  # one sentence a line, the CoNLL-U words
    gold = tmp_path / "gold.conllu"
    write_conllu(gold, generate_corpus(256, seed=9, max_len=20))
    common = ["model=tiny", f"trainer.max_steps={BPE_STEPS}", f"trainer.val_check_interval={BPE_STEPS}"]
    common += ["analysis=off", "logger=csv", "optim.lr=3e-3", "data.n_val=64", "analysis.probe_sequences=64"]
    data = {
        "word": ["data=grammar", "data.n_train=4000"],
        "bpe": ["data=text", f"data.path={corpus}", "data.tokenizer=bpe", "data.vocab_size=420"],
    }
    found = {}
    for name, args in data.items():
        proc = cli("mhaexp-train", *common, *args, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = _relation_rows(tmp_path / name / "checkpoints" / "last.ckpt", gold)
        found[name] = {r.relation: r for r in rows if r.direction == "predictive"}
    # Subject -> verb: both paths find a syntactic head (Voita et al.'s 10-point margin over both baselines).
    for name in data:
        assert found[name]["nsubj"].margin >= 0.10, (name, found[name]["nsubj"])
    # Object -> preposition: whenever the word-level model has formed the head, the BPE model has too; at
    # this size neither may have (the offset baseline is ~0.73: "on the mat"), so its best head must at
    # least beat the position baseline and come close to the word-level model's best.
    word, bpe = found["word"]["pobj"], found["bpe"]["pobj"]
    if word.margin >= 0.10:
        assert bpe.margin >= 0.10, (word, bpe)
    assert bpe.accuracy > bpe.position_baseline and bpe.accuracy >= word.accuracy - 0.2, (word, bpe)
