"""The drawing engine of the analysis pictures: a figure with no axes whose artists are placed in inches.

matplotlib's cost goes by axes and ticks (each tick is two lines and two texts, built and drawn), by
drawn texts (about 0.4 ms each) and by images (each resampled through Agg's pipeline). So every figure
is one :class:`Canvas`, a ``matplotlib.figure.Figure`` (no pyplot: no global state, no GUI backend,
safe inside a training process) with no axes: panels one :class:`_Panels` artist, frames and tick marks
one line collection, labels one :class:`_Labels` artist. On raster output those two artists blit: each
panel is coloured once and its cells repeated to whole pixels, each label stamped from a bitmap
matplotlib rendered once per distinct label (the same head numbers and probe tokens recur on every tile
and figure); vector output gets real images and texts. The figures themselves are
:mod:`mhaexp.analysis.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

DPI = 90
# zlib level of the PNGs: 3 encodes about 35% faster than PIL's default 6, for files about 10% larger
# (a figure is 15-50 KB either way); encoding was the largest single cost of the pictures.
PNG_COMPRESS_LEVEL = 3


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


class Canvas:
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
