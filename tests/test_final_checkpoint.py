"""``last.ckpt`` is the model at the end of training, whatever the step interval, and after a resume; the run
record (``summary.json``) names the step each checkpoint holds. Real ``mhaexp-train`` runs, tiny."""

from __future__ import annotations

import json
from pathlib import Path

from mhaexp.checkpoint import read_checkpoint
from mhaexp.rundir import CHECKPOINT_DIR, LAST_CHECKPOINT, SUMMARY_FILE

LAST = f"{CHECKPOINT_DIR}/{LAST_CHECKPOINT}"


def held_steps(run: Path) -> dict[str, int]:
    """``{checkpoint path relative to the run: the global step stored in it}`` of every checkpoint there."""
    return {
        f"{CHECKPOINT_DIR}/{p.name}": int(read_checkpoint(p, "test")["global_step"])
        for p in sorted((run / CHECKPOINT_DIR).glob("*.ckpt"))
    }


def recorded_steps(run: Path) -> dict[str, int]:
    return json.loads((run / SUMMARY_FILE).read_text())["checkpoint_steps"]


def test_last_checkpoint_holds_the_final_step_off_the_interval(cli, tiny: list[str], tmp_path: Path) -> None:
    # Validation (and the interval checkpoint) every 10 steps; 25 is no multiple of it: Lightning alone leaves
    # last.ckpt at step 20.
    run = tmp_path / "run"
    proc = cli("mhaexp-train", *tiny, "trainer.max_steps=25", "logger=csv", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert held_steps(run) == {LAST: 25, f"{CHECKPOINT_DIR}/step25.ckpt": 25}
    assert recorded_steps(run) == held_steps(run)
    assert json.loads((run / SUMMARY_FILE).read_text())["global_step"] == 25


def test_on_the_interval_the_final_checkpoint_is_written_once(cli, tiny: list[str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = cli("mhaexp-train", *tiny, "trainer.max_steps=20", "logger=csv", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert held_steps(run) == recorded_steps(run) == {LAST: 20, f"{CHECKPOINT_DIR}/step20.ckpt": 20}


def test_a_resumed_run_ends_with_its_final_model(cli, tiny: list[str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = cli("mhaexp-train", *tiny, "trainer.max_steps=15", "logger=csv", f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert held_steps(run)[LAST] == 15
    # Continued to step 27: resumed from step 15, validating at 20, ending off the interval.
    again = cli(
        "mhaexp-train",
        *tiny,
        "trainer.max_steps=27",
        "logger=csv",
        "resume=auto",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    assert held_steps(run) == recorded_steps(run) == {LAST: 27, f"{CHECKPOINT_DIR}/step27.ckpt": 27}
