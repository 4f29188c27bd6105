"""The static figures: formats, fixed colour scales across steps, the role timeline."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mhaexp.analysis import plots
from mhaexp.analysis.canvas import DPI, Canvas
from mhaexp.analysis.collect import HeadMetrics
from mhaexp.analysis.roles import HeadRole
from mhaexp.errors import ConfigError


def small_metrics(seed: int = 0) -> HeadMetrics:
    g = torch.Generator().manual_seed(seed)
    metrics = {k: torch.rand(2, 3, generator=g) for k in ("sink", "positional_frac", "importance", "copying")}
    metrics["copying"] = metrics["copying"] * 2 - 1
    hm = HeadMetrics(metrics, [3, 3])
    pats = torch.softmax(torch.randn(3, 6, 6, generator=g), dim=-1)
    hm.example_patterns = [pats, pats]
    hm.example_tokens = ["<bos>", "the", "cat", "sat", "down", "<eos>"]
    return hm


def test_every_format_asked_for_is_written_and_the_png_is_returned(tmp_path: Path) -> None:
    hm = small_metrics()
    roles = [HeadRole(0, 1, "sink", 0.5, 0.2)]
    images = plots.all_figures(hm, roles, tmp_path, max_pictures=1, step=3, formats=["png", "svg", "pdf"])
    assert set(images) == {"role_grid", "heatmaps", "patterns_L00"}
    for key, path in images.items():
        assert path.suffix == ".png", key
        assert Image.open(path).size[0] > 100
        assert path.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
        assert path.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    only_svg = plots.all_figures(hm, roles, tmp_path / "svg", max_pictures=0, formats=["svg"])
    assert {p.suffix for p in only_svg.values()} == {".svg"}
    assert not list((tmp_path / "svg").glob("*.png"))


@pytest.mark.parametrize("bad", [["jpg"], [], "gif", ["png", "eps"]])
def test_an_unknown_figure_format_is_one_clear_error(bad: object) -> None:
    with pytest.raises(ConfigError) as e:
        plots.check_formats(bad)  # type: ignore[arg-type]
    assert "analysis.figure_formats" in str(e.value) and "png, svg, pdf" in str(e.value)
    assert plots.check_formats("svg") == ["svg"] and plots.check_formats(["png", "png", "pdf"]) == ["png", "pdf"]


def test_train_rejects_a_bad_format_before_training(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    args = ["model=tiny", "logger=csv", "data.n_train=200", "trainer.max_steps=2", "analysis.figure_formats=[png,jpg]"]
    proc = cli("mhaexp-train", *args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "mhaexp-train: error: analysis.figure_formats=['png', 'jpg'] is invalid: must be a list of values that each "
        "choose one of ['png', 'svg', 'pdf']"
    ]
    assert not (tmp_path / "runs").exists()  # refused by the preflight: nothing was written


def test_bounded_metrics_have_one_scale_at_every_step_and_unbounded_ones_the_history_range(tmp_path: Path) -> None:
    # Bounded: the same range whatever the values (the W&B step slider compares like with like).
    assert plots.metric_scale("sink", np.array([0.01, 0.02])) == (0.0, 1.0)
    assert plots.metric_scale("sink", np.array([0.5, 0.9])) == (0.0, 1.0)
    assert plots.metric_scale("copying", np.array([0.1])) == (-1.0, 1.0)
    assert plots.metric_scale("js_nearest", np.array([0.1])) == (0.0, math.log(2))
    # Unbounded: the range over every step in head_metrics.csv so far; ablation symmetric around 0.
    rows = [
        {"step": 0, "layer": 0, "head": 0, "metric": "importance", "value": 0.5},
        {"step": 10, "layer": 0, "head": 1, "metric": "importance", "value": 2.0},
        {"step": 10, "layer": 0, "head": -1, "metric": "importance", "value": 99.0},  # not a head: ignored
        {"step": 10, "layer": 0, "head": 0, "metric": "ablation", "value": -0.3},
        {"step": 10, "layer": 0, "head": 1, "metric": "ablation", "value": 0.1},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "head_metrics.csv", index=False)
    seen = plots.history_ranges(tmp_path)
    assert seen == {"importance": (0.5, 2.0), "ablation": (-0.3, 0.1)}
    assert plots.metric_scale("importance", np.array([0.1, 0.7]), seen["importance"]) == (0.0, 2.0)
    assert plots.metric_scale("ablation", np.array([0.2]), seen["ablation"]) == (-0.3, 0.3)


def test_role_timeline_fills_the_family_colour_at_each_step_a_head_held_it(tmp_path: Path) -> None:
    rows = []
    for step in (0, 10, 20, 30):
        rows.append({"step": step, "layer": 0, "head": 0, "role": "sink", "family": "sink", "score": 0.5, "margin": 0})
        induction = step >= 20
        rows.append(
            {
                "step": step,
                "layer": 0,
                "head": 1,
                "role": "induction" if induction else "unassigned",
                "family": "induction" if induction else "unassigned",
                "score": 0.8 if induction else math.nan,
                "margin": 0.3 if induction else math.nan,
            }
        )
    history = pd.DataFrame(rows)
    path = plots.role_timeline(history, [2], tmp_path / "role_timeline.png")
    assert path is not None and path.is_file()
    img = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    colours = {tuple(int(x) for x in c) for c in img[::7]}

    def present(hex_colour: str) -> bool:
        rgb = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
        return any(max(abs(a - b) for a, b in zip(c, rgb, strict=True)) < 6 for c in colours)

    assert present(plots.FAMILY_COLORS["sink"]) and present(plots.FAMILY_COLORS["induction"])
    assert not present(plots.FAMILY_COLORS["copying"])
    assert plots.role_timeline(history.iloc[:0], [2], tmp_path / "none.png") is None


def _label_figure(tmp_path: Path, name: str, stamped: bool, fmt: str = "png") -> Path:
    """One canvas with labels in every alignment and rotation the figures use, drawn through the stamp
    artist or as matplotlib's own texts."""
    canvas = Canvas(3.0, 2.0)
    specs = [
        (0.5, 0.4, "<bos>", 7, {"ha": "right", "va": "center"}),
        (1.5, 0.4, "fluffy", 6, {"ha": "center", "va": "top", "rotation": 90}),
        (2.5, 0.4, "L0H7", 8, {"ha": "center", "va": "bottom"}),
        (0.5, 1.5, "layer", 6, {"ha": "center", "va": "center", "rotation": 90}),
        (1.5, 1.5, " 2.3", 6, {"va": "bottom"}),
        (2.5, 1.5, "red", 9, {"ha": "left", "va": "top", "color": "red"}),
    ]
    for x, y, s, size, kw in specs:
        if stamped:
            canvas.text(x, y, s, size, **kw)
        else:
            canvas.fig.text(x, y, s, fontsize=size, transform=canvas.inches, **kw)
    return canvas.save(tmp_path / f"{name}.{fmt}", [fmt])


def test_stamped_labels_match_matplotlib_texts_to_the_pixel(tmp_path: Path) -> None:
    real = np.asarray(Image.open(_label_figure(tmp_path, "real", stamped=False)).convert("RGB")).astype(int)
    for attempt in ("first", "cached"):  # the second draw comes from the bitmap cache
        stamped = np.asarray(Image.open(_label_figure(tmp_path, attempt, stamped=True)).convert("RGB")).astype(int)
        ink = (real.min(axis=-1) < 200).sum()
        assert ink > 300  # the labels drew something
        moved = (np.abs(real - stamped).max(axis=-1) > 64).sum()
        # Each stamp sits on the whole pixel nearest the text's exact position: only glyph edges differ.
        assert moved < 0.25 * ink, (attempt, moved, ink)
        shifted = min(
            (np.abs(real - np.roll(stamped, (dy, dx), axis=(0, 1))).max(axis=-1) > 64).sum()
            for dy in (-2, -1, 0, 1, 2)
            for dx in (-2, -1, 0, 1, 2)
        )
        assert moved == shifted  # no offset of a pixel or more: the stamps are where the texts are
    red = stamped[(stamped[..., 0] > 200) & (stamped[..., 1] < 60)]
    assert len(red) > 10  # the colour is part of the stamp


def test_vector_figures_keep_real_texts(tmp_path: Path) -> None:
    svg = _label_figure(tmp_path, "labels", stamped=True, fmt="svg").read_text()
    # matplotlib writes each text as glyph references under a comment naming the string
    for label in ("&lt;bos&gt;", "fluffy", "L0H7", "layer", "red"):
        assert label in svg, label


def test_role_grid_colours_each_cell_by_its_primary_role(tmp_path: Path) -> None:
    roles = [
        HeadRole(0, 0, "sink", 0.5, 0.2),
        HeadRole(1, 1, "induction", 0.8, 0.3),
        HeadRole(1, 1, "copying", 0.7, 0.2),  # second role: the colour stays induction's
        HeadRole(1, 2, "retrieval", 0.3, 0.2),
    ]
    path = plots.role_grid(roles, [3, 2], tmp_path / "grid.png", step=7)
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    Hpx, Wpx, _ = img.shape
    # The grid box of role_grid: 8%..78% of the width, 12%..85% of the height; 2 layers x 3 heads.
    x0, w, y0, h = 0.08 * Wpx, 0.70 * Wpx, 0.12 * Hpx, 0.73 * Hpx

    def cell(layer: int, head: int) -> np.ndarray:
        # a quarter of the way into the cell: clear of its centred labels
        return img[int(y0 + (layer + 0.25) * h / 2), int(x0 + (head + 0.25) * w / 3)]

    def rgb(hex_colour: str) -> np.ndarray:
        return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])

    assert np.abs(cell(0, 0) - rgb(plots.FAMILY_COLORS["sink"])).max() < 6
    assert np.abs(cell(1, 1) - rgb(plots.FAMILY_COLORS["induction"])).max() < 6
    assert np.abs(cell(1, 2) - rgb("#ffffff")).max() < 6  # layer 1 has 2 heads: head 2 is not there
    legend = {tuple(int(v) for v in c) for c in img[:, int(0.79 * Wpx) :].reshape(-1, 3)[::3]}
    for family in ("sink", "induction", "copying"):
        assert any(np.abs(np.array(c) - rgb(plots.FAMILY_COLORS[family])).max() < 6 for c in legend), family


def test_mds_map_places_each_head_at_its_coordinates_in_its_role_colour(tmp_path: Path) -> None:
    hm = HeadMetrics({"sink": torch.zeros(1, 3)}, [3])
    hm.js = torch.tensor([[0.0, 0.4, 0.2], [0.4, 0.0, 0.3], [0.2, 0.3, 0.0]])
    hm.mds = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.2, 0.5]])
    roles = [HeadRole(0, 0, "sink", 0.5, 0.2), HeadRole(0, 1, "induction", 0.8, 0.3)]
    path = plots.mds_map(hm, roles, tmp_path / "mds.png")
    assert path is not None
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape[:2] == (round(plots.MDS_SIZE[1] * DPI), round(plots.MDS_SIZE[0] * DPI))
    x, y, w, h = plots.MDS_PANEL
    span = 2.0 * (1 + 2 * plots.MDS_PAD)  # both coordinates run from -1 to 1, padded on each side

    def at(mx: float, my: float) -> np.ndarray:
        inch_x = x + (mx + 1 + 2 * plots.MDS_PAD) / span * w
        inch_y = y + h - (my + 1 + 2 * plots.MDS_PAD) / span * h  # MDS 2 grows upwards
        return img[int(inch_y * DPI), int(inch_x * DPI)]

    def rgb(hex_colour: str) -> np.ndarray:
        return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])

    assert np.abs(at(-1.0, -1.0) - rgb(plots.FAMILY_COLORS["sink"])).max() < 8
    assert np.abs(at(1.0, 1.0) - rgb(plots.FAMILY_COLORS["induction"])).max() < 8
    assert np.abs(at(0.2, 0.5) - rgb(plots.FAMILY_COLORS["unassigned"])).max() < 8
    assert np.abs(at(-0.4, 0.6) - rgb("#ffffff")).max() < 8  # no head there: the panel is blank


def test_panels_are_blitted_cell_by_cell_in_png_and_embedded_as_images_in_svg(tmp_path: Path) -> None:
    from matplotlib import colormaps

    canvas = Canvas(3.0, 2.0)
    values = np.array([[0.0, 0.5, 1.0], [0.25, np.nan, 0.75]])
    box = (0.5, 0.5, 1.5, 1.0)  # 3 columns of 0.5 in, 2 rows of 0.5 in
    canvas.image(values, box, cmap="viridis", vmin=0.0, vmax=1.0)
    canvas.image(values[:1], (2.2, 0.5, 0.6, 0.2), cmap="magma", vmin=0.0, vmax=1.0)
    png = canvas.save(tmp_path / "panels.png", ["png", "svg"])
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    cmap = colormaps["viridis"]
    for r in range(2):
        for c in range(3):
            px = img[int((0.5 + 0.5 * r + 0.25) * DPI), int((0.5 + 0.5 * c + 0.25) * DPI)]
            want = (255, 255, 255) if math.isnan(values[r, c]) else cmap(values[r, c], bytes=True)[:3]
            assert np.abs(px - np.array(want)).max() <= 1, (r, c, px, want)
    # A cell edge falls on the pixel nearest its exact place: 0.5 in from the left edge at 90 DPI is pixel 45.
    row = img[int(0.75 * DPI)]
    assert np.abs(row[46] - np.array(cmap(0.0, bytes=True)[:3])).max() <= 1
    assert np.abs(row[int(1.0 * DPI) + 1] - np.array(cmap(0.5, bytes=True)[:3])).max() <= 1
    svg = (tmp_path / "panels.svg").read_text()
    assert svg.count("<image") == 2  # each panel embedded at its own resolution, not one raster of the page
