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
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from trainconsole.engine.errors import PERMANENT, ErrorClass
from trainconsole.engine.events import EventLog
from trainconsole.engine.layout import Layout
from trainconsole.engine.names import display
from trainconsole.engine.store import files as sf
from trainconsole.engine.store import scheduling as sch
from trainconsole.engine.store import view
from trainconsole.engine.store.acks import AlertAcks
from trainconsole.engine.store.add import Added, NewFile, add_files
from trainconsole.engine.store.db import AfterCommit, Database, Row
from trainconsole.engine.store.folders import folder_for
from trainconsole.engine.store.repair import repair as repair_folders
from trainconsole.engine.store.schema import SCHEMA_VERSION as SCHEMA_VERSION
from trainconsole.engine.store.schema import open_database, unavailable
from trainconsole.engine.store.types import ACTIVE as ACTIVE
from trainconsole.engine.store.types import STATUSES as STATUSES
from trainconsole.engine.store.types import Command as Command
from trainconsole.engine.store.types import Job as Job
from trainconsole.engine.store.types import QueueError as QueueError
from trainconsole.engine.store.upkeep import Upkeep, upkeep

_NO_CHARGE = (ErrorClass.DISK_FULL, ErrorClass.INTERRUPTED)


class Store:
    """Open with ``Store.open(layout, events, policy=cfg.queue)``; ``policy`` defaults to the
    documented queue defaults, ``clock`` (wall seconds) is injectable for tests. ``db`` is the
    shared database object the store's parts (add, repair, view) work on."""

    def __init__(self, db: Database, policy: sch.QueuePolicy, rng: random.Random,
                 *, own_events: bool = False) -> None:
        self.db = db
        self.policy = policy
        self.rng = rng
        self.own_events = own_events
        self.rebuilt: tuple[str, Path] | None = None  # (what was wrong, where the old file went)

    @property
    def layout(self) -> Layout:
        return self.db.layout

    @property
    def events(self) -> EventLog:
        return self.db.events

    @property
    def clock(self) -> Callable[[], float]:
        return self.db.clock

    @classmethod
    def open(cls, layout: Layout, events: EventLog | None = None, *,
             policy: sch.QueuePolicy | None = None, clock: Callable[[], float] = time.time,
             repair: bool = True, rng: random.Random | None = None, memo: bool = False) -> Store:
        """``repair=False`` skips the folder reconciliation (for quick read-only callers such as
        ``trainconsole status``); a corrupt database is set aside and rebuilt either way. ``memo``:
        rereading an unchanged row gives back the same Job (for a reader that polls, the console)."""
        try:
            conn, problem, aside = open_database(layout)
        except OSError as exc:
            raise unavailable(layout.state_db, exc) from exc
        # Without a log given, events still go to the engine's: a rebuild must never pass unsaid.
        log = events if events is not None else EventLog(layout.engine_events)
        store = cls(Database(conn, layout, log, clock, memo=memo), policy or sch.DefaultPolicy(),
                    rng or random.Random(), own_events=events is None)
        store.rebuilt = (problem, aside) if problem is not None and aside is not None else None
        if problem is not None:
            store.events.alert(
                58, f"job database {layout.state_db} {problem}; kept as {aside} and rebuilt from the "
                f"queue folders ({len(store.jobs())} jobs)", severity="warning", key="store-rebuilt")
        if repair:
            store.repair()
        return store

    @property
    def acks(self) -> AlertAcks:
        """Acknowledged alerts (``trainconsole.engine.store.acks``)."""
        return AlertAcks(self.db)

    def upkeep(self) -> Upkeep:
        """Free pages back to the filesystem, the WAL checkpointed (``trainconsole.engine.store.upkeep``)."""
        return upkeep(self.db)

    def repair(self) -> None:
        """Finish what a kill interrupted (``trainconsole.engine.store.repair``); idempotent."""
        repair_folders(self.db, self.policy)

    def close(self) -> None:
        self.db.conn.close()
        if self.own_events:
            self.events.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- adding -----------------------------------------------------------------------------------

    def duplicate_of(self, sha256: str) -> Job | None:
        """The job that already has this content (cancelled ones do not count), if any."""
        return self.db.duplicate_of(sha256)

    def add_job(self, name: str, path: Path, sha256: str, size: int, priority: str = "normal",
                force: bool = False, *, move: bool = False) -> Job | None:
        """Take the file at ``path`` into ``jobs/`` as a new queued job. ``move=True`` (the inbox)
        renames it, or copies then unlinks across filesystems; otherwise it is copied and the
        caller's file stays. Returns None, taking nothing, when a job already has the same content
        and ``force`` is false (case 53). A source that vanished raises ``DataError`` (case 51)."""
        (result,) = self.add_files([NewFile(name, Path(path), sha256, size, priority, move)], force=force)
        if result.error is not None:
            raise result.error
        return result.job

    def add_files(self, files: list[NewFile], *, force: bool = False) -> list[Added]:
        """Several files at once (two commits and one fsync per folder for the lot); one
        ``Added`` per file, in order, with its job, None for a duplicate, or its error."""
        return add_files(self.db, files, force=force)

    # -- reading ----------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        try:
            return self.db.job(self.db.row(job_id))
        except QueueError:
            return None

    def require(self, job_id: str) -> Job:
        return self.db.job(self.db.row(job_id))

    def jobs(self, statuses: Iterable[str] | None = None) -> list[Job]:
        return self.db.jobs(statuses)

    def paused(self) -> bool:
        return self.db.paused()

    def set_paused(self, paused: bool) -> None:
        with self.db.write():
            self.db.conn.execute("UPDATE meta SET value=? WHERE key='paused'", ("1" if paused else "0",))
        self.events.emit("log", level="info", message="queue paused" if paused else "queue resumed")

    # -- scheduling -------------------------------------------------------------------------------

    def _runnable_order(self, now: float) -> list[Job]:
        """Queued jobs that may start now, best first (see ``trainconsole.engine.store.scheduling``)."""
        pol = self.policy
        ready = [j for j in self.jobs(["queued"])
                 if sch.is_due(j.next_attempt_at, now, pol.backoff_max_s)]
        if any(j.experiment.after for j in ready):
            ready = self._dependencies_met(ready)
        ready.sort(key=lambda j: sch.order_key(j.priority, j.queued_at, j.seq, now, pol.aging_s))
        return ready

    def _dependencies_met(self, ready: list[Job]) -> list[Job]:
        """``--after``: a job starts once the job it waits for is done; when that one failed or was
        cancelled (or is gone), it is held with the reason, for the operator to decide."""
        states = {j.id: j.status for j in self.jobs()}
        out = []
        for job in ready:
            after = job.experiment.after
            state = states.get(after) if after else "done"
            if state == "done":
                out.append(job)
            elif state in ("failed", "cancelled", None):
                self.requeue(job.id, hold=True, reason=(
                    f"{after} {state or 'is gone'}, and this job runs only after it is done; release it "
                    f"(trainconsole release {job.id}) once {after} is retried and done, or cancel it"))
        return out

    def next_runnable(self, now: float | None = None) -> Job | None:
        now = self.clock() if now is None else now
        limit = now + self.policy.backoff_max_s
        if self.db.conn.execute("SELECT 1 FROM jobs WHERE status='queued' AND next_attempt_at>? LIMIT 1",
                              (limit,)).fetchone():
            # Clock set back (case 47): pin far-future retry times so they cannot drift forever.
            with self.db.write():
                self.db.conn.execute("UPDATE jobs SET next_attempt_at=? WHERE status='queued' AND "
                                   "next_attempt_at>?", (limit, limit))
        if self.paused():
            return None
        order = self._runnable_order(now)
        return order[0] if order else None

    def runnable(self, now: float | None = None) -> list[Job]:
        """Every job that may start now, best first (empty while paused): with several slots the
        daemon takes the best of each lineage that is not already running."""
        first = self.next_runnable(now)  # its clock-step repair and pause check first
        if first is None:
            return []
        return self._runnable_order(self.clock() if now is None else now)

    def wait_busy(self, job_id: str, reason: str, delay_s: float) -> None:
        """A queued job that cannot start yet for a reason outside it (its run folder held by a
        foreground ``trainconsole train``): tried again after ``delay_s``, uncharged, with
        ``reason`` as what the operator sees; the jobs behind it start meanwhile."""
        with self.db.write():
            self.db.conn.execute("UPDATE jobs SET next_attempt_at=?, error=?, error_class=NULL "
                                 "WHERE id=? AND status='queued'", (self.clock() + delay_s, reason, job_id))

    def start(self, job_id: str, pid: int | None = None, pid_start: str | None = None) -> Job:
        """Mark running and count the attempt, durably, before the worker exists: a worker the
        kernel kills still used up an attempt (case 60)."""
        with self.db.write() as after:
            row = self.db.row(job_id)
            if row["status"] != "queued":
                raise QueueError(f"{job_id} is {row['status']}; only a queued job can be started")
            # A wait_busy reason (an error without a class) is over once the job starts.
            waited = {"error": None} if row["error"] and not row["error_class"] else {}
            return self.db.update(row, after, status="running", attempts=row["attempts"] + 1,
                                started_at=self.clock(), finished_at=None, next_attempt_at=None,
                                pid=pid, pid_start=pid_start, step=None, slurm_id=None, node=None,
                                slurm_reason=None, **waited)

    def set_worker(self, job_id: str, pid: int | None, pid_start: str | None) -> None:
        with self.db.write():
            self.db.conn.execute("UPDATE jobs SET pid=?, pid_start=? WHERE id=?", (pid, pid_start, job_id))

    def set_slurm(self, job_id: str, slurm_id: int, node: str | None = None, reason: str | None = None) -> None:
        """The attempt's Slurm job, recorded as soon as ``sbatch`` answers (a restarted daemon
        follows it by this id), then its node once placed and Slurm's reason while it waits."""
        with self.db.write():
            self.db.conn.execute("UPDATE jobs SET slurm_id=?, node=?, slurm_reason=? WHERE id=?",
                                 (slurm_id, node or None, reason or None, job_id))

    def progress(self, job_id: str, step: int, max_steps: int | None, *, loss: float | None = None,
                 eval_loss: float | None = None) -> None:
        """The newest step (and its loss, and the newest eval loss, where given) the daemon saw."""
        with self.db.write():
            self.db.conn.execute(
                "UPDATE jobs SET step=?, max_steps=?, last_loss=coalesce(?, last_loss), "
                "eval_loss=coalesce(?, eval_loss) WHERE id=?", (step, max_steps, loss, eval_loss, job_id))

    def succeed(self, job_id: str, adapter: str | None = None) -> Job:
        with self.db.write() as after:
            row = self.db.row(job_id)
            extra = {"adapter": adapter} if adapter else {}
            return self.db.update(row, after, status="done", finished_at=self.clock(), pid=None,
                                pid_start=None, error_class=None, error=None, **extra)

    def fail_attempt(self, job_id: str, error_class: str | ErrorClass, message: str,
                     report: str | None = None, *, alert: bool = True) -> Job:
        """The retry policy. Permanent classes go straight to failed/; disk-full and interrupted
        attempts are not charged (disk-full also pauses the queue); others wait a back-off, until
        ``max_attempts`` is used up and the job moves to failed/ with a report (case 60).
        ``alert=False``: the caller raises the one alert this failure gets (one fault, one alert)."""
        try:
            cls: ErrorClass | None = ErrorClass(error_class)
        except ValueError:
            cls = None  # an unknown class is treated as a bug: reported, not retried
        with self.db.write() as after:
            row = self.db.row(job_id)
            if row["status"] in ("done", "failed", "cancelled"):
                raise QueueError(f"{job_id} is already {row['status']}")
            now = self.clock()
            history = [*orjson.loads(row["history"]),
                       {"attempt": row["attempts"], "class": str(error_class), "message": message, "t": now}]
            common: dict[str, Any] = {"error_class": str(error_class), "error": message,
                                      "history": history, "pid": None, "pid_start": None}
            if cls in _NO_CHARGE:
                if cls is ErrorClass.DISK_FULL:
                    self.db.conn.execute("UPDATE meta SET value='1' WHERE key='paused'")
                refund = 1 if row["status"] == "running" else 0
                return self.db.update(row, after, status="queued", attempts=max(0, row["attempts"] - refund),
                                    next_attempt_at=None, **common)
            if cls in PERMANENT or cls is None or row["attempts"] >= self.policy.max_attempts:
                final = ("permanent error, not retried" if (cls in PERMANENT or cls is None)
                         else f"gave up after {row['attempts']} attempts")
                return self._to_failed(row, after, final, report, common, alert=alert)
            delay = sch.backoff_delay(row["attempts"], self.policy.backoff_s, self.policy.backoff_max_s,
                                      self.rng)
            return self.db.update(row, after, status="queued", next_attempt_at=now + delay, **common)

    def _to_failed(self, row: Row, after: AfterCommit, final: str, traceback: str | None,
                   common: dict[str, Any], status: str = "failed", *, alert: bool = True) -> Job:
        history = common.get("history", orjson.loads(row["history"]))
        text = sf.report_text(row["id"], os.fsdecode(bytes(row["name"])), row["attempts"],
                              self.policy.max_attempts, list(history), final, traceback)
        target = self.layout.failed / sf.report_name(row["filename"])
        after.append(lambda: sf.write_file(target, text.encode("utf-8", "replace"), self.layout.tmp))
        if status == "failed" and alert:
            def alert_failed() -> None:
                self.events.alert(
                    60 if "gave up" in final else None,
                    f"{row['id']} ({display(os.fsdecode(bytes(row['name'])))}) failed: {final}; "
                    f"report in {target}", severity="warning", job_id=row["id"], key=f"failed-{row['id']}")
            after.append(alert_failed)
        return self.db.update(row, after, status=status, finished_at=self.clock(), next_attempt_at=None,
                            **common)

    def requeue(self, job_id: str, *, overrides: dict[str, Any] | None = None,
                charge_attempt: bool = False, reason: str = "", hold: bool = False,
                alert: bool = True) -> Job:
        """Back to the queue at once (OOM ladder, interruption, a job found running after a crash).
        Uncharged, the attempt counted by ``start`` is given back; charged, the policy's limit
        applies and an exhausted job goes to failed/. ``hold``: back as held, with ``reason`` as
        what the operator sees (someone else cancelled its cluster job: not retried blindly)."""
        with self.db.write() as after:
            row = self.db.row(job_id)
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
                                       {**common, "history": history, "error": reason or None}, alert=alert)
            status = "held" if hold or row["status"] == "held" else "queued"
            if hold:
                common.update(error=reason or None, error_class=None)
            job = self.db.update(row, after, status=status, attempts=attempts, next_attempt_at=None, **common)
            if reason:
                after.append(lambda: self.db.emit(job, reason))
            return job

    # -- operator actions -------------------------------------------------------------------------

    def set_priority(self, job_id: str, priority: str) -> Job:
        sch.check_level(priority)
        with self.db.write() as after:
            row = self.db.row(job_id)
            if row["status"] not in ACTIVE:
                raise QueueError(f"{job_id} is {row['status']}; its priority no longer matters")
            return self.db.update(row, after, priority=priority)

    def hold(self, job_id: str) -> Job:
        with self.db.write() as after:
            row = self.db.row(job_id)
            if row["status"] == "held":
                return self.db.job(row)
            if row["status"] != "queued":
                raise QueueError(f"{job_id} is {row['status']}; only a queued job can be held")
            return self.db.update(row, after, status="held")

    def release(self, job_id: str) -> Job:
        with self.db.write() as after:
            row = self.db.row(job_id)
            if row["status"] == "queued":
                return self.db.job(row)
            if row["status"] != "held":
                raise QueueError(f"{job_id} is {row['status']}; only a held job can be released")
            return self.db.update(row, after, status="queued", queued_at=self.clock())

    def retry(self, job_id: str) -> Job:
        """Failed or cancelled (or waiting out a back-off): queue it now with its attempts reset."""
        with self.db.write() as after:
            row = self.db.row(job_id)
            if row["status"] not in ("failed", "cancelled", "queued"):
                raise QueueError(f"{job_id} is {row['status']}; only a failed or cancelled job can be retried")
            data = folder_for(self.layout, row["status"]) / row["filename"]
            if not data.is_file():
                # Queued again it could only fail: the engine's copy is all a job ever reads.
                raise QueueError(f"{job_id}: its data file {data} is gone, so it cannot be retried; "
                                 "add the file again with `trainconsole add`")
            return self.db.update(row, after, status="queued", attempts=0, next_attempt_at=None,
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
        with self.db.write() as after:
            row = self.db.row(job_id)
            if row["status"] in ("done", "failed", "cancelled"):
                raise QueueError(f"{job_id} is already {row['status']}")
            if row["status"] == "running" and not worker_stopped:
                self._insert_command("cancel", job_id, None)
                return self.db.job(row)
            return self._to_failed(row, after, "cancelled by the operator", None,
                                   {"pid": None, "pid_start": None}, status="cancelled")

    # -- commands ---------------------------------------------------------------------------------

    def _insert_command(self, kind: str, job_id: str | None, arg: Any) -> int:
        cur = self.db.conn.execute("INSERT INTO commands(kind, job_id, arg, created_at) VALUES (?,?,?,?)",
                                 (kind, job_id, orjson.dumps(arg).decode(), self.clock()))
        return int(cur.lastrowid or 0)

    def post_command(self, kind: str, job_id: str | None = None, arg: Any = None) -> int:
        with self.db.write():
            return self._insert_command(kind, job_id, arg)

    def take_commands(self) -> list[Command]:
        with self.db.write():
            rows = self.db.conn.execute("SELECT id, kind, job_id, arg, created_at FROM commands "
                                      "ORDER BY id").fetchall()
            if rows:
                self.db.conn.execute("DELETE FROM commands WHERE id<=?", (rows[-1][0],))
        return [Command(r[0], r[1], r[2], orjson.loads(r[3]) if r[3] else None, r[4]) for r in rows]

    # -- reasons ----------------------------------------------------------------------------------

    def reasons(self, now: float | None = None, jobs: list[Job] | None = None) -> dict[str, str]:
        """squeue-style REASON for every job (or those given), computed in one pass."""
        return view.reasons(self.db, self.policy, self.clock() if now is None else now,
                            self.jobs() if jobs is None else jobs)

    def reason(self, job: Job, now: float | None = None) -> str:
        return self.reasons(now).get(job.id, job.status)

    def snapshot(self, now: float | None = None) -> tuple[bool, list[dict[str, Any]]]:
        """(paused, every job as a JSON-ready dict with its reason): the fast path for status."""
        return view.snapshot(self.db, self.policy, self.clock() if now is None else now)
