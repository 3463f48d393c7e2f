"""Acknowledged alerts, kept in ``queue/state.db`` so every console (local or over SSH) and the
command line (``trainconsole ack``) share them, and a restart keeps them.

An acknowledgement covers an alert up to the time it was seen: ``acks`` holds, per alert key, the
time of the newest occurrence acknowledged; ``meta.acked_before`` is ``ack --all``'s mark, under
which every alert counts as read. An alert that fires again later (a newer ``t``) is news again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from trainconsole.engine.store.db import Database

_MARK = "acked_before"


@dataclass(frozen=True)
class Acks:
    """What has been acknowledged: per key, up to which alert time; and the ``--all`` mark."""

    before: float = 0.0
    by_key: Mapping[str, float] = field(default_factory=dict)

    def covers(self, key: str, t: float) -> bool:
        return t <= self.before or t <= self.by_key.get(key, float("-inf"))


class AlertAcks:
    def __init__(self, db: Database) -> None:
        self.db = db

    def read(self) -> Acks:
        with self.db.read() as conn:
            mark = conn.execute("SELECT value FROM meta WHERE key=?", (_MARK,)).fetchone()
            rows = conn.execute("SELECT key, t FROM acks").fetchall()
        return Acks(float(mark[0]) if mark else 0.0, {str(k): float(t) for k, t in rows})

    def acknowledge(self, seen: Mapping[str, float]) -> None:
        """Each key acknowledged up to the alert time given (never moved back)."""
        now = self.db.clock()
        with self.db.write():
            self.db.conn.executemany(
                "INSERT INTO acks(key, t, acked_at) VALUES (?,?,?) ON CONFLICT(key) DO UPDATE SET "
                "t=max(t, excluded.t), acked_at=excluded.acked_at",
                [(key, float(t), now) for key, t in seen.items()])

    def acknowledge_all(self, before: float) -> None:
        """Every alert up to ``before`` read; the per-key rows it covers are dropped."""
        with self.db.write():
            conn = self.db.conn
            mark = conn.execute("SELECT value FROM meta WHERE key=?", (_MARK,)).fetchone()
            before = max(before, float(mark[0]) if mark else 0.0)
            conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                         "value=excluded.value", (_MARK, repr(before)))
            conn.execute("DELETE FROM acks WHERE t <= ?", (before,))
