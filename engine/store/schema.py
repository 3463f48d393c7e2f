"""The job database's schema, how it is opened and upgraded, and when it is rebuilt from the queue
folders (it is corrupt: case 58; the rebuild is ``folders.rebuild_from_folders``). Only the store's
own modules use it.

Opening: WAL (readers never block the writer), ``synchronous=FULL`` (a commit survives power loss),
a busy timeout (the daemon and any number of consoles share the file), and the schema version in
``PRAGMA user_version``. A file that is not a database, fails ``PRAGMA quick_check``, is truncated,
or is a directory is renamed to ``state.db.corrupt-<timestamp>`` (kept for a post-mortem, never
deleted) and a new database is built from ``jobs/`` (queued), ``done/`` and ``failed/``, reading
each job's sidecar for what the folder alone cannot say.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from trainconsole.engine import fsio
from trainconsole.engine.errors import ConfigError, TrainconsoleError, TransientError
from trainconsole.engine.layout import Layout
from trainconsole.engine.lock import read_pidfile
from trainconsole.engine.procid import from_stored
from trainconsole.engine.store.folders import rebuild_from_folders

# 2: process identities (trainconsole.engine.procid) as text: jobs.pid_start (a float create time
# before) and intents.owner_start (new). A schema-1 file is migrated in place when opened.
# 3: where a job's worker runs on a cluster (launcher.kind = "slurm"): jobs.slurm_id (the attempt's
# Slurm job, how a restarted daemon finds it again), jobs.node, jobs.slurm_reason (why Slurm keeps
# it pending). NULL for local workers.
# 4: what a job is as an experiment, fixed when it is queued: jobs.experiment and intents.experiment
# (JSON: settings, lineage, start_from, after, sweep; trainconsole.engine.store.types.Experiment).
# 5: how a job's training went, kept by the daemon as it runs: jobs.last_loss, jobs.eval_loss and
# jobs.adapter (the folder it published), so status --json needs no log reading.
# 6: acknowledged alerts (trainconsole.engine.store.acks), shared by every console: the acks
# table, and meta.acked_before once `ack --all` is used.
# Each upgrade is one step of MIGRATIONS, in order (see _create).

DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    name BLOB NOT NULL,
    filename TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    priority TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    error_class TEXT,
    error TEXT,
    overrides TEXT NOT NULL DEFAULT '{}',
    history TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    pid INTEGER,
    pid_start TEXT,
    step INTEGER,
    max_steps INTEGER,
    slurm_id INTEGER,
    node TEXT,
    slurm_reason TEXT,
    experiment TEXT NOT NULL DEFAULT '{}',
    last_loss REAL,
    eval_loss REAL,
    adapter TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE INDEX IF NOT EXISTS jobs_sha ON jobs(sha256);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    job_id TEXT,
    arg TEXT,
    created_at REAL NOT NULL
);
-- A file being taken into jobs/: written before the file moves, deleted in the transaction that
-- inserts the job, so a kill at any point is finished or undone at the next open, never doubled.
CREATE TABLE IF NOT EXISTS intents (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    src BLOB NOT NULL,
    name BLOB NOT NULL,
    filename TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    priority TEXT NOT NULL,
    mode TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    created_at REAL NOT NULL,
    owner_start TEXT,
    experiment TEXT NOT NULL DEFAULT '{}'
);
-- Acknowledged alerts: per key, the time of the newest occurrence acknowledged.
CREATE TABLE IF NOT EXISTS acks (
    key TEXT PRIMARY KEY,
    t REAL NOT NULL,
    acked_at REAL NOT NULL
);
"""

def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(os.fspath(path), timeout=30.0, isolation_level=None,
                           check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _corruption(path: Path) -> str | None:
    """Why the file cannot be used as our database, or None if it can (or does not exist yet)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise unavailable(path, exc) from exc
    if not os.path.isfile(path) or os.path.islink(path):
        return "is not a regular file"
    if st.st_size == 0:
        return None
    # The header is read through SQLite, never with open(): closing any descriptor of the file
    # drops every POSIX lock this process holds on it, the shared lock of its open connections
    # among them, so another process closing its connection would think itself the last one,
    # checkpoint and reset the WAL under them, and they would read a stale database from then on.
    try:
        conn = connect(path)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise unavailable(path, exc) from exc
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
            return "is not an SQLite database"
        return f"is unreadable ({exc})"
    if rows != [("ok",)]:
        return "failed its integrity check (" + "; ".join(str(r[0]) for r in rows[:3]) + ")"
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: job database schema {version} is newer than this trainconsole understands "
            f"({SCHEMA_VERSION}); upgrade trainconsole, or move the file away to rebuild it"
        )
    return None


def is_corruption(exc: sqlite3.Error) -> bool:
    """Damage, as opposed to a locked, read-only or full disk, which must never cost the file."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or (
        not name and not isinstance(exc, sqlite3.OperationalError))


def unavailable(path: Path, exc: BaseException) -> TrainconsoleError:
    return TransientError(f"{path}: the job database cannot be opened ({exc}); check the queue "
                          "folder's permissions and free space", case=46)


@contextlib.contextmanager
def _rebuild_lock(layout: Layout) -> Iterator[None]:
    """Serialises move-aside and rebuild between processes that noticed the damage together."""
    fd = os.open(layout.queue / ".state.db.rebuild-lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def open_database(layout: Layout) -> tuple[sqlite3.Connection, str | None, Path | None]:
    """Open (creating or rebuilding as needed). Returns the connection, and when the old database
    was set aside, the reason and where it went."""
    layout.queue.mkdir(parents=True, exist_ok=True)
    path = layout.state_db
    problem = _corruption(path)
    aside: Path | None = None
    if problem is not None:
        with _rebuild_lock(layout):
            problem = _corruption(path)  # another process may have rebuilt it meanwhile
            if problem is not None:
                _refuse_if_engine_elsewhere(layout, problem)
                aside = _move_aside(path)
                conn = _create(path)
                rebuild_from_folders(conn, layout)
                return conn, problem, aside
    try:
        return _create(path), None, None
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise unavailable(path, exc) from exc
        # Damage quick_check missed but schema setup hit: same treatment.
        with _rebuild_lock(layout):
            _refuse_if_engine_elsewhere(layout, f"is unreadable ({exc})")
            aside = _move_aside(path)
            conn = _create(path)
            rebuild_from_folders(conn, layout)
            return conn, f"is unreadable ({exc})", aside


def _refuse_if_engine_elsewhere(layout: Layout, problem: str) -> None:
    """Only a process that is the engine, or that runs while no engine does, may set the database
    aside: a running engine keeps writing to the file it has open, and a second database beside
    it would split the queue in two. The engine's lock (``trainconsole.engine.lock``, an flock) says who runs."""
    info = read_pidfile(layout)
    if info is not None and info.pid == os.getpid():
        return  # we are the engine
    try:
        fd = os.open(layout.lockfile, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise TransientError(
            f"{layout.state_db} {problem}; the running engine will set it aside and rebuild it from "
            "the queue folders when it restarts (`trainconsole stop`, then start it again)", case=58,
        ) from None
    finally:
        os.close(fd)  # closing drops the probe's lock


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    fsio.move(path, target)
    for suffix in ("-wal", "-shm", "-journal"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            with contextlib.suppress(OSError):
                fsio.move(extra, target.with_name(target.name + suffix))
    fsio.fsync_dir(path.parent)
    return target


def _create(path: Path) -> sqlite3.Connection:
    conn = connect(path)
    try:
        if int(conn.execute("PRAGMA page_count").fetchone()[0]) == 0:
            # Only a file with no page yet takes it without a VACUUM (trainconsole.engine.store.upkeep).
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            # Re-read under the write lock: another process may have just created or migrated it.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version >= 1:  # 0: a new file, made whole by the DDL below
                for step in MIGRATIONS[version - 1:]:
                    step(conn)
            for statement in DDL.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('next_seq', '1')")
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('paused', '0')")
            conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()
        raise
    return conn


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Schema 1 kept a worker's psutil create time, which a clock step moves. Those floats become
    ``legacy:`` identities (still compared the old way, so a worker started before the upgrade is
    recognised); intents gain the owner's identity (NULL for those already written: judged by the
    old rule)."""
    conn.execute("ALTER TABLE intents ADD COLUMN owner_start TEXT")
    rows = conn.execute("SELECT seq, pid_start FROM jobs WHERE typeof(pid_start) IN ('real', 'integer')")
    conn.executemany("UPDATE jobs SET pid_start=? WHERE seq=?",
                     [(from_stored(value), seq) for seq, value in rows.fetchall()])


SLURM_COLUMNS = (("slurm_id", "INTEGER"), ("node", "TEXT"), ("slurm_reason", "TEXT"))


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """Schema 2 knew only local workers: the cluster columns are added, empty."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
    for name, kind in SLURM_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")


def _add_columns(conn: sqlite3.Connection, table: str, columns: tuple[tuple[str, str], ...]) -> None:
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns:
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def _migrate_3_to_4(conn: sqlite3.Connection) -> None:
    """Jobs before experiments trained with config.toml and continued adapters/latest: an empty
    experiment means exactly that (lineage main, settings read from config.toml when it runs)."""
    _add_columns(conn, "jobs", (("experiment", "TEXT NOT NULL DEFAULT '{}'"),))
    _add_columns(conn, "intents", (("experiment", "TEXT NOT NULL DEFAULT '{}'"),))


def _migrate_4_to_5(conn: sqlite3.Connection) -> None:
    """Training results start empty; a finished job's adapter is still found in adapters/."""
    _add_columns(conn, "jobs", (("last_loss", "REAL"), ("eval_loss", "REAL"), ("adapter", "TEXT")))


def _migrate_5_to_6(conn: sqlite3.Connection) -> None:
    """No alert was acknowledged in the store before: the table starts empty."""
    conn.execute("CREATE TABLE IF NOT EXISTS acks (key TEXT PRIMARY KEY, t REAL NOT NULL, "
                 "acked_at REAL NOT NULL)")


# MIGRATIONS[i] upgrades a schema-(i + 1) file to schema i + 2, in place, inside _create's
# transaction. A new schema is one more small step at the end, never an edit of an earlier one.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migrate_1_to_2, _migrate_2_to_3, _migrate_3_to_4, _migrate_4_to_5, _migrate_5_to_6)
SCHEMA_VERSION = len(MIGRATIONS) + 1
