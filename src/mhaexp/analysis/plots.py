"""Static pictures of a :class:`~mhaexp.analysis.collect.HeadMetrics`: heatmaps, attention patterns,
the role grid, the role timeline and the MDS map of heads.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot): no global state, no GUI backend,
safe inside a training process. Each function writes its figure once per format of
``analysis.figure_formats`` (png, svg, pdf) and returns the PNG's path (else the first format's).
Every colour has a colour bar (name and units) or a legend; every layer x head map has layer and
head ticks (labelled on the outer maps of a grid of them, whose ticks line up); each heatmap metric has
one colour scale at every step (:attr:`mhaexp.analysis.registry.Metric.scale`).

Cost: the pictures are the end-of-run analysis's largest part, and matplotlib's cost goes by axes and
ticks (each tick is two lines and two texts, built and drawn), by drawn texts (about 0.4 ms each) and by
images (each resampled through Agg's pipeline). So every figure is one :class:`_Canvas`, a figure with no
axes whose artists are placed in inches: panels one :class:`_Panels` artist, frames and tick marks one
line collection, labels one :class:`_Labels` artist. On raster output those two artists blit: each panel
is coloured once and its cells repeated to whole pixels, each label stamped from a bitmap matplotlib
rendered once per distinct label (the same head numbers and probe tokens recur on every tile and
figure); vector output gets real images and texts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.colors import ListedColormap, to_rgba
from matplotlib.figure import Figure
from torch import Tensor

from mhaexp.analysis.collect import HeadMetrics
from mhaexp.analysis.config import FIGURE_FORMATS
from mhaexp.analysis.registry import family_colours, heatmap_metrics
from mhaexp.analysis.roles import ROLE_FAMILIES, HeadRole
from mhaexp.rundir import HEAD_METRICS_FILE, HEAD_ROLES_HISTORY_FILE

DPI = 90
# zlib level of the PNGs: 3 encodes about 35% faster than PIL's default 6, for files about 10% larger
# (a figure is 15-50 KB either way); encoding was the largest single cost of the pictures.
PNG_COMPRESS_LEVEL = 3
# One colour per role family (from the role registry); "unassigned" is light grey.
FAMILY_COLORS: dict[str, str] = family_colours()


def check_formats(formats: str | Sequence[str] | None) -> list[str]:
    """``analysis.figure_formats`` as a list; ConfigError naming the valid ones for anything else."""
    from mhaexp.errors import ConfigError

    items = [formats] if isinstance(formats, str) else list(formats or [])
    bad = [f for f in items if f not in FIGURE_FORMATS]
    if not items or bad:
        raise ConfigError("analysis.figure_formats", items, f"a non-empty list of {', '.join(FIGURE_FORMATS)}")
    return list(dict.fromkeys(items))


def _save(fig: Figure, path: Path, formats: Sequence[str] = ("png",)) -> Path:
    """``path`` in each of ``formats`` (its suffix replaced); returns the PNG if asked for, else the first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        # No bbox_inches="tight" and no constrained layout: each costs a full extra draw, and drawing is
        # what makes pictures the slowest part of an analysis step.
        target = path.with_suffix(f".{fmt}")
        extra = {"pil_kwargs": {"compress_level": PNG_COMPRESS_LEVEL}} if fmt == "png" else {}
        fig.savefig(target, dpi=DPI, format=fmt, **extra)
        written.append(target)
    return next((w for w in written if w.suffix == ".png"), written[0])


FONT_IN = 1 / 72  # one point in inches
TICK_IN = 2 * FONT_IN  # tick mark length
TICK_PAD_IN = 3 * FONT_IN  # tick mark to its label (an axes' default pad is 3.5 points)


# Rendered labels, by everything that decides their pixels: (text, size, ha, va, rotation, colour, dpi,
# the text rcParams). Bounded: cleared when full.
_STAMPS: dict[tuple, tuple[np.ndarray, int, int]] = {}
_MAX_STAMPS = 4096
_TEXT_RC = (
    "font.family",
    "font.sans-serif",
    "font.weight",
    "font.style",
    "text.hinting",
    "text.hinting_factor",
    "text.antialiased",
    "text.kerning_factor",
)


class _Labels(Artist):
    """Single-line plain labels (``add``), in the coordinates of the artist's transform.

    On an Agg renderer (PNG) each label is stamped from a bitmap that a real matplotlib ``Text`` rendered
    once, with the same font, size, alignment and rotation, into a scratch canvas (cached in
    :data:`_STAMPS`): drawing a text costs layout and one rendering per glyph, and a figure repeats the
    same few dozen labels hundreds of times. The stamp sits on the whole pixel nearest the label's exact
    position, which is at most half a pixel from where ``Text`` would put it. Every other renderer
    (SVG, PDF) draws real ``Text`` objects, as do labels with several lines or mathtext.
    """

    zorder = 3

    def __init__(self) -> None:
        super().__init__()
        self.specs: list[tuple[float, float, str, float, dict[str, Any]]] = []

    def add(self, x: float, y: float, s: str, size: float, **kw: Any) -> None:
        self.specs.append((x, y, s, size, kw))

    def _text(self, x: float, y: float, s: str, size: float, kw: dict[str, Any], transform: Any) -> Any:
        from matplotlib.text import Text

        t = Text(x, y, s, fontsize=size, transform=transform, **kw)
        t.set_figure(self.get_figure(root=True))
        return t

    def draw(self, renderer: Any) -> None:
        if not self.get_visible():
            return
        transform = self.get_transform()
        fast = isinstance(renderer, RendererAgg)
        gc = renderer.new_gc() if fast else None
        for x, y, s, size, kw in self.specs:
            if not fast or "\n" in s or "$" in s:
                self._text(x, y, s, size, kw, transform).draw(renderer)
                continue
            image, dx, dy = self._stamp(s, size, kw, renderer.dpi)
            if image.size:
                px, py = transform.transform((x, y))
                renderer.draw_image(gc, round(px) + dx, round(py) + dy, image)
        if gc is not None:
            gc.restore()
        self.stale = False

    def _stamp(self, s: str, size: float, kw: dict[str, Any], dpi: float) -> tuple[np.ndarray, int, int]:
        """(RGBA pixels, offset of their lower-left corner from the anchor in display pixels, y up)."""

        rc = tuple(str(matplotlib.rcParams[k]) for k in _TEXT_RC)
        key = (s, size, tuple(sorted((k, str(v)) for k, v in kw.items())), dpi, rc)
        hit = _STAMPS.get(key)
        if hit is not None:
            return hit
        out = self._render(s, size, kw, dpi, tight=True)
        if out is None:  # the label reached the tight canvas's edge: render it again with room on every side
            out = self._render(s, size, kw, dpi, tight=False)
        assert out is not None
        if len(_STAMPS) >= _MAX_STAMPS:
            _STAMPS.clear()
        _STAMPS[key] = out
        return out

    def _render(
        self, s: str, size: float, kw: dict[str, Any], dpi: float, tight: bool
    ) -> tuple[np.ndarray, int, int] | None:
        """The label drawn by a real ``Text`` into a scratch canvas, cropped to its ink. ``tight``: a canvas
        about the label's size, anchored where its alignment lets it grow inwards (finding the ink in a
        large canvas cost more than drawing the text); None if the ink touches its edge. Otherwise a square
        canvas it fits in whatever its alignment and rotation, anchored at the centre."""
        from matplotlib.transforms import IdentityTransform

        em = size * dpi / 72
        long_side = int(math.ceil((len(s) + 2) * em)) + 8
        rotation = float(kw.get("rotation", 0) or 0) % 360
        ha, va = kw.get("ha", "left"), kw.get("va", "baseline")
        if tight and rotation in (0.0, 90.0):
            across = int(math.ceil(3 * em)) + 8
            w, h = (long_side, across) if rotation == 0.0 else (across, long_side)
            x = {"left": 4, "right": w - 4}.get(ha, w // 2)
            y = {"top": h - 4, "bottom": 4, "baseline": 4 + int(em * 0.4)}.get(va, h // 2)
            if rotation == 90.0 and va == "baseline":
                y = h // 2
        else:
            tight = False
            w = h = 2 * long_side
            x = y = long_side
        scratch = RendererAgg(w, h, dpi)
        self._text(x, y, s, size, kw, IdentityTransform()).draw(scratch)
        rgba = np.asarray(scratch.buffer_rgba())
        ink = rgba[..., 3] > 0
        rows, cols = ink.any(axis=1), ink.any(axis=0)
        if not rows.any():
            return np.zeros((0, 0, 4), np.uint8), 0, 0
        if tight and (rows[0] or rows[-1] or cols[0] or cols[-1]):
            return None
        r0, r1 = int(rows.argmax()), h - int(rows[::-1].argmax())
        c0, c1 = int(cols.argmax()), w - int(cols[::-1].argmax())
        image = rgba[r0:r1, c0:c1][::-1].copy()  # draw_image takes the bottom row first
        # Plain colour, coverage in alpha: the text's own colour over whatever lies below.
        colour = to_rgba(kw.get("color", matplotlib.rcParams["text.color"]))
        image[..., :3] = np.round(np.array(colour[:3]) * 255).astype(np.uint8)
        # Row 0 of the buffer is the top; display y grows upwards from the bottom.
        return image, c0 - x, (h - r1) - y


class _Panels(Artist):
    """Colour-mapped panels (``add``: values, box in the artist's data coordinates, colormap, limits), drawn
    with nearest-neighbour cells.

    On an Agg renderer (PNG) each panel is coloured once and its cells repeated to whole display pixels,
    then blitted: ``imshow`` would resample every panel through Agg's image pipeline, which cost more than
    all the labels. A cell edge lands on the pixel nearest its exact position, as nearest-neighbour
    resampling puts it. Every other renderer (SVG, PDF) draws each panel as a real ``BboxImage``, so that
    vector output embeds the panel at its own resolution.
    """

    zorder = 1

    def __init__(self) -> None:
        super().__init__()
        self.specs: list[tuple[np.ndarray, tuple[float, float, float, float], Any, float, float]] = []

    def add(
        self, values: np.ndarray, box: tuple[float, float, float, float], cmap: Any, vmin: float, vmax: float
    ) -> None:
        self.specs.append((values, box, cmap, vmin, vmax))

    def draw(self, renderer: Any) -> None:
        if not self.get_visible():
            return
        from matplotlib import colormaps
        from matplotlib.colors import Colormap, Normalize
        from matplotlib.image import BboxImage
        from matplotlib.transforms import Bbox, TransformedBbox

        fast = isinstance(renderer, RendererAgg)
        transform = self.get_transform()
        gc = renderer.new_gc() if fast else None
        for values, (x, y, w, h), cmap, vmin, vmax in self.specs:
            cmap = cmap if isinstance(cmap, Colormap) else colormaps[cmap]
            if not fast:
                place = TransformedBbox(Bbox.from_extents(x, y + h, x + w, y), transform)
                im = BboxImage(place, cmap=cmap, norm=Normalize(vmin, vmax), interpolation="nearest", origin="upper")
                im.set_figure(self.get_figure(root=True))
                im.set_data(values)
                im.draw(renderer)
                continue
            (x0, y0), (x1, y1) = transform.transform([(x, y + h), (x + w, y)])  # display: y grows upwards
            rows, cols = values.shape
            col_px = np.diff(np.round(np.linspace(x0, x1, cols + 1)).astype(int))
            row_px = np.diff(np.round(np.linspace(y0, y1, rows + 1)).astype(int))
            rgba = cmap(Normalize(vmin, vmax)(values[::-1]), bytes=True)  # draw_image takes the bottom row first
            image = np.repeat(np.repeat(rgba, row_px, axis=0), col_px, axis=1)
            if image.size:
                renderer.draw_image(gc, int(round(x0)), int(round(y0)), np.ascontiguousarray(image))
        if gc is not None:
            gc.restore()
        self.stale = False


class _Canvas:
    """A figure ``width`` x ``height`` inches whose artists are placed in inches from its top-left corner
    (:attr:`inches`), with no axes (building one, with its ticks and spines, cost more than drawing most
    figures): panels are one :class:`_Panels`, labels one :class:`_Labels`, frames and tick marks one line
    collection, markers path collections."""

    def __init__(self, width: float, height: float) -> None:
        from matplotlib.transforms import Affine2D

        self.width, self.height = width, height
        self.fig = Figure(figsize=(width, height))
        self.inches = Affine2D().scale(1, -1).translate(0, height) + self.fig.dpi_scale_trans
        self.segments: list[tuple[tuple[float, float], tuple[float, float]]] = []
        self.lines: list[tuple[list[Any], str, float]] = []  # (segments, colour, width): lines between cells
        self.swatches: list[tuple[tuple[float, float, float, float], str]] = []  # legend patches
        self.labels = _Labels()
        self.panels = _Panels()
        for artist in (self.panels, self.labels):
            artist.set_transform(self.inches)
            self.fig.add_artist(artist)

    def scatter(
        self, x: np.ndarray, y: np.ndarray, colours: Sequence[str], marker: str, size: float, **kw: Any
    ) -> None:
        """Markers of ``size`` points^2 centred on (``x``, ``y``) inches, as ``Axes.scatter`` draws them."""
        from matplotlib.collections import PathCollection
        from matplotlib.markers import MarkerStyle
        from matplotlib.transforms import IdentityTransform

        style = MarkerStyle(marker)
        path = style.get_path().transformed(style.get_transform())
        markers = PathCollection(
            [path],
            sizes=[size],
            offsets=np.column_stack([x, y]),
            offset_transform=self.inches,
            facecolors=colours,
            **kw,
        )
        markers.set_transform(IdentityTransform())
        markers.set_zorder(2.5)
        self.fig.add_artist(markers)

    def image(
        self, values: np.ndarray, box: tuple[float, float, float, float], cmap: Any, vmin: float, vmax: float
    ) -> None:
        """``values`` (rows, cols) filling ``box`` = (x, y, w, h), row 0 at the top, with a frame; NaN and
        masked cells are left blank."""
        self.panels.add(np.ma.masked_invalid(values), box, cmap, vmin, vmax)
        self.frame(box)

    def frame(self, box: tuple[float, float, float, float]) -> None:
        x, y, w, h = box
        self.segments += [((x, y), (x + w, y)), ((x + w, y), (x + w, y + h)), ((x, y + h), (x + w, y + h))]
        self.segments.append(((x, y), (x, y + h)))

    def text(self, x: float, y: float, s: str, size: float, **kw: Any) -> None:
        self.labels.add(x, y, s, size, **kw)

    def lines_text(self, x: float, y: float, lines: Sequence[str], size: float) -> None:
        """``lines`` stacked and centred on (x, y), one label each (a stamp per line, not one text)."""
        pitch = 1.2 * size * FONT_IN
        top = y - pitch * (len(lines) - 1) / 2
        for k, line in enumerate(lines):
            self.text(x, top + k * pitch, line, size, ha="center", va="center")

    def legend(self, x: float, y: float, entries: Sequence[tuple[str, str]], size: float) -> None:
        """A column of (colour swatch, label) entries, the first at the top-left corner (x, y)."""
        pitch = 1.6 * size * FONT_IN
        for k, (colour, label) in enumerate(entries):
            cy = y + (k + 0.5) * pitch
            self.swatches.append(((x, cy - 0.35 * size * FONT_IN, 2.0 * size * FONT_IN, 0.7 * size * FONT_IN), colour))
            self.text(x + 2.8 * size * FONT_IN, cy, label, size, ha="left", va="center")

    def ticks(
        self,
        box: tuple[float, float, float, float],
        side: str,
        fracs: Sequence[float],
        labels: Sequence[str] | None,
        size: float,
        rotation: float = 0,
    ) -> None:
        """Tick marks on one ``side`` of ``box`` ("bottom", "left" or "right") at ``fracs`` of its length
        (0 = left or bottom end) and their labels (None: marks only)."""
        x, y, w, h = box
        for k, f in enumerate(fracs):
            label = None if labels is None else labels[k]
            if side == "bottom":
                cx = x + f * w
                self.segments.append(((cx, y + h), (cx, y + h + TICK_IN)))
                if label is not None:
                    self.text(cx, y + h + TICK_IN + TICK_PAD_IN, label, size, ha="center", va="top", rotation=rotation)
            else:
                cy, edge, out = y + h - f * h, (x if side == "left" else x + w), (-1 if side == "left" else 1)
                self.segments.append(((edge, cy), (edge + out * TICK_IN, cy)))
                if label is not None:
                    ha = "right" if side == "left" else "left"
                    self.text(edge + out * (TICK_IN + TICK_PAD_IN), cy, label, size, ha=ha, va="center")

    def cell_ticks(
        self,
        box: tuple[float, float, float, float],
        side: str,
        n: int,
        labels: Sequence[str] | None,
        size: float,
        at: Sequence[int] | None = None,
        rotation: float = 0,
    ) -> None:
        """Ticks at the centres of cells ``at`` (default: all ``n``) of ``box``, counted from the left
        ("bottom") or from the top ("left", "right": row 0 is the top row)."""
        cells = range(n) if at is None else at
        fracs = [(i + 0.5) / n if side == "bottom" else 1 - (i + 0.5) / n for i in cells]
        self.ticks(box, side, fracs, labels, size, rotation)

    def cell_grid(
        self, box: tuple[float, float, float, float], rows: int, cols: int, colour: str = "#dddddd", width: float = 0.4
    ) -> None:
        """Lines between the cells of ``box`` (by default light ones: the minor-tick grid of an axes)."""
        x, y, w, h = box
        segments = [((x + i * w / cols, y), (x + i * w / cols, y + h)) for i in range(1, cols)]
        segments += [((x, y + j * h / rows), (x + w, y + j * h / rows)) for j in range(1, rows)]
        self.lines.append((segments, colour, width))

    def colorbar(
        self,
        box: tuple[float, float, float, float],
        cmap: Any,
        lo: float,
        hi: float,
        ticks: Sequence[float],
        label: str,
        size: float,
        fmt: str = "{:.3g}",
    ) -> None:
        """A colour bar filling ``box``: horizontal (ticks and label below) when wider than tall, else
        vertical (ticks and label on the right)."""
        x, y, w, h = box
        ramp = np.linspace(lo, hi, 256)
        horizontal = w >= h
        values = ramp[None, :] if horizontal else ramp[::-1, None]
        self.image(values, box, cmap=cmap, vmin=lo, vmax=hi)
        span = (hi - lo) or 1.0
        fracs = [(t - lo) / span for t in ticks]
        self.ticks(box, "bottom" if horizontal else "right", fracs, [fmt.format(t) for t in ticks], size)
        if horizontal:
            below = y + h + TICK_IN + TICK_PAD_IN + 3 * FONT_IN + size * 1.2 * FONT_IN
            self.text(x + w / 2, below, label, size, ha="center", va="top")
        else:
            widest = max((len(fmt.format(t)) for t in ticks), default=1)
            lx = x + w + TICK_IN + TICK_PAD_IN + 3 * FONT_IN + 0.62 * size * FONT_IN * widest
            self.text(lx, y + h / 2, label, size, ha="left", va="center", rotation=90)

    def save(self, path: Path, formats: Sequence[str]) -> Path:
        from matplotlib.collections import LineCollection

        for segments, colour, width in [*self.lines, (self.segments, "black", 0.8)]:
            self.fig.add_artist(
                LineCollection(segments, colors=colour, linewidths=width, transform=self.inches, zorder=2)
            )
        if self.swatches:
            from matplotlib.collections import PolyCollection

            boxes, colours = zip(*self.swatches, strict=True)
            polys = [[(x, y), (x + w, y), (x + w, y + h), (x, y + h)] for x, y, w, h in boxes]
            self.fig.add_artist(PolyCollection(polys, facecolors=colours, edgecolors="none", transform=self.inches))
        return _save(self.fig, path, formats)


def _grid(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def metric_scale(name: str, values: np.ndarray, seen: tuple[float, float] | None = None) -> tuple[float, float]:
    """The colour range of metric ``name``: fixed where the metric is bounded, else the range of ``seen``
    (all steps so far) widened by ``values``; symmetric around 0 for signed metrics."""
    entry = next((m for m in heatmap_metrics() if m.name == name), None)
    lo, hi = entry.scale if entry is not None and entry.scale is not None else (None, None)
    finite = values[np.isfinite(values)]
    pool = np.concatenate([finite, np.asarray(seen if seen else [], dtype=float)])
    if lo is None:
        lo = float(pool.min()) if pool.size else 0.0
    if hi is None:
        hi = float(pool.max()) if pool.size else 1.0
    if entry is not None and entry.diverging:
        m = max(abs(lo), abs(hi), 1e-12)
        lo, hi = -m, m
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _heatmap_figure(
    maps: Sequence[tuple[str, np.ndarray, tuple[float, float], str, bool]],
    cols: int,
    title: str,
    shared_bar: bool = False,
) -> _Canvas:
    """One layer x head heatmap per entry ``(title, values (L, H), (vmin, vmax), colour-bar label,
    diverging)`` with layer/head ticks, and a colour bar each under it (``shared_bar``: one for all on the
    right, when every entry is the same metric on the same scale); NaN cells (heads a pruned layer lacks)
    blank."""
    rows, cols = _grid(len(maps), cols)
    L, H = maps[0][1].shape[:2]
    cell = 0.2
    img_w, img_h = H * cell, L * cell
    title_h = 0.13 * max(m[0].count("\n") + 1 for m in maps) + 0.06
    left = 0.42  # layer ticks and the "layer" label
    bar_w = max(img_w, 1.3)
    tile_w = left + max(img_w, bar_w, 1.7) + 0.25
    below = 0.3 + (0 if shared_bar else 0.42)  # head ticks and label; the colour bar, its ticks and label
    tile_h = title_h + img_h + below + 0.12
    width, height = cols * tile_w + 0.2 + (1.1 if shared_bar else 0.0), rows * tile_h + 0.4
    canvas = _Canvas(width, height)
    seq = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    div = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")
    for i, (name, values, (lo, hi), label, diverging) in enumerate(maps):
        r, c = divmod(i, cols)
        x0, y0 = 0.1 + c * tile_w, 0.4 + r * tile_h
        box = (x0 + left, y0 + title_h, img_w, img_h)
        cmap = div if diverging else seq
        canvas.image(values, box, cmap=cmap, vmin=lo, vmax=hi)
        canvas.text(box[0] + img_w / 2, y0 + title_h - 0.04, name, 8, ha="center", va="bottom")
        # Every map has its tick marks; the labels sit on the outer maps of the grid (matplotlib's
        # label_outer), whose ticks are aligned with every other map's: each label is a drawn text.
        outer_x, outer_y = i + cols >= len(maps), c == 0
        canvas.cell_ticks(box, "bottom", H, [str(h) for h in range(H)] if outer_x else None, 6)
        canvas.cell_ticks(box, "left", L, [str(layer) for layer in range(L)] if outer_y else None, 6)
        bottom = box[1] + img_h
        if outer_x:
            canvas.text(box[0] + img_w / 2, bottom + 0.15, "head", 6, ha="center", va="top")
        if outer_y:
            canvas.text(x0 + 0.1, box[1] + img_h / 2, "layer", 6, ha="center", va="center", rotation=90)
        if not shared_bar:
            bar = (box[0], bottom + 0.31, bar_w, 0.07)
            canvas.colorbar(bar, cmap, lo, hi, [lo, (lo + hi) / 2, hi], label, 6)
    if shared_bar and maps:
        lo, hi = maps[0][2]
        cmap = div if maps[0][4] else seq
        ticks = list(np.linspace(lo, hi, 9))
        canvas.colorbar((width - 1.0, 0.2 * height, 0.12, 0.6 * height), cmap, lo, hi, ticks, maps[0][3], 7, "{:.2f}")
    canvas.text(width / 2, 0.12, title, 9, ha="center", va="top")
    return canvas


def history_ranges(out_dir: Path | None) -> dict[str, tuple[float, float]]:
    """(min, max) per metric over every step in ``out_dir/head_metrics.csv`` (per-head rows only)."""
    path = None if out_dir is None else out_dir / HEAD_METRICS_FILE
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return {}
    import pandas as pd

    table = pd.read_csv(path, usecols=["head", "metric", "value"])
    table = table[(table["head"] >= 0) & table["metric"].isin([m.name for m in heatmap_metrics()])].dropna()
    g = table.groupby("metric")["value"]
    lo, hi = g.min(), g.max()
    return {m: (float(lo[m]), float(hi[m])) for m in lo.index}


def heatmap_panels(
    hm: HeadMetrics, seen: dict[str, tuple[float, float]] | None = None
) -> list[tuple[str, np.ndarray, tuple[float, float], str, bool]]:
    """The panels of :func:`metric_heatmaps`: ``(name, values (L, H), colour range, colour-bar label,
    diverging)`` for each metric with a scale in the registry (:func:`mhaexp.analysis.registry.heatmap_metrics`,
    in its order) that ``hm`` holds; ``seen``: the ranges so far of the unbounded ones."""
    seen = seen or {}
    panels = []
    for m in (m for m in heatmap_metrics() if m.name in hm.metrics):
        v = hm.metrics[m.name].numpy().astype(float)
        panels.append((m.name, v, metric_scale(m.name, v, seen.get(m.name)), m.units or m.name, m.diverging))
    return panels


def metric_heatmaps(
    hm: HeadMetrics, path: Path, cols: int = 5, formats: Sequence[str] = ("png",), out_dir: Path | None = None
) -> Path:
    """One layer x head heatmap per metric of :func:`heatmap_panels`, each on its fixed scale (unbounded ones
    on their range over every step in ``out_dir/head_metrics.csv``), its units under the colour bar."""
    return _heatmap_figure(heatmap_panels(hm, history_ranges(out_dir)), cols, "per-head metrics").save(path, formats)


def syntactic_heatmaps(hm: HeadMetrics, path: Path, cols: int = 5, formats: Sequence[str] = ("png",)) -> Path | None:
    """Accuracy minus the baseline a syntactic role must beat, one heatmap per relation that has
    instances, all on one fixed scale [-1, 1] (red: better than the baseline)."""
    if "syntactic_accuracy" not in hm.metrics:
        return None
    acc, base = hm.metrics["syntactic_accuracy"], hm.metrics["syntactic_baseline"]
    present = [r for r in range(acc.shape[-1]) if not bool(torch.isnan(base[r]))]
    if not present:
        return None
    maps = []
    for r in present:
        name = hm.relation_names[r] if r < len(hm.relation_names) else str(r)
        direction = hm.syntactic_direction[r] if r < len(hm.syntactic_direction) else ""
        values = (acc[..., r] - base[r]).numpy().astype(float)
        title = f"{name} {direction}\n(baseline {float(base[r]):.2f})"
        maps.append((title, values, (-1.0, 1.0), "accuracy - baseline", True))
    return _heatmap_figure(maps, cols, "syntactic accuracy minus baseline", shared_bar=True).save(path, formats)


def pattern_grid(
    patterns: Tensor, tokens: Sequence[str], layer: int, path: Path, cols: int = 4, formats: Sequence[str] = ("png",)
) -> Path:
    """A still of one layer: one query x key heatmap per head (rows: queries, columns: keys), token
    labels on the outer tiles at a readable size, one colour bar (attention weight, 0 to 1)."""
    n_heads, T, _ = patterns.shape
    rows, cols = _grid(n_heads, cols)
    labels = list(tokens)[:T]
    # 0.13 in per token fits a 7 pt label; the margins hold the longest label.
    fs = 7 if T <= 64 else 5
    cell, label_in = 0.13, 0.075 * max((len(t) for t in labels), default=1) * fs / 7 + 0.3
    tile = max(1.2, cell * T)
    gap_x, gap_y = 0.15, 0.35
    width = label_in + cols * (tile + gap_x) + 0.8
    height = 0.5 + rows * (tile + gap_y) + label_in
    canvas = _Canvas(width, height)
    cmap = matplotlib.colormaps["Blues"]
    for h in range(n_heads):
        r, c = divmod(h, cols)
        box = (label_in + c * (tile + gap_x), 0.5 + r * (tile + gap_y), tile, tile)
        canvas.image(patterns[h].numpy(), box, cmap=cmap, vmin=0, vmax=1)
        canvas.text(box[0] + tile / 2, box[1] - 0.03, f"L{layer}H{h}", 8, ha="center", va="bottom")
        # Tick marks and labels only on the outer tiles: the tokens are the same on every tile.
        if c == 0:
            canvas.cell_ticks(box, "left", T, labels, fs)
        if h + cols >= n_heads:
            canvas.cell_ticks(box, "bottom", T, labels, fs, rotation=90)
    bar = (width - 0.55, 0.25 * height, 0.12, 0.5 * height)
    canvas.colorbar(bar, cmap, 0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "attention weight", 6, "{:.1f}")
    title = f"layer {layer}: attention on the probe sentence (row = query, column = key)"
    canvas.text(width / 2, 0.12, title, 9, ha="center", va="top")
    return canvas.save(path, formats)


def primary_roles(roles: Sequence[HeadRole]) -> dict[tuple[int, int], list[HeadRole]]:
    """Roles per head in classify_heads' order (the first is the primary one)."""
    out: dict[tuple[int, int], list[HeadRole]] = {}
    for r in roles:
        out.setdefault((r.layer, r.head), []).append(r)
    return out


def short_role(role: str) -> str:
    """Cell label: ``syntactic:nsubj`` -> ``nsubj``, ``positional:-1`` -> ``pos-1``."""
    family, _, detail = role.partition(":")
    if family == "syntactic":
        return detail
    if family == "positional":
        return f"pos{int(detail):+d}" if detail else "pos"
    return {
        "previous_token": "prev",
        "coreference": "coref",
        "induction": "induct",
        "duplicate": "dup",
        "copying": "copy",
        "rare_word": "rare",
        "unassigned": "",
    }.get(family, family)


def role_grid(
    roles: Sequence[HeadRole],
    n_heads: Sequence[int],
    path: Path,
    step: int | None = None,
    formats: Sequence[str] = ("png",),
) -> Path:
    """Layers x heads coloured by each head's primary role (first in ROLE_FAMILIES order), labelled with
    its roles; heads a pruned layer lacks are white."""
    L, H = len(n_heads), max(n_heads)
    families = list(ROLE_FAMILIES)
    cmap = ListedColormap([FAMILY_COLORS[f] for f in families] + ["#ffffff"])
    codes = np.full((L, H), len(families))
    by_head = primary_roles(roles)
    width, height = max(4.0, 0.9 * H + 2.6), max(2.0, 0.75 * L + 1.0)
    canvas = _Canvas(width, height)
    box = (0.08 * width, 0.12 * height, 0.70 * width, 0.73 * height)
    x0, y0, w, h = box
    for (layer, head), held in by_head.items():
        if head < n_heads[layer]:
            codes[layer, head] = families.index(held[0].family)
    canvas.image(codes, box, cmap=cmap, vmin=-0.5, vmax=len(families) + 0.5)
    for (layer, head), held in by_head.items():
        if head >= n_heads[layer]:
            continue
        names = list(
            dict.fromkeys(
                short_role(r.role)
                for r in held
                if r.role != "previous_token" or not any(x.role == "positional:-1" for x in held)
            )
        )
        lines = [n for n in names[:3] if n] + (["…"] if len(names) > 3 else [])
        canvas.lines_text(x0 + (head + 0.5) * w / H, y0 + (layer + 0.5) * h / L, lines, 6)
    canvas.cell_ticks(box, "bottom", H, [str(i) for i in range(H)], 10)
    canvas.cell_ticks(box, "left", L, [str(i) for i in range(L)], 10)
    canvas.text(x0 + w / 2, y0 + h + 0.25, "head", 10, ha="center", va="top")
    canvas.text(x0 - 0.35, y0 + h / 2, "layer", 10, ha="center", va="center", rotation=90)
    canvas.cell_grid(box, L, H, "white", 1.5)
    present = [f for f in families if any(r.family == f for r in roles)]
    canvas.legend(x0 + w + 0.1, y0, [(FAMILY_COLORS[f], f) for f in present], 7)
    title = "head roles" + (f" at step {step}" if step is not None else "")
    canvas.text(x0 + w / 2, y0 - 0.08, title, 9, ha="center", va="bottom")
    return canvas.save(path, formats)


MDS_SIZE = (12.0, 4.8)  # inches
MDS_PANEL = (0.85, 0.45, 4.2, 3.9)  # the scatter's box in the MDS figure: x, y from the top-left, w, h (inches)
MDS_PAD = 0.08  # share of the points' range left free on each side of the scatter


def _nice_ticks(lo: float, hi: float, n: int = 5) -> tuple[list[float], str]:
    """Round tick values inside [lo, hi] (matplotlib's MaxNLocator, as an axes picks them) and the format
    that shows their step's decimals."""
    from matplotlib.ticker import MaxNLocator

    values = [float(v) for v in MaxNLocator(nbins=n).tick_values(lo, hi) if lo <= v <= hi]
    step = values[1] - values[0] if len(values) > 1 else 1.0
    return values, f"{{:.{max(0, -math.floor(math.log10(step)))}f}}"


def _padded(values: np.ndarray, pad: float = MDS_PAD) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    span = (hi - lo) or max(abs(lo), 1.0)
    return lo - pad * span, hi + pad * span


def mds_map(hm: HeadMetrics, roles: Sequence[HeadRole], path: Path, formats: Sequence[str] = ("png",)) -> Path | None:
    """Heads placed by classical MDS over sqrt(JS divergence) (Clark et al. 2019, Fig. 6), coloured by
    primary role, next to the JS matrix itself."""
    if hm.mds is None or hm.js is None:
        return None
    by_head = primary_roles(roles)
    index = hm.head_index
    canvas = _Canvas(*MDS_SIZE)
    # The scatter: data mapped to inches in the panel by hand (no axes of its own, like the JS matrix).
    panel = MDS_PANEL
    px, py, pw, ph = panel
    xy = hm.mds.numpy()
    (x0, x1), (y0, y1) = _padded(xy[:, 0]), _padded(xy[:, 1])
    inch_x = px + (xy[:, 0] - x0) / (x1 - x0) * pw
    inch_y = py + ph - (xy[:, 1] - y0) / (y1 - y0) * ph  # canvas y grows downwards
    canvas.frame(panel)
    for side, (lo, hi) in (("bottom", (x0, x1)), ("left", (y0, y1))):
        values, fmt = _nice_ticks(lo, hi)
        canvas.ticks(panel, side, [(v - lo) / (hi - lo) for v in values], [fmt.format(v) for v in values], 7)
    markers = "os^Dv<>ph*"
    colors = np.array([FAMILY_COLORS[by_head[k][0].family if k in by_head else "unassigned"] for k in index])
    layers = np.array([layer for layer, _ in index])
    for layer in sorted(set(layers.tolist())):
        sel = layers == layer
        canvas.scatter(
            inch_x[sel],
            inch_y[sel],
            list(colors[sel]),
            markers[layer % len(markers)],
            50,
            edgecolors="black",
            linewidths=0.4,
        )
    for k, (layer, h) in enumerate(index):
        canvas.text(float(inch_x[k]), float(inch_y[k]), f" {layer}.{h}", 6, va="bottom")
    present = [f for f in ROLE_FAMILIES if any(r.family == f for r in roles)]
    canvas.legend(px + pw + 0.12, py, [(FAMILY_COLORS[f], f) for f in present], 6)
    title = "MDS of heads (sqrt JS); marker = layer, label = layer.head"
    canvas.text(px + pw / 2, py - 0.05, title, 8, ha="center", va="bottom")
    canvas.text(px + pw / 2, py + ph + 0.22, "MDS 1 (sqrt nats)", 7, ha="center", va="top")
    canvas.text(px - 0.55, py + ph / 2, "MDS 2 (sqrt nats)", 7, ha="center", va="center", rotation=90)
    js = hm.js.numpy()
    # Scaled to this step's largest value (the bar gives the numbers): on the fixed [0, ln 2] an
    # untrained model's heads, all within ~0.01 nats of each other, would be one flat colour.
    hi = float(js.max()) if js.size and float(js.max()) > 0 else 1.0
    box = (7.0, 0.45, 3.9, 3.9)
    canvas.image(js, box, cmap="magma_r", vmin=0, vmax=hi)
    starts = [k for k, (_, h) in enumerate(index) if h == 0]
    names = [f"L{index[k][0]}" for k in starts]
    canvas.cell_ticks(box, "bottom", len(index), names, 7, at=starts)
    canvas.cell_ticks(box, "left", len(index), names, 7, at=starts)
    canvas.text(box[0] + box[2] / 2, box[1] + box[3] + 0.2, "head (by layer)", 7, ha="center", va="top")
    canvas.text(box[0] - 0.35, box[1] + box[3] / 2, "head (by layer)", 7, ha="center", va="center", rotation=90)
    canvas.text(box[0] + box[2] / 2, box[1] - 0.05, "JS divergence between heads", 8, ha="center", va="bottom")
    bar = (box[0] + box[2] + 0.15, box[1], 0.12, box[3])
    canvas.colorbar(bar, "magma_r", 0.0, hi, list(np.linspace(0.0, hi, 6)), "JS divergence (nats)", 7)
    return canvas.save(path, formats)


def role_timeline(history: Any, n_heads: Sequence[int], path: Path, formats: Sequence[str] = ("png",)) -> Path | None:
    """Specialization as it happens: one small panel per head (layers down, heads across), role
    families up its side, analysis steps along the bottom; a cell is filled in the family's colour
    at every step the head held a role of that family. ``history``: ``head_roles_history.csv`` as a
    DataFrame. None with fewer than one step."""
    if history is None or len(history) == 0:
        return None
    held = history[history["family"] != "unassigned"]
    steps = sorted(int(s) for s in history["step"].unique())
    families = [f for f in ROLE_FAMILIES if f != "unassigned" and f in set(held["family"])] or ["broad"]
    L, H = len(n_heads), max(n_heads)
    S, F = len(steps), len(families)
    panel_w, panel_h = max(1.3, 0.08 * S + 0.6), max(0.9, 0.13 * F + 0.5)
    width, height = H * panel_w + 1.6, L * panel_h + 1.0
    canvas = _Canvas(width, height)
    col = {s: i for i, s in enumerate(steps)}
    row = {f: i for i, f in enumerate(families)}
    cmap = ListedColormap(["#ffffff"] + [FAMILY_COLORS[f] for f in families])
    grids = {}
    for r in held.itertuples():
        grid = grids.setdefault((int(r.layer), int(r.head)), np.zeros((F, S)))
        if r.family in row:
            grid[row[r.family], col[int(r.step)]] = row[r.family] + 1
    ticks = sorted({0, S - 1, *range(0, S, max(1, S // 4))})
    img_w, img_h = panel_w - 0.2, panel_h - 0.35
    for layer in range(L):
        for h in range(n_heads[layer]):
            box = (1.2 + h * panel_w, 0.45 + layer * panel_h + 0.2, img_w, img_h)
            grid = grids.get((layer, h), np.zeros((F, S)))
            canvas.image(grid, box, cmap=cmap, vmin=-0.5, vmax=F + 0.5)
            canvas.cell_grid(box, F, S)
            canvas.text(box[0] + img_w / 2, box[1] - 0.03, f"L{layer}H{h}", 7, ha="center", va="bottom")
            canvas.cell_ticks(box, "left", F, families if h == 0 else None, 6)
            labels = [str(steps[t]) for t in ticks] if layer == L - 1 else None
            canvas.cell_ticks(box, "bottom", S, labels, 6, at=ticks)
    canvas.text(width / 2, height - 0.12, "analysis step", 8, ha="center", va="bottom")
    title = "role timeline: the role families each head held at each analysis step"
    canvas.text(width / 2, 0.1, title, 9, ha="center", va="top")
    return canvas.save(path, formats)


def all_figures(
    hm: HeadMetrics,
    roles: Sequence[HeadRole],
    out_dir: Path,
    max_pictures: int,
    step: int | None = None,
    formats: Sequence[str] = ("png",),
) -> dict[str, Path]:
    """Every picture into ``out_dir``, in each of ``formats``; keys name them for W&B
    (``analysis/<key>``), values are the PNGs (else the first format).

    Attention patterns: one picture per layer (a grid of its heads) for the first ``max_pictures``
    layers. The role timeline reads ``head_roles_history.csv`` (this step included).
    """
    history_csv = out_dir / HEAD_ROLES_HISTORY_FILE
    history = None
    if history_csv.is_file() and history_csv.stat().st_size:
        import pandas as pd

        history = pd.read_csv(history_csv)
    out: dict[str, Path | None] = {
        "role_grid": role_grid(roles, hm.n_heads, out_dir / "role_grid.png", step, formats),
        "role_timeline": role_timeline(history, hm.n_heads, out_dir / "role_timeline.png", formats),
        "heatmaps": metric_heatmaps(hm, out_dir / "heatmaps.png", formats=formats, out_dir=out_dir),
        "syntactic": syntactic_heatmaps(hm, out_dir / "syntactic.png", formats=formats),
        "mds": mds_map(hm, roles, out_dir / "mds.png", formats),
    }
    for layer, p in enumerate(hm.example_patterns[: max(0, max_pictures)]):
        name = f"patterns_L{layer:02d}"
        out[name] = pattern_grid(p, hm.example_tokens, layer, out_dir / f"{name}.png", formats=formats)
    return {k: v for k, v in out.items() if v is not None}
