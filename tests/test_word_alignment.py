"""Treebank words aligned to the pieces of the three subword schemes pretrained models use, with known
answers: WordPiece (``##``), SentencePiece (``▁``) and byte-level BPE (``Ġ``), each a small tokenizer
built with ``tokenizers``, wrapped in ``PreTrainedTokenizerFast`` and saved as transformers saves one;
and a BERT imported with its tokenizer, scored against a treebank as ``[CLS] ... [SEP]``."""

from __future__ import annotations

from pathlib import Path

import pytest

from mhaexp.cli import analyze, import_model
from mhaexp.data.tokenizers import HFTokenizer, load_saved_tokenizer
from mhaexp.data.treebank import align_words, load_treebank

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# "The cats sat on matting ." in CoNLL-U: cats <-nsubj- sat, the <-det- cats, on <-case- matting ...
CONLLU = """# text = The cats sat on matting .
1	The	the	DET	_	_	2	det	_	_
2	cats	cat	NOUN	_	_	3	nsubj	_	_
3	sat	sit	VERB	_	_	0	root	_	_
4	on	on	ADP	_	_	5	case	_	_
5	matting	mat	NOUN	_	_	3	obl	_	SpaceAfter=No
6	.	.	PUNCT	_	_	3	punct	_	_

"""
WORDS = ["The", "cats", "sat", "on", "matting", "."]


def wordpiece(directory: Path) -> Path:
    """BERT's scheme: lower-casing, a split on spaces and punctuation, continuation pieces ``##``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = [*SPECIALS, "the", "cat", "##s", "sat", "on", "mat", "##ting", "."]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(s, vocab.index(s)) for s in ("[CLS]", "[SEP]")]
    )
    names = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    PreTrainedTokenizerFast(tokenizer_object=tok, **names).save_pretrained(str(directory))
    return directory


def sentencepiece(directory: Path) -> Path:
    """SentencePiece's scheme (Llama, T5): a Unigram over text whose spaces became ``▁``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "▁The", "▁cat", "s", "▁sat", "▁on", "▁mat", "ting", "▁", "."]
    tok = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=0))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(directory))
    return directory


def byte_level(directory: Path) -> Path:
    """GPT-2's scheme: bytes as characters, a space carried as ``Ġ`` by the piece after it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=290, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet)
    tok.train_from_iterator(["The cats sat on the mat ."] * 50, trainer)
    end = "<|endoftext|>"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end).save_pretrained(str(directory))
    return directory


def pieces_of(tok: HFTokenizer, words: list[str]) -> list[list[str]]:
    return [[tok.id_to_token(i) for i in p] for p in align_words(words, tok)]


def test_wordpiece_continuations_belong_to_their_word(tmp_path: Path) -> None:
    tok = HFTokenizer(str(wordpiece(tmp_path / "wp")))
    assert pieces_of(tok, WORDS) == [["the"], ["cat", "##s"], ["sat"], ["on"], ["mat", "##ting"], ["."]]
    assert pieces_of(tok, ["cats", "purr"]) == [["cat", "##s"], ["[UNK]"]]  # an unknown word is one [UNK]


def test_sentencepiece_marks_the_start_of_each_word(tmp_path: Path) -> None:
    tok = HFTokenizer(str(sentencepiece(tmp_path / "sp")))
    got = pieces_of(tok, WORDS)
    assert got == [["▁The"], ["▁cat", "s"], ["▁sat"], ["▁on"], ["▁mat", "ting"], ["▁", "."]]
    # A lone "▁" (the space before a word with no "▁"-piece of its own) goes with the word after it.


def test_byte_level_bpe_carries_the_space_on_the_next_word(tmp_path: Path) -> None:
    tok = HFTokenizer(str(byte_level(tmp_path / "bl")))
    got = pieces_of(tok, [*WORDS[:4], "the", "mat"])
    assert got == [["The"], ["Ġcats"], ["Ġsat"], ["Ġon"], ["Ġthe"], ["Ġmat"]]
    unseen = pieces_of(tok, ["The", "wombat"])[1]
    assert len(unseen) > 1 and unseen[0].startswith("Ġ") and "".join(unseen) == "Ġwombat"


def test_bert_scores_a_treebank_as_cls_words_sep(tmp_path: Path) -> None:
    from transformers import BertConfig

    from mhaexp.tools.import_parity import save_random_hf

    source = tmp_path / "bert"
    config = BertConfig(
        vocab_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    save_random_hf(config, source, std=0.3)
    wordpiece(source)
    ckpt = tmp_path / "bert.ckpt"
    import_model.run([f"source={source}", f"out={ckpt}"])
    treebank_file = tmp_path / "tiny.conllu"
    treebank_file.write_text(CONLLU)

    tok = load_saved_tokenizer(ckpt.with_name("bert.tokenizer"))
    tb = load_treebank(str(treebank_file), tok, 32, "conllu")
    row = tb.rows[0]
    tokens = [tok.id_to_token(i) for i in row["input_ids"]]
    assert tokens == ["[CLS]", "the", "cat", "##s", "sat", "on", "mat", "##ting", ".", "[SEP]"]
    # [CLS] and [SEP] are their own units (0 and n + 1), never a word; "##s" scores as part of "cats".
    assert row["word_of_token"] == [0, 1, 2, 2, 3, 4, 5, 5, 6, 7]
    assert row["heads"][:8] == [-1, 2, 3, -1, 5, 3, 3, -1]  # unit i's head unit; [CLS] and root: none

    corpus = tmp_path / "corpus.txt"  # the text data gives the tokenizer; the treebank is the probe set
    corpus.write_text("the cats sat on the mat .\n" * 20)
    words = [f"ckpt={ckpt}", f"conllu={treebank_file}", f"out={tmp_path / 'a'}", f"data.path={corpus}"]
    out = analyze.run([*words, "data.seq_len=16", "data.batch_size=1"])
    assert "treebank: 1 of 1 sentences scored" in out
    assert (tmp_path / "a" / "treebank_relations.csv").is_file()


@pytest.mark.parametrize("build", [wordpiece, sentencepiece, byte_level])
def test_spans_and_prefix_encodings_agree(tmp_path: Path, build) -> None:
    """The two alignments (character spans, word-prefix encodings) give the same pieces."""

    class EncodeOnly:
        def __init__(self, tok: HFTokenizer) -> None:
            self.encode = tok.encode

    tok = HFTokenizer(str(build(tmp_path / "t")))
    assert tok.encode_offsets("the cat") is not None
    assert align_words(WORDS, tok) == align_words(WORDS, EncodeOnly(tok))
