"""One status line: the engine's state, pid, uptime and step rate, the queue's counts, unread
alerts, and anything that could not be read."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from trainconsole.console.snapshot import Snapshot, format_age

STATE_STYLE = {"running": "bold green", "paused": "bold yellow", "stopped": "bold red",
               "not running": "bold red"}


def render_state(snap: Snapshot, readonly: bool, filter_text: str) -> Text:
    engine = snap.engine
    out = Text("● ", style=STATE_STYLE.get(engine.state, "")) + Text(
        f"engine {engine.state}", style=STATE_STYLE.get(engine.state, ""))
    if engine.pid is not None:
        out += Text(f"  pid {engine.pid}")
    if engine.uptime_s is not None:
        out += Text(f"  up {format_age(engine.uptime_s)}")
    if engine.step_rate is not None:
        out += Text(f"  {engine.step_rate:.3g} step/s")
    if snap.paused and engine.state != "paused":
        out += Text("  queue paused", style="yellow")
    unread = sum(1 for a in snap.alerts if not a.acked)
    if unread:
        critical = any(a.severity == "critical" and not a.acked for a in snap.alerts)
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


class EngineState(Static):
    def __init__(self, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self._last: Text | None = None

    def apply(self, snap: Snapshot, readonly: bool, filter_text: str) -> None:
        text = render_state(snap, readonly, filter_text)
        if text != self._last:
            self._last = text
            self.update(text, layout=False)
