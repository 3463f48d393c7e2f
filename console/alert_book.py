"""Every alert a console has read, by key, and true counts of them.

An alert's key names its condition: a repeat under the same key replaces the row (a guard's
standing alert, such as the plateau's, stays one row however often it fires) and makes it news
again; one marked ``resolved`` settles the row. The panel shows the newest ``shown`` rows; the
header's count is of every unread alert, not of the rows shown (it read 200, the display cap, on
a run with 577). Rows beyond ``keep`` are forgotten oldest first, their unread ones still counted
until acknowledged. The rows and counts are rebuilt only when an alert changes, so a quiet poll
costs nothing here however many alerts a long run has gathered.

Acknowledgements are the store's (``trainconsole.engine.store.acks``), shared by every console and
kept across restarts: ``apply`` takes them as read on each poll; one made here counts at once, also
where the store cannot be written (a read-only console). An acknowledgement covers an alert up to
the time acknowledged, so one that fires again later is news again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from trainconsole.console.snapshot import AlertRow
from trainconsole.engine.events import alert_key
from trainconsole.engine.store.acks import Acks

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
        self._stored = Acks()
        self._local: dict[str, float] = {}  # acknowledged here: key -> up to which alert time
        self._local_before = 0.0
        self._dropped = 0
        self._dropped_t = 0.0  # the newest forgotten row's time
        self._dropped_unread = 0
        self._dropped_critical = 0
        self._view: tuple[tuple[AlertRow, ...], int, bool, int] | None = None

    def take(self, event: dict[str, Any], job_id: str | None, short: Callable[[str], str]) -> None:
        """One ``alert`` event. An older one than the row under its key (a history read after the
        present) changes nothing."""
        t = _float(event.get("t")) or 0.0
        case = event.get("case")
        raw = str(event.get("message", ""))
        key = alert_key({**event, "job_id": job_id} if not event.get("key") else event)
        before = self._rows.get(key)
        if before is not None and t < before.t:
            return
        self._rows[key] = AlertRow(
            key=key, case=case if isinstance(case, int) and not isinstance(case, bool) else None,
            severity=str(event.get("severity", "warning")), job_id=job_id, t=t, message=short(raw),
            acked=self._is_acked(key, t), resolved=bool(event.get("resolved")))
        self._view = None
        if len(self._rows) > self.keep + self.keep // 10:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        oldest = sorted(self._rows.values(), key=lambda a: a.t)[: len(self._rows) - self.keep]
        self._dropped += len(oldest)
        for row in oldest:
            del self._rows[row.key]
            self._local.pop(row.key, None)
            self._dropped_t = max(self._dropped_t, row.t)
            if _unread(row):
                self._dropped_unread += 1
                self._dropped_critical += row.severity == "critical"

    def _is_acked(self, key: str, t: float) -> bool:
        return (self._stored.covers(key, t) or t <= self._local_before
                or t <= self._local.get(key, float("-inf")))

    def acknowledge(self, keys: Iterable[str]) -> dict[str, float]:
        """The rows under ``keys`` read; returns what to store: each key with its alert's time."""
        seen: dict[str, float] = {}
        for key in keys:
            row = self._rows.get(key)
            if row is not None:
                seen[key] = self._local[key] = max(row.t, self._local.get(key, row.t))
                self._rows[key] = replace(row, acked=True)
        self._view = None
        return seen

    def acknowledge_all(self) -> float:
        """Every alert read, also those past the rows kept; returns the time it covers up to."""
        newest = max([self._dropped_t, *(row.t for row in self._rows.values())])
        self._local_before = max(self._local_before, newest)
        self._refresh()
        return newest

    def apply(self, acks: Acks) -> None:
        """The store's acknowledgements, as read by a poll (costs nothing when unchanged)."""
        if acks != self._stored:
            self._stored = acks
            self._refresh()

    def _refresh(self) -> None:
        for key, row in self._rows.items():
            acked = self._is_acked(key, row.t)
            if acked != row.acked:
                self._rows[key] = replace(row, acked=acked)
        if self._dropped_t <= max(self._stored.before, self._local_before):
            self._dropped_unread = self._dropped_critical = 0
        self._view = None

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
