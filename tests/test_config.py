"""Config groups compose and build; bad input gives one clear line before anything runs."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from omegaconf import DictConfig

from mhaexp.cli.preflight import check_jobs, compose_job, hydra_context
from mhaexp.config import group_options
from mhaexp.training.config import build_run

ROOT = Path(__file__).resolve().parents[1]


def test_every_group_option_composes_and_builds(compose: Callable[[list[str]], DictConfig]) -> None:
    for group in ("model", "data", "trainer", "logger", "optim", "analysis", "pruning"):
        for option in group_options(group):
            overrides = [f"{group}={option}"]
            if group == "data" and option == "text":
                overrides.append(f"data.path={ROOT / 'README.md'}")
            cfg = compose(overrides)
            if group == "trainer" and option in ("gpu", "fsdp") and not torch.cuda.is_available():
                continue
            run = build_run(cfg)
            assert run.model.vocab_size == run.data.n_vocab
            assert run.model.max_seq_len >= run.data.seq_len


def test_experiment_presets_compose(compose: Callable[[list[str]], DictConfig]) -> None:
    for option in group_options("experiment"):
        cfg = compose([f"experiment={option}"])
        assert cfg.model.n_heads >= 1


def test_sweep_is_expanded_and_every_job_checked() -> None:
    jobs, invalid = check_jobs(["-m", "model.n_heads=1,3,4", "seed=0,1"])
    assert len(jobs) == 6
    bad = {(tuple(j.overrides), j.error.field) for j in invalid}
    assert bad == {(("model.n_heads=3", "seed=0"), "model.n_heads"), (("model.n_heads=3", "seed=1"), "model.n_heads")}


def test_every_data_probe_set_follows_the_analysis_probe_size() -> None:
    """data.n_probe follows analysis.probe_sequences in every data config, unless set (then not smaller)."""
    with hydra_context():
        for option in group_options("data"):
            extra = [f"data.path={ROOT / 'README.md'}"] if option in ("text", "tinystories", "wikitext103") else []
            cfg = compose_job([f"data={option}", *extra, "analysis.probe_sequences=48"])
            assert cfg.data.n_probe == 48, option
        assert build_run(compose_job([])).data.n_probe == build_run(compose_job([])).analysis.probe_sequences
        run = build_run(compose_job(["data.n_probe=600", "analysis.probe_sequences=40"]))
        assert (run.data.n_probe, run.analysis.probe_sequences) == (600, 40)
        # With the analysis off nothing reads the probe: a smaller set is no conflict.
        assert build_run(compose_job(["analysis=off", "data.n_probe=8"])).data.n_probe == 8


EMPTY = ROOT / "tests" / "data" / "empty.txt"

# (overrides, the fragment the one error line must hold)
BAD_INPUTS = [
    (
        ["model.d_model=512", "model.n_heads=7"],
        "model.n_heads=7 is invalid: d_model=512 is not divisible by it; "
        "valid head counts are [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]",
    ),
    (["model.n_kv_heads=3"], "model.n_kv_heads=3 is invalid: must divide n_heads=8"),
    (["model.n_kv_heads=16"], "model.n_kv_heads=16 is invalid: must not exceed n_heads=8"),
    (["model.d_model=0"], "model.d_model=0 is invalid: must be a positive integer"),
    (["model.n_layers=-1"], "model.n_layers=-1 is invalid"),
    (["model.n_heads=0"], "model.n_heads=0 is invalid"),
    (["model.head_dim=-4"], "model.head_dim=-4 is invalid"),
    (["model.d_ff=0"], "model.d_ff=0 is invalid"),
    (["model.max_seq_len=16"], "model.max_seq_len=16 is invalid: must be >= data.seq_len=37"),
    (["model.pos=alibi"], "model.pos='alibi' is invalid: choose one of ['learned', 'rope', 'none']"),
    (["model.pos=rope", "model.head_dim=15"], "model.head_dim=15 is invalid: must be even"),
    (["model.dropout=1.5"], "model.dropout=1.5 is invalid"),
    (["model=nosuch"], "model='nosuch' is invalid: no such model config; choose one of ['attn_only', 'base'"),
    (["data=nosuch"], "data='nosuch' is invalid: no such data config; choose one of"),
    (["data=_base"], "data='_base' is invalid: no such data config; choose one of ['grammar', 'induction',"),
    (["experiment=null"], "experiment='null' is invalid: choose one of ['gqa_sweep', "),
    (["model=null"], "model='null' is invalid: choose one of ['attn_only', 'base', "),
    (["trainer=nosuch"], "trainer='nosuch' is invalid: no such trainer config; choose one of ['cpu', 'ddp'"),
    (["logger=nosuch"], "logger='nosuch' is invalid: no such logger config; choose one of ['csv', 'none', 'wandb']"),
    (["model.n_hedas=4"], "model.n_hedas='4' is invalid: no such key; did you mean model.n_heads?"),
    (["trainer.max_step=10"], "trainer.max_step='10' is invalid: no such key; did you mean trainer.max_steps?"),
    (["data=text", "data.path=/no/such/file.txt"], "data.path='/no/such/file.txt' is invalid"),
    (["data=text", f"data.path={EMPTY}"], "data.path="),
    (["data.seq_len=0"], "seq_len=0 is invalid"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 is invalid: must be a positive integer"),
    (["logger.mode=sometimes"], "logger.mode='sometimes' is invalid: choose one of ['offline', 'online', 'disabled']"),
    (["init_from=/no/such.ckpt"], "init_from='/no/such.ckpt' is invalid"),
    (["resume=/no/such.ckpt"], "resume='/no/such.ckpt' is invalid"),
    (["seed=abc"], "seed='abc' is invalid: must be an integer"),
    (["model.n_heads=[1,"], "override="),
    # Once accepted (or a traceback after the data and model were built): every field has a declared domain.
    (["analysis.every_n_steps=0"], "analysis.every_n_steps=0 is invalid: must be a positive integer"),
    (["analysis.probe_batches=4"], "analysis.probe_batches='4' is invalid: replaced by analysis.probe_sequences"),
    (
        ["data.n_probe=16", "analysis.probe_sequences=32"],
        "data.n_probe=16 is invalid: must be >= analysis.probe_sequences=32, the probe sequences the analysis reads",
    ),
    (["analysis.treebank_max_sentences=0"], "analysis.treebank_max_sentences=0 is invalid: must be a positive integer"),
    (["optim.lr=-1"], "optim.lr=-1 is invalid: must be a number > 0"),
    (["gqa_init=median"], "gqa_init='median' is invalid: choose one of ['mean', 'first', 'random']"),
    # Hydra would make these directories only after the jobs' workers had started, and fail with a traceback.
    (["hydra.run.dir=/dev/null/run"], "hydra.run.dir='/dev/null/run' is invalid: a directory path; /dev/null is not"),
    (["-m", "seed=1,2", "hydra.sweep.dir=/dev/null/s"], "hydra.sweep.dir='/dev/null/s' is invalid: a directory path"),
    (["data=retrieval", "data.loss=answer", "model=encoder"], "data.loss='answer' is invalid: needs a causal model"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["trainer=gpu"], "trainer.accelerator='gpu' is invalid: no CUDA GPU is visible"))


def test_bad_inputs_end_to_end_one_line_each_and_nothing_written(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    """The real CLI, one process per bad input (run three at a time to keep the suite short)."""

    def run_cli(overrides: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
        # No data cache in the environment: the check that nothing is written sees the whole directory.
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"WANDB_MODE": "offline"}
        start = time.monotonic()
        proc = cli("mhaexp-train", *overrides, cwd=cwd, env=env, timeout=180)
        return proc, time.monotonic() - start

    dirs = [tmp_path / str(i) for i in range(len(BAD_INPUTS))]
    for d in dirs:
        d.mkdir()
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run_cli, [o for o, _ in BAD_INPUTS], dirs))
    failures = []
    for (overrides, expected), (proc, seconds), cwd in zip(BAD_INPUTS, results, dirs, strict=True):
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        ok = (
            proc.returncode == 2
            and len(lines) == 1
            and lines[0].startswith("mhaexp-train: error: ")
            and expected in lines[0]
            and "Traceback" not in proc.stderr + proc.stdout
            and list(cwd.iterdir()) == []  # no run directory, no wandb folder
        )
        print(f"{seconds:5.1f}s  {' '.join(overrides):<45} -> {lines[0] if lines else proc.stderr!r}")
        if not ok:
            failures.append((overrides, proc.returncode, proc.stderr[-2000:]))
    assert len(BAD_INPUTS) >= 20
    assert not failures, failures


def test_info_prints_head_dim_and_parameter_parts(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    proc = cli("mhaexp-info", "model.d_model=768", "model.n_heads=12", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "head_dim          64  (= d_model / n_heads)" in out
    # 3 layers of MHA at d=768 with biases: 4 * (768*768 + 768) each.
    assert f"{4 * (768 * 768 + 768):>14,}" in out
    for part in ("embedding", "attention", "mlp", "total"):
        assert part in out


def test_info_bad_input_is_one_line(tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    proc = cli("mhaexp-info", "model.d_model=512", "model.n_heads=7", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "mhaexp-info: error: model.n_heads=7 is invalid: d_model=512 is not divisible by it; valid head counts are "
        "[1, 2, 4, 8, 16, 32, 64, 128, 256, 512] (or set model.head_dim to decouple head size from width)"
    ]
