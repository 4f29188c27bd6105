"""The head view's data and page, without a browser (tests/test_browser.py opens them in one)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import torch

from mhaexp.analysis import head_view as hv
from mhaexp.analysis.roles import HeadRole


def embedded(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="hv-data">(.*?)</script>', page, re.S)
    assert m is not None
    return json.loads(m.group(1))


def test_links_are_exactly_the_weights_at_or_above_the_threshold() -> None:
    p = torch.tensor([[[0.5, 0.5, 0.0], [0.049, 0.051, 0.900], [0.2, 0.3, 0.5]]])  # (1 head, 3, 3)
    data = hv.view_data([p], ["a", "b", "c"], [], [1], causal=False, title="t")
    links = data["layers"][0]["heads"][0]["links"]
    triples = [tuple(links[i : i + 3]) for i in range(0, len(links), 3)]
    # 0.049 -> 49 thousandths, below the 50 of the threshold; 0.051 -> 51, drawn; zeros never.
    assert triples == [(0, 0, 500), (0, 1, 500), (1, 1, 51), (1, 2, 900), (2, 0, 200), (2, 1, 300), (2, 2, 500)]
    assert hv.line_count(p) == 7


def test_labels_carry_roles_and_gqa_groups(causal_patterns: Callable[..., list[torch.Tensor]]) -> None:
    roles = [
        HeadRole(1, 2, "syntactic:nsubj", 1.0, 0.4),
        HeadRole(1, 2, "sink", 0.41, 0.11),
        HeadRole(1, 0, "unassigned", math.nan, math.nan),
    ]
    pats = causal_patterns(2, 4, 5)
    data = hv.view_data(pats, list("abcde"), roles, [4, 2], causal=True, title="t")
    labels = [h["label"] for h in data["layers"][1]["heads"]]
    assert labels == ["L1H0 unassigned", "L1H1 unassigned", "L1H2 syntactic:nsubj 1.00, sink 0.41", "L1H3 unassigned"]
    assert [h["kv"] for h in data["layers"][0]["heads"]] == [0, 1, 2, 3]
    assert [h["kv"] for h in data["layers"][1]["heads"]] == [0, 0, 1, 1]  # h // (n_heads // n_kv_heads)
    assert data["causal"] is True


def test_page_is_self_contained_and_safe_for_any_token(
    tmp_path: Path, causal_patterns: Callable[..., list[torch.Tensor]]
) -> None:
    pats = causal_patterns(1, 2, 3)
    tokens = ["<bos>", "</script><b>x", "&"]
    path = hv.write_head_view(tmp_path / hv.FILE_NAME, hv.view_data(pats, tokens, [], [2], True, "t </title>"))
    page = path.read_text()
    assert not re.search(r"""\b(src|href)\s*=""", page), "no external resource of any kind"
    assert "<link" not in page and "@import" not in page and "fetch(" not in page
    assert page.count("</script>") == 2  # the data block's and the code's: the token did not end either
    assert embedded(page)["tokens"] == tokens
    assert "function draw()" in page  # the JS really is inlined
    assert ".hv-tok" in page  # and the CSS


def test_page_stays_small_at_256_tokens(tmp_path: Path, causal_patterns: Callable[..., list[torch.Tensor]]) -> None:
    pats = causal_patterns(2, 4, 256)
    data = hv.view_data(pats, [f"w{i}" for i in range(256)], [], [4, 4], True, "t")
    path = hv.write_head_view(tmp_path / hv.FILE_NAME, data)
    n_lines = sum(hv.line_count(p) for p in pats)
    assert n_lines == sum(len(h["links"]) // 3 for layer in data["layers"] for h in layer["heads"])
    # An unthresholded float JSON of the same patterns would be ~2 * 4 * 256 * 256 * 20 bytes = 10 MB.
    assert path.stat().st_size < 30 * n_lines + 20_000, (path.stat().st_size, n_lines)
    assert path.stat().st_size < 2_000_000
