"""The HTML pages in a real browser: headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it).

No skip when Chromium is missing: these tests are how we know the pages work. Screenshots go to the
test's tmp dir; their paths are printed to the terminal (``make test`` shows them).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from mhaexp.analysis import head_view as hv
from mhaexp.analysis.roles import HeadRole

# Module-scoped fixtures: one worker runs the whole module under pytest-xdist (make test).
pytestmark = pytest.mark.xdist_group("test_browser")

LINES = "document.querySelectorAll('svg.hv-lines line.attn').length"


def count_where(pattern: torch.Tensor, query: int | None = None, key: int | None = None) -> int:
    """Lines the page should draw for ``pattern`` ``(H, T, T)``, optionally only those of one query or key."""
    q = hv.quantize(pattern) >= round(hv.THRESHOLD * hv.SCALE)
    if query is not None:
        q = q[:, query, :]
    if key is not None:
        q = q[..., key]
    return int(q.sum())


def test_head_view_draws_one_line_per_weight_above_threshold(
    tmp_path: Path, browser: Any, ink: Any, causal_patterns: Any, show: Any
) -> None:
    T = 256  # a long input: the view scrolls
    pats = causal_patterns(2, 4, T)
    roles = [HeadRole(1, 2, "syntactic:nsubj", 1.0, 0.4)]
    tokens = [f"w{i}" for i in range(T)]
    page = hv.write_head_view(tmp_path / hv.FILE_NAME, hv.view_data(pats, tokens, roles, [2, 4], True, "GQA causal"))
    with browser(1280, 900) as b:
        b.open(page)
        assert b.eval("document.body.dataset.ready") == "1"
        assert b.eval("document.querySelectorAll('#hv-layer option').length") == 2
        assert b.eval("document.querySelectorAll('#hv-heads button.hv-head').length") == 4
        # GQA: layer 0 has 2 KV heads, so the head buttons sit in two labelled groups.
        assert b.eval("[...document.querySelectorAll('.hv-group-label')].map(e => e.textContent)") == [
            "KV head 0",
            "KV head 1",
        ]
        assert b.eval(LINES) == count_where(pats[0]) > 1000
        shot = b.screenshot(tmp_path / "head_view_layer0.png")
        # Head 0 off: its lines go; on again: back.
        b.click('#hv-heads button[data-head="0"]')
        assert b.eval(LINES) == count_where(pats[0][1:])
        b.click('#hv-heads button[data-head="0"]')
        assert b.eval(LINES) == count_where(pats[0])
        # Layer 1: its own lines and labels (roles), all heads on again, no GQA grouping.
        b.eval(
            "(() => { const s = document.getElementById('hv-layer'); s.value = '1';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        assert b.eval(LINES) == count_where(pats[1])
        labels = b.eval("[...document.querySelectorAll('#hv-heads button')].map(e => e.textContent)")
        assert labels[2] == "L1H2 syntactic:nsubj 1.00" and labels[0] == "L1H0 unassigned"
        # Hover a query token far down the scrolled list: only its own lines stay, listed in the info line.
        b.hover('.hv-left .hv-tok[data-pos="200"]')
        assert b.eval(LINES) == count_where(pats[1], query=200) > 0
        assert b.eval("new Set([...document.querySelectorAll('line.attn')].map(l => l.dataset.q)).size") == 1
        assert b.eval("document.getElementById('hv-info').textContent").startswith('"w200" (200) attends to: H')
        # The keys it looks at are shaded in the right column, and nothing else.
        lit = b.eval("[...document.querySelectorAll('.hv-right .hv-tok.lit')].map(e => +e.dataset.pos)")
        keys = hv.quantize(pats[1][:, 200]) >= round(hv.THRESHOLD * hv.SCALE)
        assert sorted(lit) == [int(k) for k in keys.any(axis=0).nonzero()[0]]
        hover_shot = b.screenshot(tmp_path / "head_view_hover.png")
        # Hover a key: the lines into it (causal: only from queries at or after it).
        b.hover('.hv-right .hv-tok[data-pos="10"]')
        assert b.eval(LINES) == count_where(pats[1], key=10) > 0
        assert min(b.eval("[...document.querySelectorAll('line.attn')].map(l => +l.dataset.q)")) >= 10
        assert b.errors == []
    for label, png in (("head view", shot), ("head view, hovering w200", hover_shot)):
        show(label, png)
        assert ink(png) > 0.02, png


def test_bidirectional_head_view_draws_lines_both_ways(tmp_path: Path, browser: Any, ink: Any, show: Any) -> None:
    g = torch.Generator().manual_seed(1)
    pats = [torch.softmax(3 * torch.randn(2, 9, 9, generator=g), dim=-1)]
    page = hv.write_head_view(tmp_path / hv.FILE_NAME, hv.view_data(pats, list("abcdefghi"), [], [2], False, "bi"))
    with browser(900, 600) as b:
        b.open(page)
        assert b.eval(LINES) == count_where(pats[0])
        q_k = b.eval("[...document.querySelectorAll('line.attn')].map(l => [+l.dataset.q, +l.dataset.k])")
        assert any(k > q for q, k in q_k) and any(k < q for q, k in q_k)
        assert "bidirectional" in b.eval("document.querySelector('.hv-meta').textContent")
        shot = b.screenshot(tmp_path / "head_view_bidirectional.png")
        assert b.errors == []
    show("bidirectional head view", shot)
    assert ink(shot) > 0.01


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cli: Callable[..., subprocess.CompletedProcess]) -> dict[str, Any]:
    """A real tiny GQA training run with W&B offline, and mhaexp-analyze on its checkpoint with text=."""
    cwd = tmp_path_factory.mktemp("pages")
    args = [
        "model=tiny",
        "model.n_kv_heads=2",
        "data.n_train=1000",
        "data.n_val=64",
        "analysis.probe_sequences=16",
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
        "analysis.every_n_steps=10",
    ]
    train = cli("mhaexp-train", *args, cwd=cwd)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    [run_dir] = [p.parent for p in cwd.glob("runs/*/*/status.json")]
    text = "the cat that sat on the mat was fluffy"
    analyze = cli(
        "mhaexp-analyze", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={cwd / 'an'}", f"text={text}", cwd=cwd
    )
    assert analyze.returncode == 0, analyze.stdout[-3000:] + analyze.stderr[-3000:]
    return {"cwd": cwd, "run_dir": run_dir, "train": train.stdout, "analyze": analyze.stdout, "text": text}


def test_train_ends_with_the_run_page_which_loads_with_every_link(
    run: dict[str, Any], tmp_path: Path, browser: Any, ink: Any, page_resolves: Any, show: Any
) -> None:
    analysis = run["run_dir"] / "analysis"
    page = analysis / "index.html"
    assert run["train"].rstrip().splitlines()[-1] == f"analysis page : {page}"
    with browser(1280, 900) as b:
        refs = page_resolves(b, page)
        names = {ref for _, ref in refs}
        # The role grid, the heatmaps, the head view (embedded and linked), the tables.
        assert {"role_grid.png", "role_timeline.png", "heatmaps.png", "head_view.html", "head_roles.csv"} <= names
        headings = b.eval("[...document.querySelectorAll('h2')].map(e => e.textContent)")
        assert {"Pictures", "Head view", "Relations", "Tables", "Config"} <= set(headings), headings
        assert "n_kv_heads: 2" in b.eval("document.querySelector('pre').textContent")  # the run's config
        relations = b.eval("[...document.querySelectorAll('table tr td:first-child')].map(e => e.textContent)")
        assert "nsubj" in relations
        # The head view inside the page's iframe is the real thing.
        in_frame = b.eval("document.querySelector('iframe').contentDocument.querySelectorAll('line.attn').length")
        shot = b.screenshot(tmp_path / "run_index.png", full_page=True)
        view = analysis / hv.FILE_NAME
        data = json.loads(re.search(r'id="hv-data">(.*?)</script>', view.read_text(), re.S).group(1))
        expected = sum(len(h["links"]) // 3 for h in data["layers"][0]["heads"])
        assert in_frame == expected > 0
        b.open(view)
        assert b.eval(LINES) == expected
        assert [h["kv"] for h in data["layers"][0]["heads"]] == [0, 0, 1, 1]
        assert data["title"] == "head view, step 20"
        view_shot = b.screenshot(tmp_path / "run_head_view.png")
        assert b.errors == []
    for label, png in (("run index.html", shot), ("run head view", view_shot)):
        show(label, png)
        assert ink(png) > 0.02, png


def test_wandb_run_holds_the_head_view_at_every_analysis_step(
    run: dict[str, Any], wandb_run: Callable[[Path], Path], wandb_records: Callable[[Path], list[dict]]
) -> None:
    offline = wandb_run(run["run_dir"])
    views = {}
    for row in (r["history"]["item"] for r in wandb_records(offline) if r.get("type") == "history"):
        if "analysis/head_view._type" in row:
            assert row["analysis/head_view._type"] == "html-file"
            views[int(row["trainer/global_step"])] = offline / "files" / row["analysis/head_view.path"]
    assert sorted(views) == [0, 10, 20], views
    # What W&B stored is the page itself (no wandb stylesheet injected); the last one is the run's.
    assert views[20].read_text() == (run["run_dir"] / "analysis" / hv.FILE_NAME).read_text()
    assert 'id="hv-data"' in views[0].read_text() and "head view, step 0" in views[0].read_text()


def test_analyze_writes_a_head_view_of_the_given_text(
    run: dict[str, Any], tmp_path: Path, browser: Any, ink: Any, page_resolves: Any, show: Any
) -> None:
    out = run["cwd"] / "an"
    assert f"head view: {out / hv.FILE_NAME} (text=)" in run["analyze"]
    view = out / hv.FILE_NAME
    with browser(1100, 700) as b:
        b.open(view)
        tokens = b.eval("[...document.querySelectorAll('.hv-left .hv-tok')].map(e => e.firstChild.textContent)")
        assert tokens == ["<bos>", *run["text"].split(), "<eos>"]
        assert b.eval(LINES) > 0
        page_resolves(b, out / "index.html")
        shot = b.screenshot(tmp_path / "analyze_head_view.png")
    show("mhaexp-analyze text= head view", shot)
    assert ink(shot) > 0.02
