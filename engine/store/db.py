"""The store's shared database object: the one connection, its write transaction with
after-commit callbacks, a row <-> ``Job``, and the file side of a change (the sidecar rewritten
before commit, the folder move after it, the ``job`` event).

``Store`` (the operator-facing API), ``add`` (taking files in), ``repair`` (finishing what a kill
interrupted) and ``view`` (status text) each take a ``Database``; none of them reaches into
another's members, and none imports ``Store``.

One connection may serve several threads (a console's poller), so every transaction holds
``lock``: one at a time. Writes are ``BEGIN IMMEDIATE`` (the write lock up front, so a busy
database fails at the start, never half-way); reads that must see rows and flags from one
snapshot use ``read()``, kept short so a console polling all day never stops WAL checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from trainconsole.engine import fsio
from trainconsole.engine.events import EventLog
from trainconsole.engine.layout import Layout
from trainconsole.engine.names import display
from trainconsole.engine.procid import from_stored
from trainconsole.engine.store import files as sf
from trainconsole.engine.store.folders import COLUMNS, folder_for
from trainconsole.engine.store.types import Experiment, Job, QueueError

Row = dict[str, Any]
"""A ``jobs`` row by column name (``COLUMNS``); ``overrides``/``history`` as JSON text or values."""

AfterCommit = list[Callable[[], None]]
"""Callbacks a write transaction runs once it has committed (file moves, events)."""

_SELECT = f"SELECT {','.join(COLUMNS)} FROM jobs"
_INSERT = f"INTO jobs({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})"
_SIDECAR_KEYS = ("id", "filename", "sha256", "size", "priority", "status", "attempts", "created_at",
                 "queued_at", "error_class", "error")


class Database:
    """The connection to ``queue/state.db`` and the queue folders it describes."""

    def __init__(self, conn: sqlite3.Connection, layout: Layout, events: EventLog,
                 clock: Callable[[], float], *, memo: bool = False) -> None:
        self.conn = conn
        self.layout = layout
        self.events = events
        self.clock = clock
        self.lock = threading.RLock()
        # With ``memo`` (the console), the Job each row last gave, by the row's raw values: a poll
        # that rereads the whole queue because one job's progress moved builds one Job, not thirty,
        # and hands back the same objects for the rest (Jobs are frozen; a watcher compares them by
        # identity). The engine goes without: it would hold every job it ever ran, for nothing.
        self._made: dict[tuple[Any, ...], Job] | None = {} if memo else None

    # -- transactions -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[AfterCommit]:
        """One short write transaction; callbacks appended to the yielded list run after commit."""
        after: AfterCommit = []
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield after
                self.conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (I/O error, disk full): never leave a transaction open.
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                raise
            for func in after:
                func()

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One short read transaction: every statement inside sees the same snapshot."""
        with self.lock:
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            finally:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("COMMIT")

    # -- rows and jobs ----------------------------------------------------------------------------

    def row(self, job_id: str) -> Row:
        if not job_id.isascii():
            # Ids are ASCII; an argv byte that is not UTF-8 arrives as a surrogate sqlite cannot bind.
            raise QueueError(f"no job {job_id!r} (see `trainconsole status` for the job ids)")
        found = self.conn.execute(f"{_SELECT} WHERE id=?", (job_id,)).fetchone()
        if found is None:
            raise QueueError(f"no job {job_id!r} (see `trainconsole status` for the job ids)")
        return dict(zip(COLUMNS, found, strict=True))

    def job(self, row: Row) -> Job:
        return Job(
            id=row["id"], name=os.fsdecode(bytes(row["name"])),
            path=folder_for(self.layout, row["status"]) / row["filename"],
            sha256=row["sha256"], size=row["size"], priority=row["priority"], status=row["status"],
            attempts=row["attempts"], next_attempt_at=row["next_attempt_at"],
            error_class=row["error_class"], error=row["error"],
            overrides=orjson.loads(row["overrides"]), created_at=row["created_at"],
            started_at=row["started_at"], finished_at=row["finished_at"], pid=row["pid"],
            pid_start=from_stored(row["pid_start"]), step=row["step"], max_steps=row["max_steps"],
            queued_at=row["queued_at"], seq=row["seq"], history=tuple(orjson.loads(row["history"])),
            slurm_id=row["slurm_id"], node=row["node"], slurm_reason=row["slurm_reason"],
            experiment=Experiment.from_json(row["experiment"]), last_loss=row["last_loss"],
            eval_loss=row["eval_loss"], adapter=row["adapter"],
        )

    def jobs(self, statuses: Iterable[str] | None = None) -> list[Job]:
        sql = _SELECT
        params: list[str] = []
        if statuses is not None:
            params = list(statuses)
            sql += f" WHERE status IN ({','.join('?' * len(params))})"
        rows = self.conn.execute(sql + " ORDER BY seq", params).fetchall()
        made = self._made
        if made is None:
            return [self.job(dict(zip(COLUMNS, raw, strict=True))) for raw in rows]
        jobs = []
        for raw in rows:
            job = made.get(raw)
            if job is None:
                job = self.job(dict(zip(COLUMNS, raw, strict=True)))
            jobs.append(job)
        if statuses is None:  # the whole queue: what it holds now is all worth keeping
            self._made = dict(zip(rows, jobs, strict=True))
        return jobs

    def duplicate_of(self, sha256: str) -> Job | None:
        """The job that already has this content (cancelled ones do not count), if any."""
        found = self.conn.execute(f"{_SELECT} WHERE sha256=? AND status!='cancelled' ORDER BY seq LIMIT 1",
                                  (sha256,)).fetchone()
        return self.job(dict(zip(COLUMNS, found, strict=True))) if found else None

    def paused(self) -> bool:
        flag = self.conn.execute("SELECT value FROM meta WHERE key='paused'").fetchone()
        return bool(flag and flag[0] == "1")

    def insert(self, row: Row | tuple[Any, ...], *, or_ignore: bool = False) -> None:
        """A new ``jobs`` row, inside the open transaction (a dict by column name, or a tuple in
        ``COLUMNS`` order)."""
        values = [row[c] for c in COLUMNS] if isinstance(row, dict) else list(row)
        self.conn.execute(("INSERT OR IGNORE " if or_ignore else "INSERT ") + _INSERT, values)

    def update(self, row: Row, after: AfterCommit, **changes: Any) -> Job:
        """Apply changes to one job inside the open transaction: database, then sidecar (still
        before commit), then, after commit, the file's move to its new folder."""
        old_folder = folder_for(self.layout, row["status"])
        new = {**row, **changes}
        for key in ("overrides", "history", "experiment"):
            if isinstance(new[key], Experiment):
                new[key] = new[key].to_json()
            elif not isinstance(new[key], str):
                new[key] = orjson.dumps(new[key]).decode()
        sets = ",".join(f"{k}=?" for k in changes)
        self.conn.execute(f"UPDATE jobs SET {sets} WHERE id=?", [new[k] for k in changes] + [row["id"]])
        self.write_sidecar(new, old_folder)
        new_folder = folder_for(self.layout, new["status"])
        if new_folder != old_folder:
            after.append(lambda: self.move_files(new["id"], new["filename"], old_folder, new_folder))
        job = self.job(new)
        if new["status"] != row["status"]:
            after.append(lambda: self.emit(job))
        return job

    def commit_intent(self, row: Row) -> Job:
        """Record a job whose file already arrived in ``jobs/`` and forget its intent, in one commit."""
        with self.write() as after:
            self.insert(row, or_ignore=True)
            self.write_sidecar(row, self.layout.jobs)
            self.conn.execute("DELETE FROM intents WHERE seq=?", (row["seq"],))
            job = self.job(row)
            after.append(lambda: self.emit(job, "added"))
        return job

    # -- the file side ----------------------------------------------------------------------------

    def write_sidecar(self, row: Row, folder: Path, *, sync_dir: bool = True) -> None:
        meta = {k: row[k] for k in _SIDECAR_KEYS}
        meta["name_hex"] = bytes(row["name"]).hex()
        meta["name"] = display(os.fsdecode(bytes(row["name"])))
        for key in ("overrides", "history", "experiment"):
            value = row[key]
            meta[key] = orjson.loads(value) if isinstance(value, str) else value
        if isinstance(meta["experiment"], Experiment):
            meta["experiment"] = orjson.loads(meta["experiment"].to_json())
        sf.write_sidecar(folder, self.layout.tmp, meta, sync_dir=sync_dir)

    def move_files(self, job_id: str, filename: str, src: Path, dst: Path) -> None:
        """A job's file and sidecar from one queue folder to another (after the commit that says so)."""
        dst.mkdir(parents=True, exist_ok=True)
        sf.move(src / filename, dst / filename)
        sf.move(src / sf.sidecar_name(job_id), dst / sf.sidecar_name(job_id))
        if src == self.layout.failed:  # a report belongs to the failure it describes
            with contextlib.suppress(OSError):
                os.unlink(src / sf.report_name(filename))
        fsio.fsync_dir(dst)
        fsio.fsync_dir(src)

    def emit(self, job: Job, reason: str | None = None) -> None:
        fields: dict[str, Any] = {"job_id": job.id, "status": job.status}
        if reason:
            fields["reason"] = reason
        self.events.emit("job", **fields)
