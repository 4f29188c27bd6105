"""The soak test's mechanism (``make soak`` runs it at scale): one tiny run SIGKILLed inside a checkpoint write
by the fault hook, resumed with ``resume=auto``, ends bit-identical to the uninterrupted run."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mhaexp.errors import ConfigError
from mhaexp.faults import armed

# A tiny run that checkpoints (after validation) at steps 10, 20 and 30 and analyses at 0, 10, 20 and 30
# (the one at 30 in full, so none is added at the end). 15 batches an epoch: it resumes mid-epoch, where
# the sampler must skip the batches the checkpoint had seen.
TINY_SOAK = [
    "model=tiny",
    "data.n_train=960",
    "data.n_val=64",
    "analysis.probe_sequences=16",
    "trainer.max_steps=30",
    "trainer.val_check_interval=10",
    "trainer.log_every_n_steps=5",
    "analysis.every_n_steps=10",
    "logger=csv",
]


def test_a_run_killed_inside_a_checkpoint_write_resumes_to_the_uninterrupted_numbers(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    out = tmp_path / "soak"
    # Each save writes step<N>.ckpt, then last.ckpt: the 3rd write is step20.ckpt, so it resumes from step 10.
    proc = cli(
        "python", "-m", "mhaexp.tools.soak", "--plans", "checkpoint:3", "--out", str(out), *TINY_SOAK, cwd=tmp_path
    )
    report = json.loads((out / "soak.json").read_text())
    assert report["passes"]["checkpoint"] == 6 and report["passes"]["analysis"] == 4, report["passes"]
    [run] = report["runs"]
    assert (run["hit"], run["step_killed"], run["resumed_from"]) == ("checkpoint", 20, 10), run
    assert run["resumed_path"] is not None, run  # the resumed run said it resumed: not a fresh start
    assert run["differences"] == [] and run["identical"], run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1/1 resumed runs identical" in proc.stdout
    # The killed write left its temporary file, never a torn step20.ckpt, and the resumed run wrote it again.
    ckpts = out / "run00" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["last.ckpt", "step30.ckpt"]
    for name in ("metrics.csv", "analysis/head_metrics.csv"):
        assert (out / "run00" / name).read_bytes() == (out / "reference" / name).read_bytes()


@pytest.mark.parametrize("value", ["checkpoint", "checkpoint:0", "disk:1", "step:x"])
def test_a_malformed_fault_names_the_variable_and_the_valid_points(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^MHAEXP_FAULT=.* point one of \['step', 'checkpoint', 'analysis'"):
        armed(value)
    assert armed("analysis:2") == ("analysis", 2) and armed("count") is None and armed(None) is None
