"""Shared test plumbing: real configs composed by Hydra, the real CLIs as subprocesses, one tiny run,
and what an offline W&B run holds (read back with the real ``wandb leet inspect --json``)."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

BIN = Path(sys.executable).parent

# Under pytest-xdist (make test runs two workers on two cores) each worker, and every run it starts, gets
# its share of the cores: two torch thread pools as wide as the machine would oversubscribe it, and
# oversubscribed OpenMP pools spin, slowing a run several times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

# The one small-run override list: a 2-layer d=32 model on a few hundred grammar sentences, a few dozen
# steps, validating often, no analysis. Tests append what they need (later overrides win in Hydra).
TINY_RUN = (
    "model=tiny",
    "data.n_train=640",
    "data.n_val=64",
    "analysis.probe_sequences=16",
    "trainer.max_steps=30",
    "trainer.val_check_interval=10",
    "trainer.log_every_n_steps=5",
    "analysis=off",
)


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    """A copy of :data:`TINY_RUN` to extend."""
    return list(TINY_RUN)


@pytest.fixture
def compose() -> Iterator[Callable[[list[str]], DictConfig]]:
    """``compose(overrides)``: the job config ``mhaexp-train`` would build, from the real ``conf/``."""
    from mhaexp.cli.preflight import compose_job, hydra_context

    with hydra_context():
        yield lambda overrides=(): compose_job(list(overrides))


def cli_env(cwd: Path, **extra: str) -> dict[str, str]:
    """W&B offline and a data cache private to the test."""
    return {**os.environ, "WANDB_MODE": "offline", "MHAEXP_CACHE": str(cwd / "cache"), **extra}


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess]:
    """``cli("mhaexp-train", *args, cwd=..., env=..., timeout=..., extra_env=...)``: run an entry point for real."""

    def run(
        entry: str,
        *args: str,
        cwd: Path,
        env: dict[str, str] | None = None,
        timeout: int = 300,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / entry), *args],
            cwd=cwd,
            env={**(env if env is not None else cli_env(Path(cwd))), **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def only_offline_run(run_dir: Path) -> Path:
    """The job's one offline W&B run directory."""
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, offline
    return offline[0]


def inspect_records(offline_run: Path) -> list[dict]:
    """Every record of an offline run, one dict per record (``type`` says which kind)."""
    out = subprocess.run(
        [str(BIN / "wandb"), "leet", "inspect", "--json", str(offline_run)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def wandb_run() -> Callable[[Path], Path]:
    """``wandb_run(run_dir)``: the job's one offline W&B run directory."""
    return only_offline_run


@pytest.fixture(scope="session")
def wandb_records() -> Callable[[Path], list[dict]]:
    """``wandb_records(offline_run)``: every record the offline run holds."""
    return inspect_records


# ---- headless Chromium over the DevTools protocol on a pipe (--remote-debugging-pipe): no port,
# no websocket library, no download. Open a page, evaluate JS, hover, screenshot, read console errors.

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--allow-file-access-from-files",
    "--remote-debugging-pipe",
]


class Browser:
    """One Chromium process and one page. ``errors``: console errors and uncaught exceptions seen so far."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="mhaexp-chromium-")
        cmd_r, cmd_w = os.pipe()  # we write commands, Chromium reads fd 3
        out_r, out_w = os.pipe()  # Chromium writes fd 4, we read

        def child_fds() -> None:
            # Copies first: a pipe end may itself be fd 3 or 4 (and dup2 onto itself keeps close-on-exec).
            a, b = os.dup(cmd_r), os.dup(out_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # close_fds would run after preexec_fn and close fds 3 and 4 again.
            close_fds=False,
            preexec_fn=child_fds,
        )
        os.close(cmd_r)
        os.close(out_w)
        self._w, self._r = cmd_w, out_r
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    # -------------------------------------------------------------- protocol --
    def _send(self, msg: dict[str, Any]) -> None:
        os.write(self._w, json.dumps(msg).encode() + b"\0")

    def _recv(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(raw)
        self._note(msg)
        return msg

    def _note(self, msg: dict[str, Any]) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.errors.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and p.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            self.errors.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
        if method:
            self.events.append(msg)

    def _call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._send(msg)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._recv(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call(method, params, self.session)

    # ------------------------------------------------------------------ page --
    def open(self, path: Path) -> None:
        """Navigate to a local file and wait for its load event."""
        self.events.clear()
        self.call("Page.navigate", {"url": Path(path).resolve().as_uri()})
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self._recv(deadline)
        self.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    def eval(self, expression: str) -> Any:
        """The JSON value of ``expression`` (promises awaited); raises on a JS exception."""
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(
                r["exceptionDetails"].get("exception", {}).get("description", str(r["exceptionDetails"]))
            )
        return r["result"].get("value")

    def hover(self, selector: str) -> None:
        """Move the real mouse onto the centre of the first element matching ``selector``."""
        box = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": box[0], "y": box[1]})

    def click(self, selector: str) -> None:
        self.eval(f"document.querySelector({json.dumps(selector)}).click()")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", params)["data"]))
        return path

    def close(self) -> None:
        try:
            self._call("Browser.close")
        except Exception:  # noqa: BLE001 - it may close the pipe before it answers
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ink_fraction(png: Path, background: tuple[int, int, int] = (255, 255, 255)) -> float:
    """Share of pixels that differ from the background colour by more than a little (0 = blank)."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    return float((np.abs(img - np.array(background)).sum(axis=-1) > 30).mean())


@pytest.fixture(scope="session")
def browser() -> type[Browser]:
    """``with browser(width, height) as b:`` one headless Chromium page."""
    return Browser


@pytest.fixture(scope="session")
def ink() -> Callable[..., float]:
    """``ink(png)``: the share of a screenshot's pixels that are not background."""
    return ink_fraction


class Refs(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [(tag, v) for k, v in attrs if k in ("src", "href") and v]


def _page_resolves(b: Any, page: Path) -> list[tuple[str, str]]:
    """Open ``page``: no console errors, every image decoded, every src/href a file beside it."""
    b.open(page)
    parser = Refs()
    parser.feed(page.read_text())
    assert parser.refs, page
    for tag, ref in parser.refs:
        assert not re.match(r"[a-z]+:", ref), f"{page.name}: {tag} points outside the folder: {ref}"
        assert (page.parent / ref).is_file(), f"{page.name}: {tag} {ref} does not exist"
    broken = b.eval("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    assert broken == [], broken
    assert b.errors == [], b.errors
    return parser.refs


@pytest.fixture(scope="session")
def page_resolves() -> Callable[..., list[tuple[str, str]]]:
    """``page_resolves(b, page)``: open ``page`` in browser ``b``; every image decodes and every link exists."""
    return _page_resolves


@pytest.fixture
def show(capsys: pytest.CaptureFixture[str]) -> Callable[[str, Path], None]:
    """``show(label, png)``: print a screenshot's path into the test output, past pytest's capture."""

    def _show(label: str, path: Path) -> None:
        with capsys.disabled():
            print(f"\n  screenshot ({label}): {path}")

    return _show


def _causal_patterns(n_layers: int, n_heads: int, n_tokens: int, seed: int = 0) -> list:
    import torch  # here only: most tests that use conftest never need it

    """Row-stochastic, lower-triangular patterns (a causal model's), peaked enough to threshold."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n_tokens, n_tokens, dtype=torch.bool).tril()
    out = []
    for _ in range(n_layers):
        logits = 3 * torch.randn(n_heads, n_tokens, n_tokens, generator=g)
        out.append(torch.softmax(logits.masked_fill(~mask, -math.inf), dim=-1))
    return out


@pytest.fixture(scope="session")
def causal_patterns() -> Callable[..., list]:
    """``causal_patterns(n_layers, n_heads, n_tokens, seed=0)``: hand-built causal attention patterns."""
    return _causal_patterns
