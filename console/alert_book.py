"""Every alert a console has read, by key, and true counts of them.

An alert's key names its condition: a repeat under the same key replaces the row (a guard's
standing alert, such as the plateau's, stays one row however often it fires) and makes it news
again; one marked ``resolved`` settles the row. The panel shows the newest ``shown`` rows; the
header's count is of every unread alert, not of the rows shown (it read 200, the display cap, on
a run with 577). Rows beyond ``keep`` are forgotten oldest first, their unread ones still counted
until acknowledged. The rows and counts are rebuilt only when an alert changes, so a quiet poll
costs nothing here however many alerts a long run has gathered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from trainconsole.console.snapshot import AlertRow

SHOWN = 200
KEEP = 10_000


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class AlertBook:
    def __init__(self, shown: int = SHOWN, keep: int = KEEP) -> None:
        self.shown, self.keep = shown, keep
        self._rows: dict[str, AlertRow] = {}
        self._acked: set[str] = set()
        self._dropped = 0
        self._dropped_unread = 0
        self._dropped_critical = 0
        self._view: tuple[tuple[AlertRow, ...], int, bool, int] | None = None

    def take(self, event: dict[str, Any], job_id: str | None, short: Callable[[str], str]) -> None:
        """One ``alert`` event. An older one than the row under its key (a history read after the
        present) changes nothing."""
        t = _float(event.get("t")) or 0.0
        case = event.get("case")
        raw = str(event.get("message", ""))
        key = str(event.get("key") or f"{t}|{case}|{job_id}|{raw}")
        before = self._rows.get(key)
        if before is not None and t < before.t:
            return
        if before is not None and t > before.t:
            self._acked.discard(key)  # it happened again: news again
        self._rows[key] = AlertRow(
            key=key, case=case if isinstance(case, int) and not isinstance(case, bool) else None,
            severity=str(event.get("severity", "warning")), job_id=job_id, t=t, message=short(raw),
            acked=key in self._acked, resolved=bool(event.get("resolved")))
        self._view = None
        if len(self._rows) > self.keep + self.keep // 10:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        oldest = sorted(self._rows.values(), key=lambda a: a.t)[: len(self._rows) - self.keep]
        self._dropped += len(oldest)
        for row in oldest:
            del self._rows[row.key]
            self._acked.discard(row.key)
            if _unread(row):
                self._dropped_unread += 1
                self._dropped_critical += row.severity == "critical"

    def acknowledge(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._acked.add(key)
            row = self._rows.get(key)
            if row is not None:
                self._rows[key] = replace(row, acked=True)
        self._view = None

    def acknowledge_all(self) -> None:
        self.acknowledge(list(self._rows))
        self._dropped_unread = self._dropped_critical = 0

    def view(self) -> tuple[tuple[AlertRow, ...], int, bool, int]:
        """(the newest rows to show, unread count, whether a critical one is unread, total)."""
        if self._view is None:
            rows = sorted(self._rows.values(), key=lambda a: a.t, reverse=True)
            unread = [r for r in rows if _unread(r)]
            critical = self._dropped_critical > 0 or any(r.severity == "critical" for r in unread)
            self._view = (tuple(rows[: self.shown]), len(unread) + self._dropped_unread, critical,
                          len(rows) + self._dropped)
        return self._view


def _unread(row: AlertRow) -> bool:
    return not row.acked and not row.resolved
