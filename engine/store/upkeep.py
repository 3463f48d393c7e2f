"""Upkeep of ``queue/state.db`` for an engine that runs for months: pages freed by deleted rows
(taken commands, finished intents, rewritten job rows) go back to the filesystem, and the WAL is
checkpointed so it does not grow while consoles read.

New databases are created with ``auto_vacuum = INCREMENTAL`` (``schema._create``), so upkeep is a
cheap ``PRAGMA incremental_vacuum``. A database made before that has ``auto_vacuum = NONE``; it is
switched once, with a ``VACUUM``, the first time its free pages reach a quarter of the file (a
rewrite of the file, under the write lock: rare, and only where it pays).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainconsole.engine.store.db import Database

INCREMENTAL = 2
SWITCH_FREE_SHARE = 0.25


@dataclass(frozen=True)
class Upkeep:
    pages_freed: int
    page_size: int
    vacuumed: bool  # a full VACUUM switched an old database to incremental vacuum

    @property
    def bytes_freed(self) -> int:
        return self.pages_freed * self.page_size


def upkeep(db: Database) -> Upkeep:
    conn = db.conn
    with db.lock:
        mode = int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        vacuumed = False
        if mode == INCREMENTAL:
            if free:
                # executescript steps it to the end: each step of the statement frees one page.
                conn.executescript("PRAGMA incremental_vacuum;")
        elif free and free >= SWITCH_FREE_SHARE * pages:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
            vacuumed = True
        else:
            free = 0
        # PASSIVE: never waits for a console's read to end; what it cannot copy waits for the next.
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return Upkeep(free, size, vacuumed)
