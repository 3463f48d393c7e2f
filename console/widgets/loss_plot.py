"""The loss plot: train loss raw and smoothed (debiased EMA), eval loss overlaid, optional log-y.
The client hands it points already downsampled to the plot's width (min/max/last per column), so
a spike survives and a long run costs what a short one does. Redrawn only when the data changes."""

from __future__ import annotations

import math
import time

from textual_plotext import PlotextPlot

from trainconsole.console.snapshot import LossView

# While a job trains the curve changes every refresh; building the plot is the console's largest
# single cost, and a trend drawn every 2 s reads the same. A new job, log-y or a resize draw at once.
GROWTH_REDRAW_S = 2.0


class LossPlot(PlotextPlot):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.view: LossView | None = None
        self.log_y = False
        self._drawn: tuple[LossView | None, bool] | None = None
        self._drawn_at = 0.0

    def on_mount(self) -> None:
        super().on_mount()
        # The key sits on the border: a legend inside the plot would hide the first, highest steps.
        self.border_subtitle = "[gray]━ train[/]  [cyan]━ smoothed[/]  [orange1]● eval[/]"
        self._draw()

    def apply(self, view: LossView | None, log_y: bool | None = None) -> None:
        if log_y is not None:
            self.log_y = log_y
        self.view = view
        self._draw()

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
        plt = self.plt
        plt.clear_figure()
        view = self.view
        scale = "log" if self.log_y else "linear"
        if view is None or view.empty:
            title = "loss: no job selected" if view is None else f"loss {view.job_id}: no steps yet"
            plt.title(title)
            self.refresh()
            return
        last = "" if view.last_loss is None else f" step {view.last_step} loss {_fmt(view.last_loss)}"
        plt.title(f"loss {view.job_id}{last}{' (log)' if self.log_y else ''}")
        if view.train_x:
            plt.plot(list(view.train_x), _y(view.train_y, self.log_y), marker="braille", color="gray")
        if view.smooth_x:
            plt.plot(list(view.smooth_x), _y(view.smooth_y, self.log_y), marker="braille", color="cyan")
        if view.eval_x:
            plt.scatter(list(view.eval_x), _y(view.eval_y, self.log_y), marker="●", color="orange")
        plt.yscale(scale)
        xs = view.train_x or view.eval_x
        lo, hi = int(min(xs)), int(max(xs))
        if hi > lo:  # steps are whole numbers: label them so, not "15.8"
            ticks = sorted({lo + round((hi - lo) * i / 4) for i in range(5)})
            plt.xticks([float(t) for t in ticks], [str(t) for t in ticks])
        self.refresh()


def _y(values: tuple[float, ...], log_y: bool) -> list[float]:
    # A log axis cannot show zero or below; clamp rather than drop, so the columns still line up.
    if not log_y:
        return list(values)
    return [max(v, 1e-8) for v in values]


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"
