"""Alerts, newest first, except that critical ones not yet acknowledged stay on top: repeated
warnings (a guard at every evaluation) would otherwise push them out of the few rows an 80x24
terminal gives. Case number, severity, job, time and message; acknowledged ones are dimmed, and so
are settled ones (a standing alert whose condition is over, such as a plateau the loss left).
Alerts change rarely, so the table is rebuilt only when the list itself changes."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import DataTable

from trainconsole.console.snapshot import AlertRow

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
LABELS = ("case", "severity", "job", "time", "message")
SCROLLBAR = 2  # cells a vertical scrollbar takes when there are more alerts than rows


def _clip(text: Text, width: int) -> Text:
    if text.cell_len <= width:
        return text
    clipped = text.copy()
    clipped.truncate(max(1, width), overflow="ellipsis")
    return clipped


def alert_cells(alert: AlertRow, message_width: int | None = None) -> tuple[Text, ...]:
    dim = "" if alert.unread else "dim"
    sev = "resolved" if alert.resolved else alert.severity
    sev = f"{sev} ✓" if alert.acked else sev
    return (
        Text(f"#{alert.case}" if alert.case is not None else "-", style=dim),
        Text(sev, style=dim or SEVERITY_STYLE.get(alert.severity, "")),
        Text(alert.job_id or "engine", style=dim),
        Text(time.strftime("%H:%M:%S", time.localtime(alert.t)), style=dim),
        _clip(Text(alert.message.replace("\n", " "), style=dim, no_wrap=True),
              message_width if message_width is not None else len(alert.message)),
    )


def message_room(alerts: tuple[AlertRow, ...], width: int, height: int, padding: int = 1) -> int:
    """Cells left for the message after the other columns, so a long one ends in "…" rather
    than at the terminal's edge."""
    used = 0
    for index, label in enumerate(LABELS[:-1]):
        widest = max((alert_cells(a, 0)[index].cell_len for a in alerts), default=0)
        used += max(len(label), widest) + 2 * padding
    scrollbar = SCROLLBAR if len(alerts) + 1 > height else 0  # +1: a header, when shown
    return max(8, width - used - padding - scrollbar)


class AlertList(DataTable[Text]):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", **kwargs)  # type: ignore[arg-type]
        self._shown: tuple[tuple[str, bool, bool, float], ...] = ()
        self.alerts: tuple[AlertRow, ...] = ()
        self._given: tuple[AlertRow, ...] | None = None
        self._room = 0

    def on_mount(self) -> None:
        for label in LABELS:
            self.add_column(label, key=label)

    def _message_room(self, alerts: tuple[AlertRow, ...]) -> int:
        return message_room(alerts, self.size.width, self.size.height, self.cell_padding)

    def on_resize(self) -> None:
        if self.alerts and self._room != self._message_room(self.alerts):
            self._shown = ()  # rebuilt for the new width
            self._given = None
            self.apply(self.alerts)

    def apply(self, alerts: tuple[AlertRow, ...]) -> None:
        if alerts is self._given:  # the client hands back the same tuple while nothing changed
            return
        self._given = alerts
        # A stable sort: each group stays newest first.
        alerts = tuple(sorted(alerts, key=lambda a: not a.unread or a.severity != "critical"))
        self.alerts = alerts
        signature = tuple((a.key, a.acked, a.resolved, a.t) for a in alerts)
        if signature == self._shown:
            return
        # The operator's place is kept only while they are in the list; otherwise the cursor
        # stayed on the first alert ever seen and the list scrolled newer ones out of sight.
        keep = self.selected_key if self.has_focus else None
        self._shown = signature
        self._room = self._message_room(alerts) if self.size.width else 0
        self.clear(columns=False)
        for column in self.columns.values():  # widths follow the new rows, narrower ones too
            column.content_width = column.label.cell_len
        for alert in alerts:
            self.add_row(*alert_cells(alert, self._room or None), key=alert.key)
        if keep is not None and keep in {a.key for a in alerts}:
            self.move_cursor(row=self.get_row_index(keep), animate=False)

    @property
    def selected_key(self) -> str | None:
        if self.row_count == 0:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001
            return None
