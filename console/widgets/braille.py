"""The loss plot drawn as text: braille dots (2x4 per cell), a frame with y labels and x ticks,
one colour per cell. Pure: values in, a grid of (character, colour) out, so it is tested as plain
text and a redraw can be compared with the last one cell by cell.

Why not plotext: building a plotext figure of 80x18 cost about 11 ms and parsing its ANSI output
back into styled text another 5 ms, so at one redraw every 2 s the plot alone took about 1% of a
core, two thirds of the console's whole budget. This draws the same picture in well under 2 ms.

The frame, as plotext drew it::

                 title
    ┌─────────────────────────┐
    3.10┤⠒⠒⠦⠤⠤⢄⣀●⣀   ⢰⡇     │
    1.28┤     ⠉⠉⠉⠓●⠒⠒⠒⠦⠤⠤⣀⣀│
    └┬──────────┬───────────┬┘
     1         50         100
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Cell = tuple[str, str]  # (character, colour name; "" for the default)
Grid = list[list[Cell]]

# Dot bits of a braille cell (U+2800 + bits), by (column, row) inside the cell.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
AXIS = "bright_black"


@dataclass(frozen=True)
class Series:
    xs: Sequence[float]
    ys: Sequence[float]
    colour: str
    marker: str = ""  # a character per point instead of braille lines (eval points)


def y_label(value: float) -> str:
    if value == 0 or not math.isfinite(value):
        return str(value) if not math.isfinite(value) else "0"
    if 0.01 <= abs(value) < 1000:
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value:.1e}"


def render(title: str, series: Sequence[Series], width: int, height: int, *,
           x_range: tuple[float, float] | None = None, x_ticks: Sequence[tuple[float, str]] = (),
           log_y: bool = False) -> Grid:
    """``height`` lines of ``width`` cells. With no point to draw, the title alone."""
    grid: Grid = [[(" ", "")] * width for _ in range(height)]
    if width <= 0 or height <= 0:
        return grid
    _put(grid, 0, max(0, (width - len(title)) // 2), title[:width], "")
    points = [(x, _ty(y, log_y)) for s in series for x, y in zip(s.xs, s.ys, strict=True)
              if math.isfinite(x) and math.isfinite(_ty(y, log_y))]
    if not points or height < 5:
        return grid
    lo_y = min(p[1] for p in points)
    hi_y = max(p[1] for p in points)
    if hi_y - lo_y < 1e-12:
        lo_y, hi_y = lo_y - 0.5, hi_y + 0.5
    lo_x, hi_x = x_range if x_range is not None else (min(p[0] for p in points), max(p[0] for p in points))
    if hi_x <= lo_x:
        hi_x = lo_x + 1.0
    rows = height - 4  # title, top border, bottom border, x labels
    labels = [y_label(_uy(hi_y - (hi_y - lo_y) * r / max(1, rows - 1), log_y)) for r in range(rows)]
    label_w = max(len(text) for text in labels)
    left, right = label_w, width - 1  # the axis column and the right border
    cols = right - left - 1
    if cols < 2 or rows < 1:
        return grid
    # Frame.
    _put(grid, 1, left, "┌" + "─" * cols + "┐", AXIS)
    every = 1 if rows <= 4 else 2
    for r in range(rows):
        shown = r % every == 0 or r == rows - 1
        _put(grid, 2 + r, 0, (labels[r] if shown else "").rjust(label_w), "")
        _put(grid, 2 + r, left, "┤" if shown else "│", AXIS)
        _put(grid, 2 + r, right, "│", AXIS)
    bottom = ["─"] * cols
    for x, text in x_ticks:
        col = round((x - lo_x) / (hi_x - lo_x) * (cols - 1))
        if 0 <= col < cols:
            bottom[col] = "┬"
            start = min(max(0, left + 1 + col - len(text) // 2), width - len(text))
            _put(grid, height - 1, start, text, "")
    _put(grid, height - 2, left, "└" + "".join(bottom) + "┘", AXIS)
    # Dots.
    dots_w, dots_h = 2 * cols, 4 * rows
    bits = [[0] * cols for _ in range(rows)]
    colours = [[""] * cols for _ in range(rows)]
    marks: dict[tuple[int, int], Cell] = {}

    def to_dot(x: float, y: float) -> tuple[int, int]:
        dx = round((x - lo_x) / (hi_x - lo_x) * (dots_w - 1))
        dy = round((hi_y - y) / (hi_y - lo_y) * (dots_h - 1))
        return dx, dy

    for s in series:
        previous: tuple[int, int] | None = None
        for x, raw in zip(s.xs, s.ys, strict=True):
            y = _ty(raw, log_y)
            if not (math.isfinite(x) and math.isfinite(y)):
                previous = None
                continue
            dot = to_dot(x, y)
            if s.marker:
                col, row = dot[0] // 2, dot[1] // 4
                if 0 <= col < cols and 0 <= row < rows:
                    marks[(row, col)] = (s.marker, s.colour)
                continue
            for dx, dy in _line(previous or dot, dot):
                if 0 <= dx < dots_w and 0 <= dy < dots_h:
                    row, col = dy // 4, dx // 2
                    bits[row][col] |= _DOTS[dx % 2][dy % 4]
                    colours[row][col] = s.colour
            previous = dot
    for r in range(rows):
        line = grid[2 + r]
        for c in range(cols):
            mark = marks.get((r, c))
            if mark is not None:
                line[left + 1 + c] = mark
            elif bits[r][c]:
                line[left + 1 + c] = (chr(0x2800 + bits[r][c]), colours[r][c])
    return grid


def plain(grid: Grid) -> str:
    return "\n".join("".join(ch for ch, _ in line).rstrip() for line in grid)


def _ty(y: float, log_y: bool) -> float:
    # A log axis cannot show zero or below: clamped, so the line still joins its neighbours.
    return math.log10(max(y, 1e-8)) if log_y else y


def _uy(y: float, log_y: bool) -> float:
    return 10.0**y if log_y else y


def _put(grid: Grid, row: int, col: int, text: str, colour: str) -> None:
    line = grid[row]
    for i, ch in enumerate(text):
        if 0 <= col + i < len(line):
            line[col + i] = (ch, colour)


def _line(a: tuple[int, int], b: tuple[int, int]) -> list[tuple[int, int]]:
    """The dots from a to b (Bresenham), both ends included."""
    (x0, y0), (x1, y1) = a, b
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err = dx + dy
    out = []
    while True:
        out.append((x0, y0))
        if x0 == x1 and y0 == y1:
            return out
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x0 += sx
        if e2 <= dx:
            err += dx
            y0 += sy
