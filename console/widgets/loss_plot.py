"""The loss plot: train loss raw and smoothed (debiased EMA), eval loss overlaid, optional log-y.

The client hands it points already decimated to the plot's width (min/max/last per column, in
columns aligned to fixed step spans), so a spike survives and a long run costs what a short one
does. The x axis runs to a round number past the last step (never past the job's planned steps),
so it is rescaled only now and then, not at every step; together with the aligned columns this
keeps the drawing still except at its right edge and in the title. The plot is drawn as a grid of
cells (``braille.py``); each redraw is compared with the last one cell by cell and only the
changed spans are sent to the terminal (``refresh`` with regions), the rest stays as it is.
"""

from __future__ import annotations

import math
import time

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from trainconsole.console.series import GROWTH_REDRAW_S
from trainconsole.console.snapshot import LossView
from trainconsole.console.widgets import braille
from trainconsole.console.widgets.braille import Grid

_NICE = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


def axis_end(last: float, planned: int = 0) -> float:
    """The x axis's end: the smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a
    power of ten) at or past ``last``, but never past the planned steps when those are known."""
    if last <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(last))
    end = next(n * scale for n in _NICE if n * scale >= last - 1e-9)
    return float(min(end, planned)) if planned >= last else end


def step_ticks(lo: float, hi: float, least: int = 4) -> list[float]:
    """Round step numbers between lo and hi: the widest round spacing (1, 2, 2.5, 5 times a
    power of ten) that still gives ``least`` of them."""
    if hi <= lo:
        return [lo]
    room = (hi - lo) / (least - 1)
    scale = 10.0 ** math.floor(math.log10(room))
    step = max(n * scale for n in (1.0, 2.0, 2.5, 5.0) if n * scale <= room)
    step = max(1.0, round(step))
    value = math.ceil(lo / step) * step
    ticks = []
    while value <= hi + 1e-9:
        ticks.append(value)
        value += step
    return ticks or [lo]


def step_label(step: float) -> str:
    value = int(round(step))
    if value >= 10_000 and value % 1000 == 0:
        return f"{value // 1000}k"
    return str(value)


COLOURS = {"train": "grey50", "smooth": "cyan", "eval": "dark_orange"}


def plot_grid(view: LossView | None, width: int, height: int, log_y: bool) -> Grid:
    """The plot of a view as a grid of cells (pure: the widget only shows it)."""
    if view is None or view.empty:
        title = "loss: no job selected" if view is None else f"loss {view.job_id}: no steps yet"
        return braille.render(title, (), width, height)
    last = "" if view.last_loss is None else f" step {view.last_step} loss {_fmt(view.last_loss)}"
    title = f"loss {view.job_id}{last}{' (log)' if log_y else ''}"
    lo = float(min([*view.train_x[:1], *view.eval_x[:1]]))
    hi = axis_end(max(view.last_step, *(view.train_x[-1:] or (0.0,)), *(view.eval_x[-1:] or (0.0,))),
                  view.max_steps)
    ticks = [(t, step_label(t)) for t in step_ticks(lo, hi)] if hi > lo else []
    series = [braille.Series(view.train_x, view.train_y, COLOURS["train"]),
              braille.Series(view.smooth_x, view.smooth_y, COLOURS["smooth"]),
              braille.Series(view.eval_x, view.eval_y, COLOURS["eval"], marker="●")]
    return braille.render(title, series, width, height, x_range=(lo, max(hi, lo + 1)), x_ticks=ticks,
                          log_y=log_y)


class LossPlot(Widget):
    DEFAULT_CSS = "LossPlot { width: 1fr; height: 1fr; }"

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.view: LossView | None = None
        self.log_y = False
        self._drawn: tuple[LossView | None, bool] | None = None
        self._drawn_at = 0.0
        self._grid: Grid = []
        self._strips: dict[int, Strip] = {}

    def on_mount(self) -> None:
        # The key sits on the border: a legend inside the plot would hide the first, highest steps.
        self.border_subtitle = "[grey50]━ train[/]  [cyan]━ smoothed[/]  [dark_orange]● eval[/]"
        self._draw()

    def on_resize(self) -> None:
        self._drawn = None
        self._draw()

    def apply(self, view: LossView | None, log_y: bool | None = None) -> None:
        if log_y is not None:
            self.log_y = log_y
        self.view = view
        self._draw()

    @property
    def text(self) -> str:
        return braille.plain(self._grid)

    def _draw(self) -> None:
        if self._drawn == (self.view, self.log_y):
            return
        before = self._drawn[0] if self._drawn is not None else None
        same_curve = (before is not None and self.view is not None and before.job_id == self.view.job_id
                      and self._drawn is not None and self._drawn[1] == self.log_y)
        if same_curve and time.monotonic() - self._drawn_at < GROWTH_REDRAW_S:
            return  # the next refresh draws it
        self._drawn = (self.view, self.log_y)
        self._drawn_at = time.monotonic()
        width, height = self.content_size.width, self.content_size.height
        old, self._grid = self._grid, plot_grid(self.view, width, height, self.log_y)
        if len(old) != len(self._grid) or any(len(a) != len(b) for a, b in zip(old, self._grid, strict=True)):
            self._strips.clear()
            self.refresh()
            return
        regions = []
        for y, (before_line, line) in enumerate(zip(old, self._grid, strict=True)):
            if before_line == line:
                continue
            first = next(i for i, (a, b) in enumerate(zip(before_line, line, strict=True)) if a != b)
            last = max(i for i, (a, b) in enumerate(zip(before_line, line, strict=True)) if a != b)
            self._strips.pop(y, None)
            regions.append(Region(first, y, last - first + 1, 1))
        if regions:
            self.refresh(*regions)

    def render_line(self, y: int) -> Strip:
        strip = self._strips.get(y)
        if strip is None:
            base = self.rich_style
            if y >= len(self._grid):
                return Strip.blank(self.content_size.width, base)
            segments = []
            run, colour = "", None
            for ch, cell_colour in self._grid[y]:
                if cell_colour != colour and run:
                    segments.append(Segment(run, base + Style(color=colour) if colour else base))
                    run = ""
                run += ch
                colour = cell_colour
            if run:
                segments.append(Segment(run, base + Style(color=colour) if colour else base))
            strip = self._strips[y] = Strip(segments)
        return strip


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"
