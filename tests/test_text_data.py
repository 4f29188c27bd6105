"""Text corpora end to end: local files, a dataset directory through the hub's own ``load_dataset`` call,
the memory-mapped token cache against an in-memory reference, the offline errors, the rendered grammar,
and a real ``mhaexp-train data=text data.tokenizer=bpe`` run analysed afterwards from its saved tokenizer."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mhaexp.data import LMDataModule
from mhaexp.data import text as text_mod
from mhaexp.data.grammar import generate_corpus, render_text
from mhaexp.errors import ConfigError

SMALL = {"n_train": 400, "n_val": 40, "n_probe": 8, "batch_size": 8, "seq_len": 17}


def make(tmp_path: Path, **kw: object) -> LMDataModule:
    return LMDataModule(kind="text", cache_dir=str(tmp_path / "cache"), **{**SMALL, **kw})


def reference_windows(docs: list[str], tok: object, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of ``docs`` built the obvious way, all in memory: each document encoded whole, EOS after it."""
    stream = [i for d in docs for i in [*tok.encode(d), tok.eos_id]]  # type: ignore[attr-defined]
    w = seq_len - 1
    n = math.ceil(len(stream) / w)
    ids = torch.full((n, seq_len), tok.pad_id)  # type: ignore[attr-defined]
    ids[:, 0] = tok.bos_id  # type: ignore[attr-defined]
    body = torch.full((n * w,), tok.pad_id)  # type: ignore[attr-defined]
    body[: len(stream)] = torch.tensor(stream)
    ids[:, 1:] = body.view(n, w)
    real = 1 + torch.clamp(len(stream) - w * torch.arange(n), 0, w)
    return ids, torch.arange(seq_len)[None] < real[:, None]


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
def test_memmap_windows_equal_the_in_memory_reference(
    tmp_path: Path, tokenizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten documents of equal size: the held-out tail is exactly the last one.
    docs = [" ".join(s.text for s in generate_corpus(40, seed=k)) + "\nÜber alles, naïve.\n" for k in range(10)]
    longest = max(len(d.encode()) for d in docs)
    docs = [d + " z" * ((longest - len(d.encode())) // 2) + "." * ((longest - len(d.encode())) % 2) for d in docs]
    (tmp_path / "docs").mkdir()
    for k, d in enumerate(docs):
        (tmp_path / "docs" / f"{k:02d}.txt").write_text(d, encoding="utf-8")
    # Tiny pieces and batches: the text reaches the tokenizer cut in hundreds of places.
    monkeypatch.setattr(text_mod, "PIECE_BYTES", 64)
    monkeypatch.setattr(text_mod, "BATCH_BYTES", 512)
    dm = make(tmp_path, path=str(tmp_path / "docs"), tokenizer=tokenizer, vocab_size=400, n_train=10**6, n_val=10**6)
    tok = dm.tokenizer
    for split, part in (("train", docs[:9]), ("val", docs[9:])):
        ds = dm.dataset(split)
        assert isinstance(ds.tokens, np.memmap)  # read from the file, never loaded
        want_ids, want_mask = reference_windows(part, tok, dm.seq_len)
        got = ds[:]
        assert torch.equal(got["input_ids"], want_ids) and torch.equal(got["attention_mask"], want_mask), split
        one_by_one = [ds[i] for i in range(len(ds))]  # what the DataLoader asks for
        assert torch.equal(torch.stack([r["input_ids"] for r in one_by_one]), want_ids)
        assert torch.equal(torch.stack([r["attention_mask"] for r in one_by_one]), want_mask)
    # The token statistics are streamed from the file and agree with the windows.
    rows = dm.dataset("train")[:]
    assert torch.equal(
        dm.token_frequencies(), torch.bincount(rows["input_ids"][rows["attention_mask"]], minlength=dm.vocab_size)
    )
    assert math.isfinite(dm.unigram_loss())


def test_same_seed_same_batches_other_seed_other_batches(tmp_path: Path) -> None:
    render_text(tmp_path / "corpus", 400, seed=0, n_files=2)

    def batches(seed: int) -> list[torch.Tensor]:
        dm = make(tmp_path, path=str(tmp_path / "corpus"), seed=seed)
        dm.setup()
        return [b["input_ids"] for _, b in zip(range(3), dm.train_dataloader(), strict=False)]

    a, b, c = batches(0), batches(0), batches(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def write_dataset_dir(root: Path, rows: list[str], fmt: str) -> Path:
    root.mkdir(parents=True)
    if fmt == "parquet":
        half = len(rows) // 2  # two shards, as a hub dataset has
        pq.write_table(pa.table({"story": rows[:half], "id": list(range(half))}), root / "train-0.parquet")
        pq.write_table(pa.table({"story": rows[half:], "id": list(range(half, len(rows)))}), root / "train-1.parquet")
    else:
        (root / "train.jsonl").write_text("".join(json.dumps({"story": r}) + "\n" for r in rows))
    return root


@pytest.mark.parametrize("fmt", ["parquet", "json"])
def test_a_dataset_directory_goes_through_the_hub_path(tmp_path: Path, fmt: str) -> None:
    rows = [f"Story {k}: the cat {'sat' if k % 2 else 'ran'} on the mat, naïvely." for k in range(100, 141)]
    rows[5] = ""  # an empty row is no document: no EOS for it
    data = write_dataset_dir(tmp_path / fmt, rows, fmt)
    dm = make(tmp_path, name=str(data), text_field="story", n_train=10**6, n_val=10**6)
    tok = dm.tokenizer
    kept = [r for r in rows if r]
    # Forty rows of equal length: the held-out tail is the last tenth of them.
    assert len(kept) == 40 and len({len(r.encode()) for r in kept}) == 1
    n_train = 36
    for split, part in (("train", kept[:n_train]), ("val", kept[n_train:])):
        want_ids, want_mask = reference_windows(part, tok, dm.seq_len)
        got = dm.dataset(split)[:]
        assert torch.equal(got["input_ids"], want_ids) and torch.equal(got["attention_mask"], want_mask), split
    with pytest.raises(ConfigError) as err:
        make(tmp_path, name=str(data), text_field="body").prepare_data()
    assert err.value.field == "data.text_field" and "story" in str(err.value)


@pytest.mark.parametrize("preset", ["tinystories", "wikitext103"])
def test_hub_presets_offline_are_one_error_line(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess], preset: str
) -> None:
    name = {"tinystories": "roneneldan/TinyStories", "wikitext103": "Salesforce/wikitext"}[preset]
    for extra in ({"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}):  # offline mode / no network
        env = {**os.environ, "WANDB_MODE": "offline", "MHAEXP_CACHE": str(tmp_path / "cache"), **extra}
        env.pop("HF_HUB_OFFLINE", None) if "HF_ENDPOINT" in extra else None
        proc = cli("mhaexp-train", f"data={preset}", cwd=tmp_path, env=env)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mhaexp-train: error: data.name='{name}' is invalid: "), lines
        assert ("datasets cache" in lines[0]) and ("cannot be reached" in lines[0] or "offline" in lines[0])
    assert not (tmp_path / "runs").exists()


def test_render_text_command_writes_the_grammar_as_text(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    proc = subprocess.run(
        [sys.executable, "-m", "mhaexp.data.render_text", str(out), "--sentences", "50", "--files", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=True,
    )
    assert proc.stdout.startswith("wrote 50 sentences") and sorted(p.name for p in out.iterdir()) == [
        "part-00000.txt",
        "part-00001.txt",
    ]
    text = (out / "part-00000.txt").read_text()
    assert text[0].isupper() and text.count(".") == 25 and text.endswith(".\n")
    plain = render_text(tmp_path / "plain", 6, seed=4, n_files=1, style="plain")[0].read_text().splitlines()
    assert plain == [s.text for s in generate_corpus(6, seed=4)]  # word for word the treebank export


@pytest.mark.slow
def test_bpe_text_run_ends_with_roles_wandb_series_and_a_tokenizer_that_analysis_reuses(
    tmp_path: Path,
    cli: Callable[..., subprocess.CompletedProcess],
    tiny: list[str],
    wandb_run: Callable[[Path], Path],
    wandb_records: Callable[[Path], list[dict]],
) -> None:
    render_text(tmp_path / "corpus", 1500, seed=0, n_files=4)
    args = [*tiny, "analysis=default", "data=text", f"data.path={tmp_path / 'corpus'}", "data.tokenizer=bpe"]
    args += ["data.vocab_size=512", "data.seq_len=33", "logger=wandb"]
    proc = cli("mhaexp-train", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p.parent for p in tmp_path.glob("runs/*/*/status.json")]
    assert "head roles    :" in proc.stdout and "  L1H3 " in proc.stdout
    history = [r["history"]["item"] for r in wandb_records(wandb_run(run_dir)) if r["type"] == "history"]
    series = {k for h in history for k in h if k.startswith("heads/L")}
    assert {f"heads/L{la:02d}H{h:02d}/entropy" for la in range(2) for h in range(4)} <= series, sorted(series)[:8]
    # The run's tokenizer is in its directory; analysis reads it from there, offline, without retraining.
    saved = json.loads((run_dir / "tokenizer" / "mhaexp_tokenizer.json").read_text())
    assert saved == {"vocab_size": 512, "kind": "bpe"}
    cache = tmp_path / "cache"
    before = sorted(p.name for p in cache.iterdir())
    for bpe_dir in cache.glob("bpe-*"):
        for f in bpe_dir.iterdir():
            f.unlink()
        bpe_dir.rmdir()
    env = {**os.environ, "MHAEXP_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = cli(
        "mhaexp-analyze", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "text=The cat sat.", cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # mhaexp-analyze reads its own default probe size: all 64 held-out windows the run's data holds, and says so.
    assert "on data=text: 64 probe sequences (all the probe set holds" in out.stdout, out.stdout[:400]
    assert sorted(p.name for p in cache.iterdir()) == [n for n in before if not n.startswith("bpe-")]  # nothing rebuilt
    view = (run_dir / "checkpoints" / "analysis-last" / "head_view.html").read_text()
    assert '"\\u0120cat"' in view  # the head view shows the run's BPE pieces (Ġcat, JSON-escaped)


def test_a_corpus_larger_than_the_windows_is_tokenized_only_as_far_as_they_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    render_text(tmp_path / "corpus", 3000, seed=0, n_files=3)  # ~180 KB of text, 16 bytes a window
    monkeypatch.setattr(text_mod, "PIECE_BYTES", 256)
    monkeypatch.setattr(text_mod, "BATCH_BYTES", 1024)
    few = make(tmp_path, path=str(tmp_path / "corpus"), n_train=50, n_val=5)
    rows = few.dataset("train")[:]
    assert len(rows["input_ids"]) == 50 and few.cache_path.name.count("-") == 2  # text-<fp>-<budget>
    stream = few.dataset("train").n_tokens
    assert 50 * 16 <= stream < 50 * 16 + 1024 + 2 * 256  # stopped after the batch that filled the windows
    whole = make(tmp_path, path=str(tmp_path / "corpus"), n_train=10**6, n_val=10**6)
    assert whole.cache_path.name.count("-") == 1 and whole.dataset("train").n_tokens > 150_000
    assert torch.equal(whole.dataset("train")[:50]["input_ids"], rows["input_ids"])  # the same first windows
    # Once the whole text is cached, a smaller run reads it instead of tokenizing again.
    assert make(tmp_path, path=str(tmp_path / "corpus"), n_train=40, n_val=5).cache_path == whole.cache_path
