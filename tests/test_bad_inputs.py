"""Inputs that are not what they claim (issue 31), through the real commands: each is one error line naming
the field or file, the bad value and what is valid; exit 2; no traceback; nothing written. And the lines
that misled: W&B's network vs its key, the progress bar, what analysis could not read.

Most cases are refused by the preflight, before any training: one process start each. The cases that need
a checkpoint share one tiny run (trained under a pseudo-terminal, which also shows its progress bar).
"""

from __future__ import annotations

import gzip
import http.server
import json
import os
import pty
import re
import select
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import BIN, TINY_RUN, cli_env

CLI = Callable[..., subprocess.CompletedProcess]


def files_under(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


def refused(result: subprocess.CompletedProcess, prog: str, *fragments: str) -> str:
    """The one error line of a refused command (exit 2, no traceback) holding every fragment."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"{prog}: error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def train_refused(cli: CLI, cwd: Path, args: list[str], *fragments: str) -> str:
    before = files_under(cwd)
    line = refused(cli("mhaexp-train", *args, cwd=cwd), "mhaexp-train", *fragments)
    assert files_under(cwd) == before, files_under(cwd) - before  # no run directory, no half file
    return line


# ---- the corpus files a new user really passes ----------------------------------------------------------


def corpus(tmp: Path, kind: str) -> Path:
    text = "the cat that sat on the mat was fluffy and the dog was not. " * 400
    path = tmp / f"{kind}.txt"
    if kind == "gzip":
        path = tmp / "corpus.txt.gz"
        path.write_bytes(gzip.compress(text.encode()))
    elif kind == "random":
        path = tmp / "random.bin"
        path.write_bytes(bytes(range(1, 256)) * 40 + b"\0" + bytes(range(256)))
    elif kind == "latin1":
        path.write_bytes(text.encode() + "un caf\u00e9 cr\u00e8me".encode("latin-1") + text.encode())
    elif kind == "small":
        path.write_text("a corpus of two short lines\nthat is all\n")
    return path


TEXT = ["data=text", "model=tiny", "analysis=off", "logger=csv"]

# (corpus kind, extra overrides, what the one line must say)
CORPORA = [
    ("gzip", [], ["data.path=", "corpus.txt.gz", "gzip-compressed data", "1f 8b", "gunzip"]),
    ("random", [], ["data.path=", "random.bin", "binary", "NUL byte at offset 10200"]),
    ("latin1", [], ["data.path=", "latin1.txt", "not UTF-8", "byte 0xe9 at offset 24006", "iconv"]),
    (
        "small",
        ["data.seq_len=16", "data.batch_size=8"],
        ["data.path=", "small.txt", "at most 3 training windows of data.seq_len=16", "data.batch_size=8"],
    ),
]


@pytest.mark.parametrize(("kind", "extra", "fragments"), CORPORA, ids=[c[0] for c in CORPORA])
def test_a_corpus_that_is_not_text_or_too_small_is_refused_naming_the_file(
    cli: CLI, tmp_path: Path, kind: str, extra: list[str], fragments: list[str]
) -> None:
    path = corpus(tmp_path, kind)
    train_refused(cli, tmp_path, [*TEXT, f"data.path={path.name}", *extra], *fragments)


# ---- config values that describe a run that cannot happen ------------------------------------------------

# (overrides, what the one line must say)
CONFIGS = [
    (  # Lightning would train bf16-mixed under the 16-mixed name
        ["trainer.precision=16-mixed"],
        ["trainer.precision='16-mixed'", "bf16-mixed", "32-true"],
    ),
    (  # three processes would each print the batch-size error
        ["trainer=ddp", "trainer.devices=3"],
        ["data.batch_size=64", "trainer.devices=3", "divisible by the 3 training processes"],
    ),
    (  # the embedding alone: 2e9 x 32 weights
        ["data=text", "data.path=README.md", "data.tokenizer=bpe", "data.vocab_size=2000000000"],
        ["data.vocab_size=2000000000", "training needs at least 1,024.0 GB", "available (MemAvailable)"],
    ),
    (  # fewer sequences than one batch: 0 steps, "status ok", no checkpoint
        ["data.n_train=10"],
        ["data.n_train=10", "gives 10 training windows", "data.batch_size=64"],
    ),
    (
        ["analysis.tresholds.sink=0.5"],
        ["analysis.tresholds.sink='0.5'", "did you mean analysis.thresholds.sink?"],
    ),
    (
        ["analysis.zzz.sink=0.5"],
        ["analysis.zzz.sink='0.5'", "valid keys of analysis: enabled,", "thresholds"],
    ),
    (
        ["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=0"],
        ["hydra.launcher.n_jobs=0", "a positive count, or -1 for one per CPU core"],
    ),
]


@pytest.mark.parametrize(("args", "fragments"), CONFIGS, ids=[c[0][-1].split("=")[0] for c in CONFIGS])
def test_a_config_that_cannot_run_as_written_is_refused_before_start(
    cli: CLI, tiny: list[str], tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    if "data.path=README.md" in args:
        (tmp_path / "README.md").write_text((Path(__file__).parents[1] / "README.md").read_text())
    train_refused(cli, tmp_path, [*tiny, *args], *fragments)


def test_a_bad_option_value_is_one_line_not_the_usage_block(cli: CLI, tmp_path: Path) -> None:
    r = cli("mhaexp-study", "wu2024", "--steps", "abc", cwd=tmp_path)
    refused(r, "mhaexp-study", "--steps", "invalid int value: 'abc'")
    assert "usage:" not in r.stderr + r.stdout
    assert files_under(tmp_path) == set()


def test_a_cut_off_tokenizer_file_is_refused_before_start(cli: CLI, tiny: list[str], tmp_path: Path) -> None:
    from mhaexp.data.tokenizers import HF_FILE, BPETokenizer, save_tokenizer, train_bpe

    hf = train_bpe(["the cat sat on the mat"] * 50, 300)
    saved = save_tokenizer(BPETokenizer(300, lambda: hf), tmp_path / "tok")
    whole = (saved / HF_FILE).read_bytes()
    (saved / HF_FILE).write_bytes(whole[: len(whole) // 2])  # a copy that was cut off
    text = corpus(tmp_path, "plain")
    text.write_text("the cat sat on the mat. " * 2000)
    train_refused(
        cli,
        tmp_path,
        [*tiny, "data=text", f"data.path={text.name}", "data.tokenizer=tok"],
        "data.tokenizer='tok'",
        "tokenizer.json cannot be read (EOF while parsing",
    )


def test_the_memory_estimate_is_the_models_parameter_count() -> None:
    """The memory check's one formula (ModelConfig.approx_params) against the built model, within 2%."""
    import torch

    from mhaexp.nn.model import ModelConfig, Transformer

    shapes = [
        {},
        {"n_layers": 4, "d_model": 256, "n_heads": 8, "n_kv_heads": 2, "tie_embeddings": False, "vocab_size": 5000},
        {"attn_only": True, "pos": "rope", "d_model": 64, "n_heads": 4, "layer_n_heads": [4, 2]},
    ]
    for shape in shapes:
        cfg = ModelConfig(**shape)
        with torch.device("meta"):
            exact = Transformer(cfg).param_counts()["total"]
        assert 0.98 * exact <= cfg.approx_params() <= exact, (shape, cfg.approx_params(), exact)


# ---- output paths that are files ------------------------------------------------------------------------

# (command, its arguments with OUT for the path of an existing file, what the one line says)
OUTPUTS = [
    ("mhaexp-analyze", ["ckpt=any.ckpt", "out=OUT"], "out='OUT' is invalid: a directory path; OUT is not a directory"),
    ("mhaexp-study", ["wu2024", "--out", "OUT"], "--out='OUT' is invalid: a directory path; OUT is not a directory"),
    ("mhaexp-compare", [".", "--out", "OUT"], "--out='OUT' is invalid: a directory path; OUT is not a directory"),
    ("mhaexp-compare", [".", "--out", "OUT/cmp"], "--out='OUT/cmp' is invalid: a directory path; OUT is not a"),
    (
        "mhaexp-prune",
        ["ckpt=any.ckpt", "heads=L0H0", "out=OUT/a.ckpt"],
        "out='OUT/a.ckpt' is invalid: a file path; OUT",
    ),
]


@pytest.mark.parametrize(("entry", "args", "says"), OUTPUTS, ids=[f"{o[0]}-{o[1][-1]}" for o in OUTPUTS])
def test_an_output_path_that_is_a_file_is_one_line_before_any_work(
    cli: CLI, tmp_path: Path, entry: str, args: list[str], says: str
) -> None:
    (tmp_path / "OUT").write_text("a file the user already has\n")
    r = cli(entry, *args, cwd=tmp_path)
    refused(r, entry, says)
    assert r.stdout == ""  # compare prints no table before refusing
    assert files_under(tmp_path) == {Path("OUT")}


# ---- W&B: the network is not the key ----------------------------------------------------------------------


@pytest.fixture
def rejecting_server() -> Iterator[str]:
    """A local HTTP server that answers every (GraphQL) request as W&B does a bad API key: 401."""

    class Reject(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b'{"errors": [{"message": "user is not logged in"}]}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Reject)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_wandb_unreachable_is_not_blamed_on_the_key(cli: CLI, tmp_path: Path) -> None:
    env = {**cli_env(tmp_path), "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40}
    env.pop("WANDB_MODE")
    line = refused(cli("mhaexp-compare", "--wandb", "team/proj", cwd=tmp_path, env=env), "mhaexp-compare")
    assert "the W&B server http://127.0.0.1:9 cannot be reached (Connection refused)" in line
    assert "credentials" not in line and "API key" not in line


def test_wandb_rejected_key_is_said_to_be_the_key(cli: CLI, tmp_path: Path, rejecting_server: str) -> None:
    env = {**cli_env(tmp_path), "WANDB_BASE_URL": rejecting_server, "WANDB_API_KEY": "x" * 40}
    env.pop("WANDB_MODE")
    line = refused(cli("mhaexp-compare", "--wandb", "team/proj", cwd=tmp_path, env=env, timeout=120), "mhaexp-compare")
    assert f"the W&B server {rejecting_server} did not accept the API key" in line
    assert "wandb login" in line and "cannot be reached" not in line


# ---- one tiny trained run: resume, prune, analyze; its terminal ------------------------------------------


def in_terminal(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """Run a command with stdout and stderr on a pseudo-terminal (as a user's shell would); (exit code, text
    without ANSI escapes)."""
    main, side = pty.openpty()
    env = {**cli_env(cwd), "COLUMNS": "140", "TERM": "xterm"}
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=side, stderr=side)
    os.close(side)
    out = b""
    while True:
        ready, _, _ = select.select([main], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(main, 1 << 16)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    code = proc.wait(timeout=60)
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode("utf-8", "replace"))


def once_per_session(factory: pytest.TempPathFactory, worker_id: str, name: str, make: Callable[[Path], None]) -> Path:
    """A directory ``make`` fills once per test session, shared by the xdist workers (whichever asks first
    builds it; the others wait on the lock and reuse it)."""
    from filelock import FileLock

    base = factory.getbasetemp()
    root = (base if worker_id == "master" else base.parent) / name  # the parent: this session's, all workers'
    with FileLock(f"{root}.lock"):
        if not (root / "done").exists():
            root.mkdir(exist_ok=True)
            make(root)
            (root / "done").touch()
    return root


def train_in_terminal(root: Path) -> None:
    code, shown = in_terminal(
        [str(BIN / "mhaexp-train"), *TINY_RUN, "logger=wandb", f"hydra.run.dir={root / 'run'}"], root
    )
    assert code == 0, shown[-3000:]
    (root / "terminal.txt").write_text(shown)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> tuple[Path, str]:
    """(the run's last checkpoint, what its terminal showed): 30 steps of 10 batches each epoch, W&B offline."""
    root = once_per_session(tmp_path_factory, worker_id, "bad_inputs_trained", train_in_terminal)
    return root / "run" / "checkpoints" / "last.ckpt", (root / "terminal.txt").read_text()


# Together on one worker where it can be (the run is shared across workers in any case).
pytestmark_trained = pytest.mark.xdist_group("test_bad_inputs_trained")


@pytestmark_trained
def test_progress_bar_counts_steps_to_max_steps_across_epochs(trained: tuple[Path, str]) -> None:
    _, shown = trained
    steps = [int(done) for done, total in re.findall(r"Steps +[━╺╸ ]+ (\d+)/(\d+)", shown) if total == "30"]
    assert steps and steps[-1] == 30, shown[-2000:]
    assert steps == sorted(steps)  # one bar: epochs (every 10 steps) do not restart it
    assert "Epoch" not in shown and "/-2" not in shown


@pytestmark_trained
def test_a_run_prints_no_wandb_warning_nobody_can_act_on(trained: tuple[Path, str]) -> None:
    _, shown = trained
    assert "anonymous" not in shown and "wandb: WARNING" not in shown, shown[-2000:]


@pytestmark_trained
def test_resume_from_a_checkpoint_of_another_shape_names_the_fields(
    cli: CLI, tiny: list[str], tmp_path: Path, trained: tuple[Path, str]
) -> None:
    ckpt, _ = trained
    train_refused(
        cli,
        tmp_path,
        [*tiny, "model.n_heads=8", "model.d_ff=128", f"resume={ckpt}"],
        f"resume='{ckpt}'",
        "model.n_heads 8 vs 4",
        "model.d_ff 128 vs 64",
        "init_from=",
    )


@pytestmark_trained
def test_resume_auto_finding_a_checkpoint_of_another_shape_is_one_line(
    cli: CLI, tiny: list[str], tmp_path: Path, trained: tuple[Path, str]
) -> None:
    ckpt, _ = trained
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes())
    r = cli("mhaexp-train", *tiny, "model.n_heads=2", "resume=auto", f"hydra.run.dir={run}", cwd=tmp_path)
    line = refused(r, "mhaexp-train", "resume=", "model.n_heads 2 vs 4", "init_from=")
    assert "size mismatch" not in line
    assert not (run / "summary.json").exists()


@pytestmark_trained
def test_prune_refuses_to_empty_a_layer(cli: CLI, tmp_path: Path, trained: tuple[Path, str]) -> None:
    ckpt, _ = trained
    r = cli("mhaexp-prune", f"ckpt={ckpt}", "heads=L1H0,L1H1,L1H2,L1H3,L0H2", "out=small.ckpt", cwd=tmp_path)
    refused(r, "mhaexp-prune", "heads='L0H2,L1H0,L1H1,L1H2,L1H3'", "removes all 4 heads of layer 1")
    assert files_under(tmp_path) == set()


def conllu(sentences: list[tuple[list[str], list[int], list[str]]]) -> str:
    return "".join(
        "".join(f"{i + 1}\t{w}\t_\t_\t_\t_\t{h}\t{r}\t_\t_\n" for i, (w, h, r) in enumerate(zip(*s, strict=True)))
        + "\n"
        for s in sentences
    )


@pytest.fixture(scope="session")
def analyzed(tmp_path_factory: pytest.TempPathFactory, worker_id: str, trained: tuple[Path, str]) -> dict[str, str]:
    """``mhaexp-analyze`` of the run on a treebank with broken trees, and a head-view text with unknown words:
    its exit code, stdout and stderr."""

    def analyze(root: Path) -> None:
        good = (["the", "cat", "sleeps"], [2, 3, 0], ["det", "nsubj", "root"])
        (root / "trees.conllu").write_text(
            conllu(
                [
                    good,
                    (["the", "dog", "runs"], [2, 9, 0], ["det", "nsubj", "root"]),  # HEAD 9 in a 3-word sentence
                    (["the", "cat", "sleeps"], [2, 3, 2], ["det", "nsubj", "obj"]),  # 2 -> 3 -> 2, no root
                    good,
                    (["a", "dog", "runs"], [2, 7, 0], ["det", "nsubj", "root"]),
                ]
            )
        )
        text = "the zebra that qwerty on the mat was fluffy"
        args = [f"ckpt={trained[0]}", "conllu=trees.conllu", f"text={text}", "out=analysis"]
        r = subprocess.run(
            [str(BIN / "mhaexp-analyze"), *args],
            cwd=root,
            env=cli_env(root),
            capture_output=True,
            text=True,
            timeout=300,
        )
        (root / "result.json").write_text(json.dumps({"code": r.returncode, "stdout": r.stdout, "stderr": r.stderr}))

    root = once_per_session(tmp_path_factory, worker_id, "bad_inputs_analyzed", analyze)
    return json.loads((root / "result.json").read_text())


@pytestmark_trained
def test_treebank_sentences_that_are_not_trees_are_skipped_and_counted(analyzed: dict[str, str]) -> None:
    assert analyzed["code"] == 0, analyzed["stderr"][-3000:]
    [line] = [x for x in analyzed["stdout"].splitlines() if x.startswith("treebank:")]
    assert line.startswith("treebank: 2 of 5 sentences scored")
    assert (
        "skipped 2 with a HEAD outside its sentence; first: line 6: HEAD 9 is not an ID of its sentence (1-3)" in line
    )
    assert "skipped 1 whose heads form a cycle without the root; first: line 9: the heads of words 2 -> 3 -> 2" in line


@pytestmark_trained
def test_analyze_text_says_how_many_words_became_unknown(analyzed: dict[str, str]) -> None:
    assert analyzed["code"] == 0, analyzed["stderr"][-3000:]
    note = "note: text: 2 of 9 words are not in the tokenizer's vocabulary and were read as <unk>: zebra, qwerty"
    assert note in analyzed["stdout"]
