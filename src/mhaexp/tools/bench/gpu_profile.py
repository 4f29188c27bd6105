"""The GPU check's two profiles: the sizes and device of a run on a lent GPU, or of ``--tiny`` on the CPU,
and issue 14's targets the check reports against."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mhaexp.tools.bench.reference import DEFAULT_LAYER, GPT2_LAYER, GPT2_SMALL
from mhaexp.tools.bench.sweep import HEADS

DEADLINE_S = 540.0  # the whole check; sections that would start past it are skipped (--tiny: TINY_DEADLINE_S)
TINY_DEADLINE_S = 840.0
# Dense bf16 tensor-core peaks from NVIDIA's datasheets (no sparsity), by a substring of the device name.
DATASHEET_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
]


@dataclass(frozen=True)
class Mode:
    """Sizes and device of a run: the GPU check, or ``--tiny`` (the same code on the CPU, toy sizes)."""

    tiny: bool
    # (B, T, d_model, n_heads): the default model's layer, and GPT-2 small's at T=1024.
    layer_shapes: tuple[tuple[int, int, int, int], ...]
    gpt2: dict[str, int]  # the model of the compile/MFU section
    batch: int
    seq: int
    compile_repeats: int
    compile_steps: int  # timed steps per repeat
    peak_n: int  # square matmul for the measured peak
    sweep_steps: int
    sweep_heads: str  # the sweep's jobs: model.n_heads values, one job each
    sweep_overrides: tuple[str, ...] = field(default=())

    @property
    def device(self) -> torch.device:
        return torch.device("cpu" if self.tiny else "cuda")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.tiny else torch.bfloat16

    @property
    def autocast(self) -> torch.dtype | None:
        return None if self.tiny else torch.bfloat16


GPU = Mode(
    tiny=False,
    layer_shapes=(DEFAULT_LAYER, GPT2_LAYER),
    gpt2=GPT2_SMALL,
    batch=8,
    seq=1024,
    compile_repeats=5,
    compile_steps=10,
    peak_n=8192,
    sweep_steps=300,
    sweep_heads=HEADS,
    sweep_overrides=("trainer=gpu",),
)
TINY = Mode(
    tiny=True,
    layer_shapes=((8, 16, 32, 4), (2, 64, 64, 4)),
    gpt2={"vocab_size": 64, "n_layers": 1, "d_model": 32, "n_heads": 4, "max_seq_len": 32},
    batch=4,
    seq=32,
    compile_repeats=3,
    compile_steps=3,
    peak_n=256,
    sweep_steps=3,
    sweep_heads="1,2",  # 2 jobs: the same code path, half the wait on a 2-core machine
    sweep_overrides=(
        "trainer=cpu",
        "model=tiny",
        "data.n_train=256",
        "data.n_val=32",
        "analysis.probe_sequences=8",
        "analysis=off",
        "logger=csv",
        "trainer.val_check_interval=3",
    ),
)
# Issue 14's targets: (name, the figure in the JSON it reads, comparison, bound).
LAYER_TARGET = 1.0  # ours/nanoGPT layer forward + backward, at most
COMPILE_TARGET = 1.5  # compiled/eager training tokens/s, at least
MFU_TARGET = 0.40  # of the measured matmul peak, at least
SWEEP_TARGET = 3.0  # 4 jobs sharing one GPU / sequential, jobs per hour, at least


def datasheet_peak(name: str) -> float | None:
    """Dense bf16 FLOP/s of a device by its name, or None when we do not know it."""
    for key, tflops in DATASHEET_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None
