"""The job store: the only module that touches ``queue/state.db``.

Every write is one short ``BEGIN IMMEDIATE`` transaction; every read is one statement or a short
read transaction, so a console polling all day never holds a snapshot that stops WAL checkpoints.
A job's file lives in ``jobs/`` while it is queued, held or running, in ``done/`` once done and in
``failed/`` once failed or cancelled. A change of folder commits in the database first and moves
the file after; ``Store.open`` finishes any move a kill interrupted, and any file half-taken into
``jobs/`` (see the ``intents`` table in ``trainconsole.engine.store.schema``). The sidecar ``<id>.json`` beside
each file is rewritten inside the transaction that changes the job, before it commits, so a rebuild
from the folders (case 58) never sees fewer attempts than the database did.

Scheduling (priorities, aging, back-off, clock-skew clamp) is in ``trainconsole.engine.store.scheduling``; its
docstring states the starvation bound (case 59).
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from trainconsole.engine.errors import PERMANENT, ErrorClass
from trainconsole.engine.events import EventLog
from trainconsole.engine.layout import Layout
from trainconsole.engine.procid import from_stored
from trainconsole.engine.store import files as sf
from trainconsole.engine.store import scheduling as sch
from trainconsole.engine.store.schema import COLUMNS, folder_for, open_database, unavailable
from trainconsole.engine.store.schema import SCHEMA_VERSION as SCHEMA_VERSION
from trainconsole.engine.store.types import ACTIVE as ACTIVE
from trainconsole.engine.store.types import STATUSES as STATUSES
from trainconsole.engine.store.types import Command as Command
from trainconsole.engine.store.types import Job as Job
from trainconsole.engine.store.types import QueueError as QueueError

if TYPE_CHECKING:
    from trainconsole.engine.store.add import Added, NewFile

_NO_CHARGE = (ErrorClass.DISK_FULL, ErrorClass.INTERRUPTED)


class Store:
    """Open with ``Store.open(layout, events, policy=cfg.queue)``; ``policy`` defaults to the
    documented queue defaults, ``clock`` (wall seconds) is injectable for tests."""

    def __init__(self, conn: sqlite3.Connection, layout: Layout, events: EventLog,
                 policy: sch.QueuePolicy, clock: Callable[[], float], rng: random.Random) -> None:
        self._conn = conn
        self.layout = layout
        self.events = events
        self.policy = policy
        self.clock = clock
        self._rng = rng
        self._own_events = False
        self.rebuilt: tuple[str, Path] | None = None  # (what was wrong, where the old file went)
        # One connection may serve several threads (a console's poller): one transaction at a time.
        self._lock = threading.RLock()

    @classmethod
    def open(cls, layout: Layout, events: EventLog | None = None, *,
             policy: sch.QueuePolicy | None = None, clock: Callable[[], float] = time.time,
             repair: bool = True, rng: random.Random | None = None) -> Store:
        """``repair=False`` skips the folder reconciliation (for quick read-only callers such as
        ``trainconsole status``); a corrupt database is set aside and rebuilt either way."""
        try:
            conn, problem, aside = open_database(layout)
        except OSError as exc:
            raise unavailable(layout.state_db, exc) from exc
        # Without a log given, events still go to the engine's: a rebuild must never pass unsaid.
        store = cls(conn, layout, events if events is not None else EventLog(layout.engine_events),
                    policy or sch.DefaultPolicy(), clock, rng or random.Random())
        store._own_events = events is None
        store.rebuilt = (problem, aside) if problem is not None and aside is not None else None
        if problem is not None:
            store.events.alert(
                58, f"job database {layout.state_db} {problem}; kept as {aside} and rebuilt from the "
                f"queue folders ({len(store.jobs())} jobs)", severity="warning", key="store-rebuilt")
        if repair:
            from trainconsole.engine.store.repair import repair as _repair

            _repair(store)
        return store

    def close(self) -> None:
        self._conn.close()
        if self._own_events:
            self.events.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[list[Callable[[], None]]]:
        """One short write transaction; callbacks appended to the yielded list run after commit."""
        after: list[Callable[[], None]] = []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield after
                self._conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (I/O error, disk full): never leave a transaction open.
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            for func in after:
                func()

    def _row(self, job_id: str) -> dict[str, Any]:
        if not job_id.isascii():
            # Ids are ASCII; an argv byte that is not UTF-8 arrives as a surrogate sqlite cannot bind.
            raise QueueError(f"no job {job_id!r} (see `trainconsole status` for the job ids)")
        cur = self._conn.execute(f"SELECT {','.join(COLUMNS)} FROM jobs WHERE id=?", (job_id,))
        row = cur.fetchone()
        if row is None:
            raise QueueError(f"no job {job_id!r} (see `trainconsole status` for the job ids)")
        return dict(zip(COLUMNS, row, strict=True))

    def _job(self, row: dict[str, Any]) -> Job:
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
        )

    def _update(self, row: dict[str, Any], after: list[Callable[[], None]], **changes: Any) -> Job:
        """Apply changes to one job inside the open transaction: database, then sidecar (still
        before commit), then, after commit, the file's move to its new folder."""
        old_folder = folder_for(self.layout, row["status"])
        new = {**row, **changes}
        for key in ("overrides", "history"):
            if not isinstance(new[key], str):
                new[key] = orjson.dumps(new[key]).decode()
        sets = ",".join(f"{k}=?" for k in changes)
        self._conn.execute(f"UPDATE jobs SET {sets} WHERE id=?",
                           [new[k] for k in changes] + [row["id"]])
        self._write_sidecar(new, old_folder)
        new_folder = folder_for(self.layout, new["status"])
        if new_folder != old_folder:
            after.append(lambda: self._move_files(new["id"], new["filename"], old_folder, new_folder))
        job = self._job(new)
        if new["status"] != row["status"]:
            after.append(lambda: self._emit(job))
        return job

    def _write_sidecar(self, row: dict[str, Any], folder: Path, *, sync_dir: bool = True) -> None:
        meta = {k: row[k] for k in ("id", "filename", "sha256", "size", "priority", "status",
                                    "attempts", "created_at", "queued_at", "error_class", "error")}
        meta["name_hex"] = bytes(row["name"]).hex()
        meta["name"] = sf.display(os.fsdecode(bytes(row["name"])))
        for key in ("overrides", "history"):
            value = row[key]
            meta[key] = orjson.loads(value) if isinstance(value, str) else value
        sf.write_sidecar(folder, self.layout.tmp, meta, sync_dir=sync_dir)

    def _move_files(self, job_id: str, filename: str, src: Path, dst: Path) -> None:
        dst.mkdir(parents=True, exist_ok=True)
        sf.move(src / filename, dst / filename)
        sf.move(src / sf.sidecar_name(job_id), dst / sf.sidecar_name(job_id))
        if src == self.layout.failed:  # a report belongs to the failure it describes
            with contextlib.suppress(OSError):
                os.unlink(src / sf.report_name(filename))
        sf.fsync_dir(dst)
        sf.fsync_dir(src)

    def _emit(self, job: Job, reason: str | None = None) -> None:
        fields: dict[str, Any] = {"job_id": job.id, "status": job.status}
        if reason:
            fields["reason"] = reason
        self.events.emit("job", **fields)

    # -- adding -----------------------------------------------------------------------------------

    def duplicate_of(self, sha256: str) -> Job | None:
        """The job that already has this content (cancelled ones do not count), if any."""
        cur = self._conn.execute(
            f"SELECT {','.join(COLUMNS)} FROM jobs WHERE sha256=? AND status!='cancelled' "
            "ORDER BY seq LIMIT 1", (sha256,))
        row = cur.fetchone()
        return self._job(dict(zip(COLUMNS, row, strict=True))) if row else None

    def add_job(self, name: str, path: Path, sha256: str, size: int, priority: str = "normal",
                force: bool = False, *, move: bool = False) -> Job | None:
        """Take the file at ``path`` into ``jobs/`` as a new queued job. ``move=True`` (the inbox)
        renames it, or copies then unlinks across filesystems; otherwise it is copied and the
        caller's file stays. Returns None, taking nothing, when a job already has the same content
        and ``force`` is false (case 53). A source that vanished raises ``DataError`` (case 51)."""
        from trainconsole.engine.store.add import NewFile

        (result,) = self.add_files([NewFile(name, Path(path), sha256, size, priority, move)], force=force)
        if result.error is not None:
            raise result.error
        return result.job

    def add_files(self, files: list[NewFile], *, force: bool = False) -> list[Added]:
        """Several files at once (two commits and one fsync per folder for the lot); one
        ``Added`` per file, in order, with its job, None for a duplicate, or its error."""
        from trainconsole.engine.store.add import add_files

        return add_files(self, files, force=force)

    def _commit_intent(self, row: dict[str, Any]) -> Job:
        with self._write() as after:
            self._conn.execute(f"INSERT OR IGNORE INTO jobs({','.join(COLUMNS)}) VALUES "
                               f"({','.join('?' * len(COLUMNS))})", [row[c] for c in COLUMNS])
            self._write_sidecar(row, self.layout.jobs)
            self._conn.execute("DELETE FROM intents WHERE seq=?", (row["seq"],))
            job = self._job(row)
            after.append(lambda: self._emit(job, "added"))
        return job

    # -- reading ----------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        try:
            return self._job(self._row(job_id))
        except QueueError:
            return None

    def require(self, job_id: str) -> Job:
        return self._job(self._row(job_id))

    def jobs(self, statuses: Iterable[str] | None = None) -> list[Job]:
        sql = f"SELECT {','.join(COLUMNS)} FROM jobs"
        params: list[str] = []
        if statuses is not None:
            params = list(statuses)
            sql += f" WHERE status IN ({','.join('?' * len(params))})"
        rows = self._conn.execute(sql + " ORDER BY seq", params).fetchall()
        return [self._job(dict(zip(COLUMNS, r, strict=True))) for r in rows]

    def paused(self) -> bool:
        row = self._conn.execute("SELECT value FROM meta WHERE key='paused'").fetchone()
        return bool(row and row[0] == "1")

    def set_paused(self, paused: bool) -> None:
        with self._write():
            self._conn.execute("UPDATE meta SET value=? WHERE key='paused'", ("1" if paused else "0",))
        self.events.emit("log", level="info", message="queue paused" if paused else "queue resumed")

    # -- scheduling -------------------------------------------------------------------------------

    def _runnable_order(self, now: float) -> list[Job]:
        """Queued jobs that may start now, best first (see ``trainconsole.engine.store.scheduling``)."""
        pol = self.policy
        ready = [j for j in self.jobs(["queued"])
                 if sch.is_due(j.next_attempt_at, now, pol.backoff_max_s)]
        ready.sort(key=lambda j: sch.order_key(j.priority, j.queued_at, j.seq, now, pol.aging_s))
        return ready

    def next_runnable(self, now: float | None = None) -> Job | None:
        now = self.clock() if now is None else now
        limit = now + self.policy.backoff_max_s
        if self._conn.execute("SELECT 1 FROM jobs WHERE status='queued' AND next_attempt_at>? LIMIT 1",
                              (limit,)).fetchone():
            # Clock set back (case 47): pin far-future retry times so they cannot drift forever.
            with self._write():
                self._conn.execute("UPDATE jobs SET next_attempt_at=? WHERE status='queued' AND "
                                   "next_attempt_at>?", (limit, limit))
        if self.paused():
            return None
        order = self._runnable_order(now)
        return order[0] if order else None

    def start(self, job_id: str, pid: int | None = None, pid_start: str | None = None) -> Job:
        """Mark running and count the attempt, durably, before the worker exists: a worker the
        kernel kills still used up an attempt (case 60)."""
        with self._write() as after:
            row = self._row(job_id)
            if row["status"] != "queued":
                raise QueueError(f"{job_id} is {row['status']}; only a queued job can be started")
            return self._update(row, after, status="running", attempts=row["attempts"] + 1,
                                started_at=self.clock(), finished_at=None, next_attempt_at=None,
                                pid=pid, pid_start=pid_start, step=None)

    def set_worker(self, job_id: str, pid: int | None, pid_start: str | None) -> None:
        with self._write():
            self._conn.execute("UPDATE jobs SET pid=?, pid_start=? WHERE id=?", (pid, pid_start, job_id))

    def progress(self, job_id: str, step: int, max_steps: int | None) -> None:
        with self._write():
            self._conn.execute("UPDATE jobs SET step=?, max_steps=? WHERE id=?", (step, max_steps, job_id))

    def succeed(self, job_id: str) -> Job:
        with self._write() as after:
            row = self._row(job_id)
            return self._update(row, after, status="done", finished_at=self.clock(), pid=None,
                                pid_start=None, error_class=None, error=None)

    def fail_attempt(self, job_id: str, error_class: str | ErrorClass, message: str,
                     report: str | None = None) -> Job:
        """The retry policy. Permanent classes go straight to failed/; disk-full and interrupted
        attempts are not charged (disk-full also pauses the queue); others wait a back-off, until
        ``max_attempts`` is used up and the job moves to failed/ with a report (case 60)."""
        try:
            cls: ErrorClass | None = ErrorClass(error_class)
        except ValueError:
            cls = None  # an unknown class is treated as a bug: reported, not retried
        with self._write() as after:
            row = self._row(job_id)
            if row["status"] in ("done", "failed", "cancelled"):
                raise QueueError(f"{job_id} is already {row['status']}")
            now = self.clock()
            history = [*orjson.loads(row["history"]),
                       {"attempt": row["attempts"], "class": str(error_class), "message": message, "t": now}]
            common: dict[str, Any] = {"error_class": str(error_class), "error": message,
                                      "history": history, "pid": None, "pid_start": None}
            if cls in _NO_CHARGE:
                if cls is ErrorClass.DISK_FULL:
                    self._conn.execute("UPDATE meta SET value='1' WHERE key='paused'")
                refund = 1 if row["status"] == "running" else 0
                return self._update(row, after, status="queued", attempts=max(0, row["attempts"] - refund),
                                    next_attempt_at=None, **common)
            if cls in PERMANENT or cls is None or row["attempts"] >= self.policy.max_attempts:
                final = ("permanent error, not retried" if (cls in PERMANENT or cls is None)
                         else f"gave up after {row['attempts']} attempts")
                return self._to_failed(row, after, final, report, common)
            delay = sch.backoff_delay(row["attempts"], self.policy.backoff_s, self.policy.backoff_max_s,
                                      self._rng)
            return self._update(row, after, status="queued", next_attempt_at=now + delay, **common)

    def _to_failed(self, row: dict[str, Any], after: list[Callable[[], None]], final: str,
                   traceback: str | None, common: dict[str, Any], status: str = "failed") -> Job:
        history = common.get("history", orjson.loads(row["history"]))
        text = sf.report_text(row["id"], os.fsdecode(bytes(row["name"])), row["attempts"],
                              self.policy.max_attempts, list(history), final, traceback)
        target = self.layout.failed / sf.report_name(row["filename"])
        after.append(lambda: sf.atomic_write(target, text.encode("utf-8", "replace"), self.layout.tmp))
        if status == "failed":
            def alert() -> None:
                self.events.alert(
                    60 if "gave up" in final else None,
                    f"{row['id']} ({sf.display(os.fsdecode(bytes(row['name'])))}) failed: {final}; "
                    f"report in {target}", severity="warning", job_id=row["id"], key=f"failed-{row['id']}")
            after.append(alert)
        return self._update(row, after, status=status, finished_at=self.clock(), next_attempt_at=None,
                            **common)

    def requeue(self, job_id: str, *, overrides: dict[str, Any] | None = None,
                charge_attempt: bool = False, reason: str = "") -> Job:
        """Back to the queue at once (OOM ladder, interruption, a job found running after a crash).
        Uncharged, the attempt counted by ``start`` is given back; charged, the policy's limit
        applies and an exhausted job goes to failed/."""
        with self._write() as after:
            row = self._row(job_id)
            if row["status"] not in ACTIVE:
                raise QueueError(f"{job_id} is {row['status']}; only an active job can be requeued")
            merged = {**orjson.loads(row["overrides"]), **(overrides or {})}
            common: dict[str, Any] = {"overrides": merged, "pid": None, "pid_start": None}
            attempts = row["attempts"]
            if not charge_attempt and row["status"] == "running":
                attempts = max(0, attempts - 1)
            elif charge_attempt and attempts >= self.policy.max_attempts:
                history = [*orjson.loads(row["history"]), {"attempt": attempts, "class": "requeue",
                                                           "message": reason, "t": self.clock()}]
                return self._to_failed(row, after, f"gave up after {attempts} attempts", None,
                                       {**common, "history": history, "error": reason or None})
            status = "held" if row["status"] == "held" else "queued"
            job = self._update(row, after, status=status, attempts=attempts, next_attempt_at=None, **common)
            if reason:
                after.append(lambda: self._emit(job, reason))
            return job

    # -- operator actions -------------------------------------------------------------------------

    def set_priority(self, job_id: str, priority: str) -> Job:
        sch.check_level(priority)
        with self._write() as after:
            row = self._row(job_id)
            if row["status"] not in ACTIVE:
                raise QueueError(f"{job_id} is {row['status']}; its priority no longer matters")
            return self._update(row, after, priority=priority)

    def hold(self, job_id: str) -> Job:
        with self._write() as after:
            row = self._row(job_id)
            if row["status"] == "held":
                return self._job(row)
            if row["status"] != "queued":
                raise QueueError(f"{job_id} is {row['status']}; only a queued job can be held")
            return self._update(row, after, status="held")

    def release(self, job_id: str) -> Job:
        with self._write() as after:
            row = self._row(job_id)
            if row["status"] == "queued":
                return self._job(row)
            if row["status"] != "held":
                raise QueueError(f"{job_id} is {row['status']}; only a held job can be released")
            return self._update(row, after, status="queued", queued_at=self.clock())

    def retry(self, job_id: str) -> Job:
        """Failed or cancelled (or waiting out a back-off): queue it now with its attempts reset."""
        with self._write() as after:
            row = self._row(job_id)
            if row["status"] not in ("failed", "cancelled", "queued"):
                raise QueueError(f"{job_id} is {row['status']}; only a failed or cancelled job can be retried")
            data = folder_for(self.layout, row["status"]) / row["filename"]
            if not data.is_file():
                # Queued again it could only fail: the engine's copy is all a job ever reads.
                raise QueueError(f"{job_id}: its data file {data} is gone, so it cannot be retried; "
                                 "add the file again with `trainconsole add`")
            return self._update(row, after, status="queued", attempts=0, next_attempt_at=None,
                                error_class=None, error=None, queued_at=self.clock(), finished_at=None)

    def retry_all_failed(self) -> list[Job]:
        """Every failed job, retried; an empty list when there is none (case 57). A job whose data
        file is gone is left failed (``retry`` says why), not a reason to stop half-way."""
        retried = []
        for job in self.jobs(["failed"]):
            with contextlib.suppress(QueueError):
                retried.append(self.retry(job.id))
        return retried

    def cancel(self, job_id: str, *, worker_stopped: bool = False) -> Job:
        """A queued or held job is cancelled at once (its file goes to failed/). A running one is
        asked to stop: a ``cancel`` command for the daemon, which, once the worker is gone, calls
        ``cancel(job_id, worker_stopped=True)``."""
        with self._write() as after:
            row = self._row(job_id)
            if row["status"] in ("done", "failed", "cancelled"):
                raise QueueError(f"{job_id} is already {row['status']}")
            if row["status"] == "running" and not worker_stopped:
                self._insert_command("cancel", job_id, None)
                return self._job(row)
            return self._to_failed(row, after, "cancelled by the operator", None,
                                   {"pid": None, "pid_start": None}, status="cancelled")

    # -- commands ---------------------------------------------------------------------------------

    def _insert_command(self, kind: str, job_id: str | None, arg: Any) -> int:
        cur = self._conn.execute("INSERT INTO commands(kind, job_id, arg, created_at) VALUES (?,?,?,?)",
                                 (kind, job_id, orjson.dumps(arg).decode(), self.clock()))
        return int(cur.lastrowid or 0)

    def post_command(self, kind: str, job_id: str | None = None, arg: Any = None) -> int:
        with self._write():
            return self._insert_command(kind, job_id, arg)

    def take_commands(self) -> list[Command]:
        with self._write():
            rows = self._conn.execute("SELECT id, kind, job_id, arg, created_at FROM commands "
                                      "ORDER BY id").fetchall()
            if rows:
                self._conn.execute("DELETE FROM commands WHERE id<=?", (rows[-1][0],))
        return [Command(r[0], r[1], r[2], orjson.loads(r[3]) if r[3] else None, r[4]) for r in rows]

    # -- reasons ----------------------------------------------------------------------------------

    def reasons(self, now: float | None = None, jobs: list[Job] | None = None) -> dict[str, str]:
        """squeue-style REASON for every job (or those given), computed in one pass."""
        from trainconsole.engine.store.view import reasons

        return reasons(self, self.clock() if now is None else now, self.jobs() if jobs is None else jobs)

    def reason(self, job: Job, now: float | None = None) -> str:
        return self.reasons(now).get(job.id, job.status)

    def snapshot(self, now: float | None = None) -> tuple[bool, list[dict[str, Any]]]:
        """(paused, every job as a JSON-ready dict with its reason): the fast path for status."""
        from trainconsole.engine.store.view import snapshot

        return snapshot(self, self.clock() if now is None else now)
