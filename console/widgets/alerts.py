"""Alerts, newest first: case number, severity, job, time and message. Acknowledged ones are
dimmed. Alerts change rarely, so the table is rebuilt only when the list itself changes."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import DataTable

from console.snapshot import AlertRow

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def alert_cells(alert: AlertRow) -> tuple[Text, ...]:
    dim = "dim" if alert.acked else ""
    sev = alert.severity if not alert.acked else f"{alert.severity} ✓"
    return (
        Text(f"#{alert.case}" if alert.case is not None else "-", style=dim),
        Text(sev, style="dim" if alert.acked else SEVERITY_STYLE.get(alert.severity, "")),
        Text(alert.job_id or "engine", style=dim),
        Text(time.strftime("%H:%M:%S", time.localtime(alert.t)), style=dim),
        Text(alert.message.replace("\n", " "), style=dim, no_wrap=True),
    )


class AlertList(DataTable[Text]):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", **kwargs)  # type: ignore[arg-type]
        self._shown: tuple[tuple[str, bool], ...] = ()
        self.alerts: tuple[AlertRow, ...] = ()

    def on_mount(self) -> None:
        for label in ("case", "severity", "job", "time", "message"):
            self.add_column(label, key=label)

    def apply(self, alerts: tuple[AlertRow, ...]) -> None:
        self.alerts = alerts
        signature = tuple((a.key, a.acked) for a in alerts)
        if signature == self._shown:
            return
        keep = self.selected_key
        self._shown = signature
        self.clear()
        for alert in alerts:
            self.add_row(*alert_cells(alert), key=alert.key)
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
