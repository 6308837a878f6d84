"""PNG figures for evaluation reports, drawn with Pillow (no plotting library needed).

* :func:`line_plot` — y against x for several named series (e.g. per-chunk PSNR against the
  frame index, with and without memory).
* :func:`line_plots` — several such plots stacked in one PNG (e.g. a rollout's action
  accuracy and footprint PSNR against the chunk index).
* :func:`contact_sheet` — a grid of frames with row and column labels (e.g. first visit vs
  revisit vs ground truth, one row per variant).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .io_utils import atomic_output_file

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # matplotlib tab10: 4 variants x 2 series apart


Series = dict[str, tuple[Sequence[float], Sequence[float]]]


class Panel(NamedTuple):
    """One plot of :func:`line_plots`; ``y_range`` fixes the y axis (default: fitted to the data)."""

    series: Series
    title: str
    xlabel: str
    ylabel: str
    y_range: Optional[tuple[float, float]] = None


def line_plot(series: Series, path: str | os.PathLike, title: str, xlabel: str, ylabel: str,
              size: tuple[int, int] = (640, 400)) -> Path:
    """Save a line plot of ``{name: (xs, ys)}`` as PNG (non-finite points are dropped)."""
    return _save(_line_plot_image(series, title, xlabel, ylabel, size), path)


def line_plots(panels: Sequence[Panel], path: str | os.PathLike, size: tuple[int, int] = (640, 400)) -> Path:
    """Save several line plots (one :class:`Panel` each, ``size`` each) stacked top to bottom in one PNG."""
    if not panels:
        raise ValueError("line_plots needs at least one panel, got none")
    panels = [Panel(*panel) for panel in panels]  # plain tuples are accepted too
    images = [_line_plot_image(p.series, p.title, p.xlabel, p.ylabel, size, p.y_range) for p in panels]
    sheet = Image.new("RGB", (size[0], size[1] * len(images)), "white")
    for index, image in enumerate(images):
        sheet.paste(image, (0, index * size[1]))
    return _save(sheet, path)


def _line_plot_image(series: Series, title: str, xlabel: str, ylabel: str, size: tuple[int, int],
                     y_range: Optional[tuple[float, float]] = None) -> Image.Image:
    """The plot of :func:`line_plot` as a PIL image (y axis over ``y_range`` when given, else the data's)."""
    width, height = size
    left, right, top, bottom = 60, 150, 30, 45
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    points = {name: [(float(x), float(y)) for x, y in zip(xs, ys) if np.isfinite(x) and np.isfinite(y)]
              for name, (xs, ys) in series.items()}
    every = [p for values in points.values() for p in values]
    if not every:
        every = [(0.0, 0.0), (1.0, 1.0)]
    x0, x1 = min(p[0] for p in every), max(p[0] for p in every)
    y0, y1 = y_range if y_range is not None else (min(p[1] for p in every), max(p[1] for p in every))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for k in range(5):  # ticks
        yv = y0 + (y1 - y0) * k / 4
        xv = x0 + (x1 - x0) * k / 4
        _, py = to_pixel(x0, yv)
        px, _ = to_pixel(xv, y0)
        draw.line([left - 4, py, left, py], fill="black")
        draw.text((4, py - 6), f"{yv:.1f}", fill="black")
        draw.line([px, height - bottom, px, height - bottom + 4], fill="black")
        draw.text((px - 10, height - bottom + 6), f"{xv:.0f}", fill="black")
    for index, (name, values) in enumerate(points.items()):
        colour = PALETTE[index % len(PALETTE)]
        pixels = [to_pixel(x, y) for x, y in values]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        ly = top + 10 + 18 * index
        draw.line([width - right + 10, ly + 6, width - right + 30, ly + 6], fill=colour, width=3)
        draw.text((width - right + 35, ly), name, fill="black")
    draw.text((left, 8), title, fill="black")
    draw.text(((width - right + left) // 2 - 30, height - 18), xlabel, fill="black")
    draw.text((4, 12), ylabel, fill="black")
    return image


def contact_sheet(rows: dict[str, Sequence[np.ndarray]], columns: Sequence[str], path: str | os.PathLike,
                  scale: int = 4) -> Path:
    """Save a grid of ``(H, W, 3) uint8`` frames: one labelled row per key, labelled columns."""
    first = next(iter(rows.values()))[0]
    cell_h, cell_w = first.shape[0] * scale, first.shape[1] * scale
    label_w, header_h, gap = 110, 20, 4
    width = label_w + len(columns) * (cell_w + gap)
    height = header_h + len(rows) * (cell_h + gap)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for c, name in enumerate(columns):
        draw.text((label_w + c * (cell_w + gap), 4), name, fill="black")
    for r, (name, frames) in enumerate(rows.items()):
        y = header_h + r * (cell_h + gap)
        draw.text((4, y + cell_h // 2 - 6), name, fill="black")
        for c, frame in enumerate(frames):
            tile = Image.fromarray(np.asarray(frame, dtype=np.uint8)).resize((cell_w, cell_h), Image.NEAREST)
            image.paste(tile, (label_w + c * (cell_w + gap), y))
    return _save(image, path)


def _save(image: Image.Image, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_output_file(path) as tmp:
        image.save(tmp, format="PNG")
    return path
