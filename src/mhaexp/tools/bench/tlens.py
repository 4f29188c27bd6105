"""Benchmark section ``tlens``: the same head analysis through TransformerLens and through mhaexp.

``python -m mhaexp.tools.bench --sections tlens`` (needs the ``bench`` extra: ``pip install -e .[bench]``;
skipped with a note when TransformerLens is not installed). transformers builds a random-init GPT-2
of GPT-2 small's shape (:data:`SHAPE`: 12 layers, 12 heads, d 768; 1025 positions, because
TransformerLens's ``detect_head`` takes sequences shorter than the context and the workload is 1024
tokens) and saves it with a word-level tokenizer (``w0`` ... ``w50256``: text whose ids are known).
TransformerLens 4.x runs its ``TransformerBridge`` over that directory and scores every head with
``detect_head`` (previous-token, duplicate-token, induction; ``error_measure="mul"``); mhaexp imports
the same directory into its layer and computes the same three scores
(:func:`mhaexp.heads.patterns.previous_token_score` and its neighbours, TransformerLens's definitions)
from patterns streamed one layer at a time (``Transformer.layer_patterns``).

Rows: seconds for 64 sequences of 256 tokens (each half a random sequence repeated, so induction
has something to find), TransformerLens / mhaexp (target ``>= 10``); peak resident memory above the
weights for 4 sequences of 1024 tokens, each tool in a fresh process with its high-water mark reset
after loading, mhaexp / TransformerLens (target ``<= 0.25``); the largest score difference on the
same weights and tokens (target ``<= 1e-4``). One measurement each: these runs take minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mhaexp.tools.bench.harness import Args, Row, register

SHAPE = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1025, vocab_size=50257)
QUICK_SHAPE = dict(n_layer=2, n_head=4, n_embd=64, n_positions=1025, vocab_size=1000)
SPEED = (64, 256)  # sequences x tokens (BOS included)
MEMORY = (4, 1024)
QUICK_SPEED, QUICK_MEMORY = (4, 64), (2, 128)
BATCH = 16  # mhaexp's sequences per forward
PATTERNS = ("previous_token_head", "duplicate_token_head", "induction_head")
SPEED_TARGET, MEMORY_TARGET, AGREE_TARGET = ">= 10", "<= 0.25", "<= 1e-4"


def build(directory: Path, shape: dict[str, int]) -> None:
    """The random-init GPT-2 of ``shape`` and a word-level tokenizer (``w<i>`` is id i), saved in ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, PreTrainedTokenizerFast

    from mhaexp.tools.import_parity import save_random_hf

    save_random_hf(GPT2Config(**shape), directory)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(shape["vocab_size"])}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    names = dict(bos_token="w0", eos_token="w0", unk_token="w0", pad_token="w0")
    PreTrainedTokenizerFast(tokenizer_object=tok, **names).save_pretrained(str(directory))


def texts(n: int, tokens: int, vocab: int, seed: int = 0) -> list[str]:
    """``n`` texts of ``tokens - 1`` words (BOS makes ``tokens``): a random half, then that half again."""
    g = torch.Generator().manual_seed(seed)
    words = tokens - 1
    half = torch.randint(1, vocab, (n, (words + 1) // 2), generator=g)
    ids = torch.cat([half, half], dim=1)[:, :words]
    return [" ".join(f"w{i}" for i in row.tolist()) for row in ids]


def tlens_model(directory: Path) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(directory))


def tlens_scores(bridge: Any, seqs: list[str]) -> torch.Tensor:
    """``(3, L, H)``: TransformerLens's three ``detect_head`` scores, one forward per sequence and pattern."""
    from transformer_lens.head_detector import detect_head

    return torch.stack([detect_head(bridge, seqs, p, error_measure="mul") for p in PATTERNS])


def ours_model(directory: Path) -> Any:
    from mhaexp.nn.hf_import import import_hf_directory

    model, _ = import_hf_directory(directory, str(directory))
    return model.eval()


@torch.no_grad()
def ours_scores(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``(3, L, H)``: the same scores from patterns streamed a layer at a time, ``BATCH`` sequences a forward."""
    from mhaexp.heads.patterns import Chunk, duplicate_token_sums, induction_sums, previous_token_sums

    sums: list[list[Any]] = []
    for start in range(0, len(tokens), BATCH):
        ids = tokens[start : start + BATCH]
        for layer, p in enumerate(model.layer_patterns(ids)):
            chunk = Chunk(p, None, causal=True)
            got = [previous_token_sums(chunk), duplicate_token_sums(chunk, ids), induction_sums(chunk, ids)]
            if start == 0:
                sums.append(got)
            else:
                sums[layer] = [a + b for a, b in zip(sums[layer], got, strict=True)]
    return torch.stack([torch.stack([r.value() for r in layer]) for layer in sums], dim=1)


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(directory: Path, tool: str, n: int, tokens: int, vocab: int) -> dict[str, float]:
    """In this (fresh) process: load ``tool``'s model, reset the RSS high-water mark, score; bytes above."""
    seqs = texts(n, tokens, vocab, seed=1)
    if tool == "tlens":
        model = tlens_model(directory)
        ids = model.to_tokens(seqs)
        run = lambda: tlens_scores(model, seqs)  # noqa: E731
    else:
        model = ours_model(directory)
        ids = tlens_ids(directory, seqs)
        run = lambda: ours_scores(model, ids)  # noqa: E731
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the loading's peak is not the analysis's
    base = _kb("VmRSS") * 1024
    start = time.perf_counter()
    run()
    return {"above": _kb("VmHWM") * 1024 - base, "weights": weights, "seconds": time.perf_counter() - start}


def tlens_ids(directory: Path, seqs: list[str]) -> torch.Tensor:
    """The ids TransformerLens feeds its model for ``seqs``: BOS, then one id per word."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory))
    ids = torch.tensor(tok(seqs, add_special_tokens=False)["input_ids"])
    return torch.cat([torch.full((len(ids), 1), tok.bos_token_id), ids], dim=1)


def _subprocess(*argv: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "mhaexp.tools.bench.tlens", *argv], check=True, capture_output=True, text=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@register("tlens")
def bench_tlens(args: Args) -> list[Row]:
    try:
        import transformer_lens  # noqa: F401
    except ImportError:
        print("bench tlens: skipped, TransformerLens is not installed (pip install -e .[bench])", file=sys.stderr)
        return []
    shape = QUICK_SHAPE if args.quick else SHAPE
    (n, t), (mn, mt) = (QUICK_SPEED, QUICK_MEMORY) if args.quick else (SPEED, MEMORY)
    vocab = shape["vocab_size"]
    case = f"gpt2 {shape['n_layer']}L {shape['n_head']}H d{shape['n_embd']}"
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "hf"
        _subprocess("build", str(directory), json.dumps(shape))
        seqs = texts(n, t, vocab)
        bridge, ours = tlens_model(directory), ours_model(directory)
        ids = bridge.to_tokens(seqs).cpu()
        if not torch.equal(ids, tlens_ids(directory, seqs)):
            raise RuntimeError("TransformerLens and mhaexp would read different tokens")
        start = time.perf_counter()
        theirs = tlens_scores(bridge, seqs)
        tl_s = time.perf_counter() - start
        start = time.perf_counter()
        mine = ours_scores(ours, ids)
        our_s = time.perf_counter() - start
        del bridge, ours
        diff = float((theirs.float() - mine.float()).abs().max())
        mem = {
            tool: _subprocess("memory", str(directory), tool, str(mn), str(mt), str(vocab))
            for tool in ("tlens", "ours")
        }
    speed_case, mem_case = f"{case}, {n}x{t} tokens", f"{case}, {mn}x{mt} tokens"
    ratio = mem["ours"]["above"] / mem["tlens"]["above"]

    def one(case: str, metric: str, value: float, target: str | None = None, **kw: Any) -> Row:
        return Row("tlens", case, metric, value, value, value, target=None if args.quick else target, **kw)

    return [
        one(speed_case, "TransformerLens s", tl_s, unit="s"),
        one(speed_case, "mhaexp s", our_s, unit="s"),
        one(speed_case, "speed-up (TL s / mhaexp s)", tl_s / our_s, SPEED_TARGET),
        one(speed_case, "max |score difference|", diff, AGREE_TARGET, unit=""),
        one(
            mem_case,
            "TransformerLens peak above weights GB",
            mem["tlens"]["above"] / 1e9,
            unit="GB",
            extra=mem["tlens"],
        ),
        one(mem_case, "mhaexp peak above weights GB", mem["ours"]["above"] / 1e9, unit="GB", extra=mem["ours"]),
        one(mem_case, "memory above weights (mhaexp / TL)", ratio, MEMORY_TARGET),
    ]


def main(argv: list[str]) -> None:
    """``build <dir> <shape json>`` or ``memory <dir> <tlens|ours> <n> <tokens> <vocab>`` (the section's processes)."""
    if argv[0] == "build":
        build(Path(argv[1]), json.loads(argv[2]))
        print("{}")
    else:
        n, tokens, vocab = (int(a) for a in argv[3:6])
        print(json.dumps(measure_memory(Path(argv[1]), argv[2], n, tokens, vocab)))


if __name__ == "__main__":
    main(sys.argv[1:])
