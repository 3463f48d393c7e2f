"""Quick read-only look-ups for shell completion: the job ids of a queue, without opening the
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


def job_ids(layout: Layout, statuses: Iterable[str] | None = None, *,
            timeout_s: float = 0.5) -> list[tuple[str, str, str]]:
    """(id, name, status) of every job, or of those in ``statuses``, in id order."""
    path = layout.state_db
    if not path.is_file():
        return []
    uri = f"file:{quote(os.fspath(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout_s)
    except sqlite3.Error:
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
