"""``mhaexp-analyze series=``: one analysis per checkpoint, one table and one role timeline across training
steps, for a run's own checkpoints and for imported save_pretrained directories; steps that cannot be
known are refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mhaexp.cli import analyze, import_model
from mhaexp.cli.series import resolve_series
from mhaexp.errors import ConfigError
from mhaexp.tools.import_parity import save_random_hf

TEXT = [
    "the cat sat on the mat and the dog sat on the log",
    "a bird sang in the tree while the cat slept on the warm mat",
    "the dog chased the cat around the garden and back to the house",
] * 20
ANALYSIS = ("data.seq_len=16", "data.batch_size=4", "probe_sequences=4")


def bpe_tokenizer(directory: Path) -> None:
    """A small byte-level BPE wrapped as transformers saves one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet)
    tok.train_from_iterator(TEXT, trainer)
    end = "<|endoftext|>"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end).save_pretrained(str(directory))


def gpt2_checkpoint(directory: Path, seed: int) -> Path:
    """A random-init GPT-2 (2 layers, 4 heads) saved with its tokenizer: one 'training checkpoint'."""
    from transformers import GPT2Config

    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=320, bos_token_id=0)
    directory.mkdir(parents=True)
    save_random_hf(config, directory, seed=seed, std=0.3)
    bpe_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("series")
    gpt2_checkpoint(root / "pythia-step1000", seed=1)
    gpt2_checkpoint(root / "pythia-step2000", seed=2)
    late = gpt2_checkpoint(root / "final", seed=3)  # an HF Trainer checkpoint: its step is recorded
    (late / "trainer_state.json").write_text(json.dumps({"global_step": 3000}))
    (root / "corpus.txt").write_text("\n".join(TEXT))
    return root


def test_imported_series_writes_one_table_and_timeline_at_the_training_steps(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "timeline"
    dirs = ",".join(str(saved / d) for d in ("final", "pythia-step2000", "pythia-step1000"))  # any order
    text = analyze.run([f"series={dirs}", f"out={out}", f"data.path={saved / 'corpus.txt'}", *ANALYSIS])
    lines = text.splitlines()
    assert lines[0].startswith(f"step 1000 (directory name): {out / 'checkpoints' / 'step1000.ckpt'}: ")
    assert lines[1].startswith("step 2000 (directory name): ")
    assert lines[2].startswith("step 3000 (trainer_state.json global_step): ")
    assert f"analysed 3 checkpoints at steps 1000, 2000, 3000 into {out}" in text

    metrics = pd.read_csv(out / "head_metrics.csv")
    history = pd.read_csv(out / "head_roles_history.csv")
    assert sorted(metrics["step"].unique()) == [1000, 2000, 3000]
    assert sorted(history["step"].unique()) == [1000, 2000, 3000]
    per_step = history.groupby("step").apply(lambda g: len(g[["layer", "head"]].drop_duplicates()))
    assert list(per_step) == [8, 8, 8]  # every head of the 2x4 model at every step
    png = (out / "role_timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # The same analysis as one checkpoint at a time: the series' step-1000 rows are that run's numbers.
    single = tmp_path / "single"
    ckpt = out / "checkpoints" / "step1000.ckpt"
    analyze.run([f"ckpt={ckpt}", f"out={single}", f"data.path={saved / 'corpus.txt'}", *ANALYSIS])
    alone = pd.read_csv(single / "head_metrics.csv").drop(columns="step")
    first = metrics[metrics["step"] == 1000].drop(columns="step").reset_index(drop=True)
    pd.testing.assert_frame_equal(first, alone)
    # Different weights give different numbers at different steps (the series did not analyse one model).
    later = metrics[metrics["step"] == 3000].drop(columns="step").reset_index(drop=True)
    assert not first["value"].equals(later["value"])


def test_a_runs_step_checkpoints_form_a_series(tmp_path: Path, tiny: list[str], cli) -> None:
    run_dir = tmp_path / "run"
    common = [*tiny, f"hydra.run.dir={run_dir}", "trainer.val_check_interval=10"]
    r = cli("mhaexp-train", *common, "trainer.max_steps=10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ckpts = run_dir / "checkpoints"
    shutil.copy(ckpts / "step10.ckpt", ckpts / "kept-step10.ckpt")  # the run keeps only its newest step
    r = cli("mhaexp-train", *common, "trainer.max_steps=20", "resume=auto", cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    out = tmp_path / "timeline"
    a = cli("mhaexp-analyze", f"series={run_dir}", f"out={out}", "probe_sequences=4", cwd=tmp_path)
    assert a.returncode == 0, a.stderr
    assert f"step 10 (global_step): {ckpts / 'kept-step10.ckpt'}" in a.stdout
    assert f"step 20 (global_step): {ckpts / 'step20.ckpt'}" in a.stdout  # last.ckpt repeats step 20
    assert sorted(pd.read_csv(out / "head_metrics.csv")["step"].unique()) == [10, 20]
    assert (out / "role_timeline.png").is_file()


def test_steps_that_cannot_be_known_are_refused(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    nowhere = saved / "final"

    def refused(spec: str) -> str:
        with pytest.raises(ConfigError) as e:
            resolve_series(spec, out, import_model.run)
        return str(e.value)

    unnamed = gpt2_checkpoint(tmp_path / "weights", seed=4)
    assert "records no training step" in refused(f"{saved / 'pythia-step1000'},{unnamed}")
    contradicted = tmp_path / "run-step5"
    shutil.copytree(nowhere, contradicted)
    assert "its name says step 5, its trainer_state.json global_step 3000" in refused(f"{contradicted},{nowhere}")
    twice = tmp_path / "copy-step1000"
    shutil.copytree(saved / "pythia-step1000", twice)
    assert "are both at step 1000; keep one" in refused(f"{saved / 'pythia-step1000'},{twice}")
    assert "a series needs checkpoints at two or more steps" in refused(str(saved / "pythia-step1000"))
    # A hub revision's step is its name; a branch like main is refused before anything is downloaded.
    assert "a revision's training step is its name" in refused("EleutherAI/pythia-70m@step1000,main")
    # An import from a directory records no step: it cannot join a series as a checkpoint file.
    plain = tmp_path / "plain.ckpt"
    import_model.run([f"source={unnamed}", f"out={plain}"])
    assert "records no training step; import a stepN revision" in refused(f"{plain},{nowhere}")


def test_series_errors_are_one_line(saved: Path, tmp_path: Path, cli) -> None:
    r = cli("mhaexp-analyze", f"series={saved / 'pythia-step1000'},{tmp_path / 'nothing'}", cwd=tmp_path)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert err[0].startswith("mhaexp-analyze: error: series=") and "not a checkpoint file, a run directory" in err[0]
    r = cli("mhaexp-analyze", "series=a.ckpt,b.ckpt", "ckpt=a.ckpt", cwd=tmp_path)
    assert r.returncode == 2 and "not both" in r.stderr
