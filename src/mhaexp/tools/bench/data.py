"""Benchmark section ``data``: tokenizing a large text corpus, and training from its token file in flat memory.

``python -m mhaexp.tools.bench --sections data [--data-mb 200]``. A corpus of ``--data-mb`` MB (default 200;
``--quick`` 8) is generated: sentences of the synthetic grammar rendered as prose (a pool of 20000,
drawn with replacement into paragraphs and files of 8 MB). A 1 MB corpus made the same way is the
reference. Every measurement runs in a fresh child process, so its peak RSS (``ru_maxrss``) is its own.

Rows:

* ``tokenize bytes`` / ``tokenize bpe``: throughput of the whole build (reading, pieces, the batch
  API, writing the token file), MB of text per second, with tokens/s and the child's peak RSS; for
  ``bpe`` also the time to train the 4096-token BPE on the training text (90%), which comes first.
* ``bpe / bytes``: time per MB of the BPE build over the bytes build (training excluded).
* ``train from token file``: peak RSS of a process training a small model for a few dozen steps on every
  window of the large corpus (BPE, T = 128), over the same on the 1 MB corpus; target ``<= 1.10``:
  memory does not grow with the corpus. Its step time over the reference's is a cross-check that
  reading windows from the file costs nothing visible.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mhaexp.tools.bench.harness import Args, Row, register

DEFAULT_MB, QUICK_MB, REFERENCE_MB = 200.0, 8.0, 1.0
FILE_MB = 8.0
VOCAB = 4096
STEPS, QUICK_STEPS = 40, 12
TRAIN = {"seq_len": 128, "batch_size": 16}
RSS_TARGET = "<= 1.10"


def generate_corpus(out: Path, mb: float, seed: int = 0, pool: int = 20_000, per_line: int = 6) -> int:
    """``mb`` MB of grammar prose in files of :data:`FILE_MB` MB under ``out``; returns the bytes written."""
    import numpy as np

    from mhaexp.data.grammar import generate_corpus as sentences
    from mhaexp.data.grammar import render_sentence

    out.mkdir(parents=True, exist_ok=True)
    lines = [render_sentence(x) for x in sentences(pool, seed)]
    rng = np.random.default_rng(seed)
    target, written, k = int(mb * 1e6), 0, 0
    while written < target:
        size = min(int(FILE_MB * 1e6), target - written)
        avg = sum(len(x) + 1 for x in lines[:1000]) / 1000
        picks = rng.integers(0, pool, size=int(size / avg) + per_line)
        text = "\n".join(" ".join(lines[j] for j in picks[i : i + per_line]) for i in range(0, len(picks), per_line))
        data = text.encode()[:size]
        data = data[: data.rfind(b"\n") + 1] or data
        (out / f"part-{k:05d}.txt").write_bytes(data)
        written += len(data)
        k += 1
    return written


def _datamodule(corpus: Path, cache: Path, tokenizer: str) -> Any:
    from mhaexp.data import LMDataModule

    return LMDataModule(
        kind="text",
        path=str(corpus),
        tokenizer=tokenizer,
        vocab_size=VOCAB,
        cache_dir=str(cache),
        n_train=10**12,  # every window of the corpus
        n_val=64,
        n_probe=16,
        **TRAIN,
    )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process: ``tokenize`` or ``train``."""
    corpus, cache, tok = Path(spec["corpus"]), Path(spec["cache"]), spec["tokenizer"]
    dm = _datamodule(corpus, cache, tok)
    if spec["action"] == "tokenize":
        t0 = time.perf_counter()
        if tok == "bpe":
            dm.tokenizer.encode("warm")  # trains the BPE (timed apart from tokenizing)
        t1 = time.perf_counter()
        dm.prepare_data()
        t2 = time.perf_counter()
        train = dm.dataset("train")
        return {"train_s": t1 - t0, "tokenize_s": t2 - t1, "tokens": train.n_tokens, "rss_mb": _peak_rss_mb()}
    import pytorch_lightning as pl
    import torch

    from mhaexp.nn.config import ModelConfig
    from mhaexp.training.module import LMModule

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    pl.seed_everything(0, verbose=False)
    cfg = ModelConfig(vocab_size=dm.vocab_size, n_layers=2, d_model=64, n_heads=4, max_seq_len=TRAIN["seq_len"])
    module = LMModule(cfg, {"lr": 1e-3}, pad_id=dm.tokenizer.pad_id, mask_id=dm.tokenizer.mask_id)
    trainer = pl.Trainer(
        max_steps=spec["steps"],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - t0
    return {"windows": len(dm.dataset("train")), "step_s": fit_s / spec["steps"], "rss_mb": _peak_rss_mb()}


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "mhaexp.tools.bench.data", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec['action']} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one(section: str, case: str, metric: str, value: float, unit: str, **kw: Any) -> Row:
    """A single measurement (min = median = max): these builds take minutes, not microseconds."""
    return Row(section, case, metric, value, value, value, unit, **kw)


@register("data")
def bench_data(args: Args) -> list[Row]:
    mb = args.data_mb or (QUICK_MB if args.quick else DEFAULT_MB)
    steps = QUICK_STEPS if args.quick else STEPS
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mhaexp-bench-data-") as tmp:
        root = Path(tmp)
        big_bytes = generate_corpus(root / "big", mb, args.seed)
        generate_corpus(root / "small", REFERENCE_MB, args.seed + 1)
        cache = root / "cache"
        built: dict[str, dict[str, Any]] = {}
        for tok in ("bytes", "bpe"):
            spec = {"action": "tokenize", "corpus": str(root / "big"), "cache": str(cache), "tokenizer": tok}
            r = built[tok] = _run_child(spec)
            extra = {"tokens": r["tokens"], "tokens_per_s": r["tokens"] / r["tokenize_s"], "corpus_mb": big_bytes / 1e6}
            extra.update(peak_rss_mb=r["rss_mb"], tokenize_s=r["tokenize_s"])
            if tok == "bpe":
                extra["bpe_train_s"] = r["train_s"]
            mb_s = big_bytes / 1e6 / r["tokenize_s"]
            rows.append(one("data", f"tokenize {tok}", "throughput", mb_s, "MB/s", extra=extra))
            rows.append(one("data", f"tokenize {tok}", "tokens/s", r["tokens"] / r["tokenize_s"], "tok/s"))
        slower = built["bpe"]["tokenize_s"] / built["bytes"]["tokenize_s"]
        rows.append(one("data", "bpe / bytes", "time per MB", slower, "x"))
        rows.append(one("data", "tokenize bpe", "BPE training", built["bpe"]["train_s"], "s"))
        runs = {}
        for name in ("small", "big"):
            if name == "small":
                _run_child({"action": "tokenize", "corpus": str(root / name), "cache": str(cache), "tokenizer": "bpe"})
            spec = {"action": "train", "corpus": str(root / name), "cache": str(cache), "tokenizer": "bpe"}
            runs[name] = _run_child({**spec, "steps": steps, "threads": args.threads})
        big, small = runs["big"], runs["small"]
        extra = {"big_rss_mb": big["rss_mb"], "small_rss_mb": small["rss_mb"], "big_windows": big["windows"]}
        extra.update(small_windows=small["windows"], steps=steps, corpus_mb=big_bytes / 1e6)
        ratio = big["rss_mb"] / small["rss_mb"]
        case = "train from token file"
        rows.append(one("data", case, "peak RSS big/1 MB", ratio, "x", target=RSS_TARGET, extra=extra))
        rows.append(one("data", case, "peak RSS big", big["rss_mb"], "MB"))
        rows.append(one("data", case, "step time big/1 MB", big["step_s"] / small["step_s"], "x"))
    return rows


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
