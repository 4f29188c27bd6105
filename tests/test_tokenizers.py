"""Tokenizers: the byte-level BPE trained on the training text (and its cache), local and hub tokenizers,
specials, and the copy a run saves so its checkpoints decode offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mhaexp.data import LMDataModule
from mhaexp.data import text as text_mod
from mhaexp.data.grammar import render_text
from mhaexp.data.tokenizers import (
    SPECIALS,
    BPETokenizer,
    ByteTokenizer,
    HFTokenizer,
    WordTokenizer,
    load_named_tokenizer,
    load_run_tokenizer,
    load_saved_tokenizer,
    save_tokenizer,
    train_bpe,
)
from mhaexp.errors import ConfigError
from mhaexp.rundir import TOKENIZER_DIR

# Window counts beyond these corpora: the whole text is tokenized, whatever the run's windowing.
SMALL = {"n_train": 10**6, "n_val": 10**6, "n_probe": 8, "batch_size": 8, "seq_len": 33}
TEXTS = ["the cat sat on the mat", "über naïve café, 日本語 and emoji 🙂", "the dog ran to the cat"] * 30


def bpe(tmp_path: Path, corpus: Path, **kw: object) -> LMDataModule:
    args = {"kind": "text", "path": str(corpus), "tokenizer": "bpe", "vocab_size": 400, **SMALL}
    return LMDataModule(cache_dir=str(tmp_path / "cache"), **{**args, **kw})


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    render_text(tmp_path / "corpus", 600, seed=0, n_files=3)
    return tmp_path / "corpus"


def entries(tmp_path: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(prefix))


def test_bpe_round_trip_specials_and_leading_spaces() -> None:
    tok = BPETokenizer(300, lambda: train_bpe(iter(TEXTS), 300))
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.unk_id) == (0, 1, 2, 3, 4)
    assert [tok.id_to_token(i) for i in range(5)] == list(SPECIALS)
    assert tok.vocab_size == 300 and tok.hf.get_vocab_size() <= 300
    for s in [*TEXTS[:3], "  two  spaces\nand a newline\t", "never seen: Ωμέγα ☃"]:
        assert tok.decode(tok.encode(s)) == s  # byte level: any text, nothing lost
    ids = tok.encode("the cat sat")
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == "the cat sat"  # framing left out
    # Words carry their leading space: a text's encoding is the concatenation of its words'.
    assert ids == tok.encode("the") + tok.encode(" cat") + tok.encode(" sat")
    assert tok.encode("the cat sat on the mat")[: len(ids)] == ids
    assert tok.id_to_token(tok.encode(" cat")[0]) == "Ġcat"  # merged: one token for a frequent word
    assert tok.encode_batch(["the cat", "über"]) == [tok.encode("the cat"), tok.encode("über")]


def test_bpe_is_trained_on_the_training_text_only(tmp_path: Path) -> None:
    # The last 8% of the corpus is a word that the training text (90%) never holds.
    (tmp_path / "c.txt").write_text("the cat sat on the mat " * 400 + "zyxwvut " * 100)
    dm = bpe(tmp_path, tmp_path / "c.txt", vocab_size=500, n_val=500)
    tok = dm.tokenizer
    assert len(tok.encode(" cat")) == 1
    assert len(tok.encode(" zyxwvut")) >= 4  # frequent, but held out: no merges for it
    val = dm.dataset("val")[:]
    assert tok.decode(val["input_ids"][:, 1:][val["attention_mask"][:, 1:]].tolist()).endswith(
        "mat " + "zyxwvut " * 100
    )


def test_bpe_cache_hit_and_miss(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = bpe(tmp_path, corpus)
    ids = first.dataset("train")[:]["input_ids"]
    assert len(entries(tmp_path, "bpe-")) == 1 and len(entries(tmp_path, "text-")) == 1

    def fail(*args: object, **kw: object) -> None:
        raise AssertionError("retrained")

    monkeypatch.setattr(text_mod, "train_bpe", fail)
    again = bpe(tmp_path, corpus, seq_len=17, n_train=50)  # windowing is not the tokenizer's business
    assert again.tokenizer.encode(" the cat") == first.tokenizer.encode(" the cat")
    assert again.dataset("train")[:]["input_ids"][0, 1:17].tolist() == ids[0, 1:17].tolist()
    assert len(entries(tmp_path, "bpe-")) == 1 and len(entries(tmp_path, "text-")) == 1  # tokens reused too
    monkeypatch.undo()
    bpe(tmp_path, corpus, vocab_size=450).prepare_data()
    assert len(entries(tmp_path, "bpe-")) == 2
    (corpus / "part-00000.txt").write_text("an edited file changes the corpus\n" * 50)
    bpe(tmp_path, corpus).prepare_data()
    assert len(entries(tmp_path, "bpe-")) == 3 and len(entries(tmp_path, "text-")) == 3
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no leftovers


def test_two_processes_building_the_same_bpe_at_once_leave_one_entry(tmp_path: Path, corpus: Path) -> None:
    script = (
        "import sys; from mhaexp.data import LMDataModule; "
        f"dm = LMDataModule(kind='text', path={str(corpus)!r}, tokenizer='bpe', vocab_size=400, "
        f"cache_dir={str(tmp_path / 'cache')!r}, **{SMALL!r}); dm.prepare_data(); "
        "print(dm.tokenizer.encode(' the big cat'), dm.cache_path.name)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)]
    procs.append(subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs[0] == outs[1], outs
    assert len(entries(tmp_path, "bpe-")) == 1 and len(entries(tmp_path, "text-")) == 1
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]


def hf_dir(tmp_path: Path, how: str) -> Path:
    """A tokenizer trained here and saved as a user would: ``tokenizer.json`` alone, or ``save_pretrained``."""
    from transformers import PreTrainedTokenizerFast

    raw = train_bpe(iter(TEXTS), 300)
    out = tmp_path / how
    out.mkdir()
    if how == "tokenizer_json":
        raw.save(str(out / "tokenizer.json"))
    else:
        PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>").save_pretrained(str(out))
    return out


@pytest.mark.parametrize("how", ["tokenizer_json", "save_pretrained"])
def test_a_local_tokenizer_directory_loads_like_a_hub_name(tmp_path: Path, how: str) -> None:
    path = hf_dir(tmp_path, how)
    tok = load_named_tokenizer(str(path))
    assert isinstance(tok, HFTokenizer)
    ids = tok.encode("the cat sat on the mat")
    assert tok.decode(ids) == "the cat sat on the mat" and max(ids) < tok.vocab_size
    specials = [tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.unk_id]
    assert len(set(specials)) == 5 and all(i < tok.vocab_size for i in specials)
    if how == "save_pretrained":  # its own BOS/EOS are kept; the missing pad and mask are added
        assert tok.id_to_token(tok.bos_id) == "<s>" and tok.id_to_token(tok.eos_id) == "</s>"
    doc = tmp_path / "doc.txt"
    doc.write_text("the cat sat on the mat\n" * 100)
    dm = LMDataModule(kind="text", path=str(doc), tokenizer=str(path), cache_dir=str(tmp_path / "c"), **SMALL)
    row = dm.dataset("train")[0]
    assert row["input_ids"][0] == tok.bos_id and dm.vocab_size == tok.vocab_size
    assert tok.decode(row["input_ids"][1:].tolist()).startswith("the cat sat on the mat\nthe cat")


def test_a_tokenizer_that_cannot_load_is_one_line_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError) as err:
        load_named_tokenizer(str(tmp_path / "broken"))
    assert err.value.field == "data.tokenizer" and "\n" not in str(err.value)


def test_an_offline_hub_tokenizer_name_is_one_error_line_before_anything_starts(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess], corpus: Path
) -> None:
    name = "mhaexp-no-such-org/no-such-tokenizer"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "MHAEXP_CACHE": str(tmp_path / "cache")}
    proc = cli("mhaexp-train", "data=text", f"data.path={corpus}", f"data.tokenizer={name}", cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mhaexp-train: error: data.tokenizer='{name}' is invalid: not a local directory, not in the HF cache, "
        "and the hub (https://huggingface.co) cannot be reached (offline?); use bytes, bpe, a local tokenizer "
        "directory (save_pretrained or tokenizer.json), or a hub name once online"
    ]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_every_kind_saves_and_reloads_without_its_data(tmp_path: Path) -> None:
    kinds = {
        "bytes": ByteTokenizer(),
        "word": WordTokenizer(["the", "cat", "sat"], extra_specials=("<sep>",)),
        "bpe": BPETokenizer(320, lambda: train_bpe(iter(TEXTS), 320)),
        "hf": load_named_tokenizer(str(hf_dir(tmp_path, "save_pretrained"))),
    }
    for kind, tok in kinds.items():
        saved = save_tokenizer(tok, tmp_path / "run" / kind / TOKENIZER_DIR)
        back = load_saved_tokenizer(saved)
        assert load_run_tokenizer(tmp_path / "run" / kind).encode("the cat sat") == tok.encode("the cat sat")
        assert type(back) is type(tok) and back.vocab_size == tok.vocab_size, kind
        assert [back.pad_id, back.bos_id, back.eos_id, back.mask_id, back.unk_id] == [
            tok.pad_id,
            tok.bos_id,
            tok.eos_id,
            tok.mask_id,
            tok.unk_id,
        ]
        for s in ("the cat sat", "über cat"):
            assert back.encode(s) == tok.encode(s) and back.decode(back.encode(s)) == tok.decode(tok.encode(s))
        n = min(tok.vocab_size, 12)
        assert [back.id_to_token(i) for i in range(n)] == [tok.id_to_token(i) for i in range(n)]
        assert json.loads((saved / "mhaexp_tokenizer.json").read_text())["kind"] == kind
        # A saved directory is also a data.tokenizer value: train on with a run's tokenizer.
        assert load_named_tokenizer(str(saved)).encode("the cat") == tok.encode("the cat")
    assert load_run_tokenizer(tmp_path / "nowhere") is None
