"""Quick read-only look-ups for shell completion and log following: the job ids of a queue, without opening the
store proper (no integrity check, no repair, never a write, never a rebuild). A database that is
missing, locked, damaged or of another schema answers with nothing: completion must never fail
loudly or change anything."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from urllib.parse import quote

from trainconsole.engine.layout import Layout


def _connect(layout: Layout, timeout_s: float) -> sqlite3.Connection | None:
    path = layout.state_db
    if not path.is_file():
        return None
    try:
        return sqlite3.connect(f"file:{quote(os.fspath(path))}?mode=ro", uri=True, timeout=timeout_s)
    except sqlite3.Error:
        return None


UNKNOWN = "unknown"


def job_status(layout: Layout, job_id: str, *, timeout_s: float = 5.0) -> str | None:
    """A job's state; None when the database has no such job; ``UNKNOWN`` when the database
    cannot be read just now (being rebuilt, a lost mount): a follower waits that out."""
    conn = _connect(layout, timeout_s)
    if conn is None:
        return UNKNOWN
    try:
        row = conn.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
    except sqlite3.Error:
        return UNKNOWN
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.close()
    return str(row[0]) if row else None


def job_ids(layout: Layout, statuses: Iterable[str] | None = None, *,
            timeout_s: float = 0.5) -> list[tuple[str, str, str]]:
    """(id, name, status) of every job, or of those in ``statuses``, in id order."""
    conn = _connect(layout, timeout_s)
    if conn is None:
        return []
    try:
        sql = "SELECT id, name, status FROM jobs"
        params: list[str] = []
        if statuses is not None:
            params = list(statuses)
            sql += f" WHERE status IN ({','.join('?' * len(params))})"
        rows = conn.execute(sql + " ORDER BY seq", params).fetchall()
    except sqlite3.Error:
        return []
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.close()
    return [(str(r[0]), os.fsdecode(bytes(r[1])) if isinstance(r[1], bytes) else str(r[1]), str(r[2]))
            for r in rows]
