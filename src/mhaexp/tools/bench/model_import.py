"""Benchmark section ``import``: peak memory of ``mhaexp-import`` against the model's weights.

``python -m mhaexp.tools.bench --sections import``. transformers builds a random-init Llama-shaped
model (GQA, untied embeddings; :data:`SHAPE`, 2.7 GB of fp32 weights, the largest that fits next to
other work on the 2-core, 23 GB reference machine; ``--quick``: :data:`QUICK_SHAPE`) and saves it with
``save_pretrained`` in one process, once per weight format (:data:`FORMATS`: ``model.safetensors``, read
with plain reads, and ``pytorch_model.bin``, memory-mapped, as older hub revisions and Pythia's step
branches hold it); the real ``mhaexp-import`` then runs on that directory in a process of its own,
checkpoint writing included, and its peak resident memory is read from ``wait4``.

Rows: (peak RSS - the process's RSS once its libraries are imported) / weight bytes, target
``<= 1.3`` (issue 30: streamed import); the raw peak RSS / weight bytes (the interpreter, torch and
transformers included); the import's seconds. One measurement: the peak of a deterministic program.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mhaexp.tools.bench.harness import Args, Row, register

TARGET = "<= 1.3"
SHAPE = dict(
    num_hidden_layers=12,
    hidden_size=2048,
    num_attention_heads=16,
    num_key_value_heads=4,
    intermediate_size=5632,
    vocab_size=32000,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)
QUICK_SHAPE = dict(SHAPE, num_hidden_layers=2, hidden_size=256, intermediate_size=704, vocab_size=4000)
# The weight file each format leaves in the directory. save_pretrained writes safetensors only (transformers
# 5 ignores safe_serialization=False), so the .bin is that file's tensors written by torch.save, as the
# hub's pytorch_model.bin files were.
FORMATS = {"safetensors": "model.safetensors", "bin": "pytorch_model.bin"}


def _peak_rss(argv: list[str]) -> tuple[int, float]:
    """(peak resident bytes, seconds) of ``python <argv>`` run as its own process (``wait4``'s ru_maxrss)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss * 1024, seconds  # ru_maxrss is in KiB on Linux


def build(directory: Path, shape: dict, weight_format: str) -> None:
    """The random-init HF model of ``shape``, saved in ``directory`` as ``weight_format`` (:data:`FORMATS`):
    its one weight file, so that the import can read nothing else."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from mhaexp.tools.import_parity import save_random_hf

    save_random_hf(AutoConfig.for_model("llama", **shape), directory)
    safetensors = directory / FORMATS["safetensors"]
    if weight_format == "bin":
        torch.save(load_file(str(safetensors)), directory / FORMATS["bin"])
        safetensors.unlink()
    weights = sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))
    if weights != [FORMATS[weight_format]]:
        raise RuntimeError(f"{directory} holds {weights}, not {FORMATS[weight_format]}")


def measure(directory: Path, out: Path) -> dict:
    """The real ``mhaexp-import`` in a fresh process: its peak RSS and seconds; the peak of a process that
    only loads the same libraries (the baseline: the libraries' memory is not the import's); the weight bytes."""
    import torch

    from mhaexp.nn.hf_import import hf_model_config, read_hf_config
    from mhaexp.nn.model import Transformer

    baseline, _ = _peak_rss(["-c", "import torch, transformers, mhaexp.nn.hf_import, mhaexp.nn.io"])
    peak, seconds = _peak_rss(["-m", "mhaexp.cli.import_model", f"source={directory}", f"out={out}"])
    with torch.device("meta"):  # the weights' size, counted without allocating them again
        model = Transformer(hf_model_config(read_hf_config(directory, str(directory)), str(directory)))
    weights = sum(p.numel() * 4 for p in model.parameters())  # fp32, as imported
    return {"peak": peak, "baseline": baseline, "seconds": seconds, "weights": weights}


@register("import")
def bench_import(args: Args) -> list[Row]:
    shape = QUICK_SHAPE if args.quick else SHAPE
    rows = []
    for weight_format in FORMATS:
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "hf", Path(tmp) / "imported.ckpt"
            run = [sys.executable, "-m", "mhaexp.tools.bench.model_import"]
            subprocess.run([*run, "build", str(src), json.dumps(shape), weight_format], check=True, capture_output=True)
            proc = subprocess.run([*run, "measure", str(src), str(out)], check=True, capture_output=True, text=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        weights = result["weights"]
        size = f"{weights / 1e9:.2f} GB fp32, .{weight_format}"
        case = f"llama {shape['num_hidden_layers']}L d{shape['hidden_size']} ({size})"
        above = (result["peak"] - result["baseline"]) / weights
        extra = dict(result)
        rows += [
            # --quick's model is smaller than what the libraries load lazily on first use: no target there.
            Row(
                "import",
                case,
                "peak RSS above baseline / weights",
                *(above,) * 3,
                target=None if args.quick else TARGET,
                extra=extra,
            ),
            Row("import", case, "peak RSS / weights", *(result["peak"] / weights,) * 3, extra=extra),
            Row("import", case, "import s", *(result["seconds"],) * 3, unit="s"),
        ]
    return rows


def main(argv: list[str]) -> None:
    """``build <dir> <shape json> <format>`` or ``measure <dir> <out.ckpt>`` (the section's two processes)."""
    if argv[0] == "build":
        build(Path(argv[1]), json.loads(argv[2]), argv[3])
    else:
        print(json.dumps(measure(Path(argv[1]), Path(argv[2]))))


if __name__ == "__main__":
    main(sys.argv[1:])
