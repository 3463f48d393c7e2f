"""One status line: the engine's state, pid, uptime and step rate, the queue's counts, unread
alerts (all of them, not the rows the panel shows), and anything that could not be read. When it
changes, only the changed cells are sent (the step rate moves every second)."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

from trainconsole.console.snapshot import Snapshot, format_age
from trainconsole.console.widgets.diff import cells_of, changed_regions

STATE_STYLE = {"running": "bold green", "paused": "bold yellow", "stopped": "bold red",
               "not running": "bold red"}


def render_state(snap: Snapshot, readonly: bool, filter_text: str) -> Text:
    engine = snap.engine
    out = Text("● ", style=STATE_STYLE.get(engine.state, "")) + Text(
        f"engine {engine.state}", style=STATE_STYLE.get(engine.state, ""))
    if engine.pid is not None:
        out += Text(f"  pid {engine.pid}")
    if engine.started_at is not None:
        # When it started, not how long ago: an uptime moved once a minute on a console where
        # nothing else moved (the only bytes an idle console sent), and a restart shows either way.
        day = engine.uptime_s is not None and engine.uptime_s >= 86400
        out += Text(f"  since {time.strftime('%b %d %H:%M' if day else '%H:%M', time.localtime(engine.started_at))}")
    elif engine.uptime_s is not None:
        out += Text(f"  up {format_age(engine.uptime_s)}")
    if engine.step_rate is not None:
        out += Text(f"  {format_rate(engine.step_rate)}")
    if snap.paused and engine.state != "paused":
        out += Text("  queue paused", style="yellow")
    unread, critical, _total = snap.alert_counts()
    if unread:
        out += Text(f"  │ {unread} alert{'s' if unread != 1 else ''}",
                    style="bold red" if critical else "yellow")
    if filter_text:
        out += Text(f"  │ filter: {filter_text}", style="bold")
    if readonly:
        out += Text("  │ read-only", style="bold magenta")
    if engine.detail:
        out += Text(f"  │ {engine.detail}", style="dim")
    if snap.problem:
        out += Text(f"  │ {snap.problem}", style="dim")
    # The counts come last: the queue table shows them too, so at 80 columns they are what the
    # edge may cut, never the alerts, the filter, the read-only mark or why the engine is down.
    counts = snap.counts()
    parts = [f"{counts[s]} {s}" for s in ("running", "queued", "held", "failed", "done") if counts.get(s)]
    out += Text("  │ " + (", ".join(parts) if parts else "queue empty"))
    out.no_wrap = True
    out.overflow = "ellipsis"
    return out


def format_rate(rate: float) -> str:
    """Steps per second at any pace, to two figures (a third only flickers, and a changed line is
    sent to the terminal; ``.3g`` wrote 1234 as "1.23e+03"); a very slow job reads better in
    seconds per step."""
    if rate >= 10:
        return f"{rate:.0f} step/s"
    if rate >= 1:
        return f"{rate:.1f} step/s"
    if rate >= 0.1:
        return f"{rate:.2f} step/s"
    if rate > 0:
        return f"{1 / rate:.3g} s/step"
    return "0 step/s"


class EngineState(Widget):
    DEFAULT_CSS = "EngineState { height: 1; }"

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._last: Text | None = None
        self._text = Text()

    def render(self) -> RenderResult:
        return self._text

    @property
    def text(self) -> Text:
        return self._text

    def apply(self, snap: Snapshot, readonly: bool, filter_text: str) -> None:
        text = render_state(snap, readonly, filter_text)
        if text == self._last:
            return
        old = None if self._last is None else [cells_of(self._last)]
        self._last = self._text = text
        regions = changed_regions(old, [cells_of(text)], self.content_size.width)
        if regions is None:
            self.refresh()
        else:
            self.refresh(*regions)
