"""What ``Store.open`` finishes after a kill: files half-taken into ``jobs/`` (intents), moves
between folders that committed in the database but never happened on disk, and temporary files
of dead writers. Every step is idempotent, so a kill during repair is repaired by the next open."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import orjson
import psutil

from trainconsole.engine import fsio
from trainconsole.engine.procid import same_process
from trainconsole.engine.store import files as sf
from trainconsole.engine.store.add import new_row, take_by_move
from trainconsole.engine.store.db import Database
from trainconsole.engine.store.folders import FOLDER_STATUS, folder_for, row_for_file
from trainconsole.engine.store.scheduling import QueuePolicy


def repair(db: Database, policy: QueuePolicy) -> None:
    """Finish what a kill interrupted; ``policy`` gives a rewritten report its attempt limit."""
    layout = db.layout
    for folder in (layout.jobs, layout.done, layout.failed, layout.tmp):
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
    _finish_intents(db)
    _reconcile_folders(db, policy)
    for folder in (layout.tmp, layout.jobs, layout.done, layout.failed):  # see sf.tmp_beside
        fsio.sweep(folder)


def _finish_intents(db: Database) -> None:
    conn = db.conn
    now = db.clock()
    rows = conn.execute("SELECT seq, id, src, name, filename, sha256, size, priority, mode, owner_pid, "
                        "created_at, owner_start, experiment FROM intents").fetchall()
    for seq, job_id, src_b, name_b, filename, sha, size, priority, mode, owner, created, start, exp in rows:
        if _owner_live(int(owner), float(created), start):
            continue  # still being written by a live process
        src = Path(os.fsdecode(bytes(src_b)))
        dest = db.layout.jobs / filename
        try:
            if dest.exists():
                sha, size = sf.hash_file(dest)
                if mode == "move" and src.exists() and sf.hash_file(src)[0] == sha:
                    os.unlink(src)  # a cross-filesystem copy finished, the unlink did not
            elif mode == "move" and src.is_file() and sf.hash_file(src)[0] == sha:
                take_by_move(db.layout.tmp, src, dest)
            else:
                with contextlib.suppress(OSError):  # a sidecar written before the kill
                    (db.layout.jobs / sf.sidecar_name(job_id)).unlink()
                # A copy that never landed (its `add` was killed and reported nothing), or a source
                # that is gone or replaced: nothing was taken, so nothing is recorded.
                with db.write():
                    conn.execute("DELETE FROM intents WHERE seq=?", (seq,))
                continue
        except OSError:
            continue  # left for the next open
        db.commit_intent(new_row(seq, job_id, bytes(name_b), filename, sha, size, priority, now, exp or "{}"))


def _owner_live(pid: int, created: float, owner_start: str | None) -> bool:
    """Whether the process that wrote an intent still runs: the very process its identity names
    (after a reboot, or once the pid is reused, the same pid is another process). An intent written
    before identities were recorded falls back to the old rule: alive, and started before the
    intent was written."""
    if owner_start is not None:
        return same_process(pid, owner_start)
    if not psutil.pid_exists(pid):
        return False
    try:
        started = float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - cannot tell: leave it to its owner, as if alive
        return True
    return started <= created + 1.0


def _reconcile_folders(db: Database, policy: QueuePolicy) -> None:
    layout = db.layout
    where: dict[str, Path] = {}
    also: dict[str, list[Path]] = {}  # a move between filesystems killed between copy and unlink
    for folder in (layout.jobs, layout.done, layout.failed):
        try:
            for entry in os.scandir(folder):
                if entry.name.endswith(".jsonl"):
                    if entry.name in where:
                        also.setdefault(entry.name, []).append(where[entry.name])
                    where[entry.name] = folder
        except OSError:
            continue
    with db.read() as conn:  # rows and intents from one snapshot: a file being added is in one of them
        rows = conn.execute("SELECT id, filename, status, attempts, history, name FROM jobs").fetchall()
        pending = {r[0] for r in conn.execute("SELECT id FROM intents")}
    known = {r[1] for r in rows}
    for filename, folder in where.items():
        job_id = sf.job_id_of(filename)
        if job_id is not None and filename not in known and job_id not in pending:
            _adopt(db, folder, job_id, filename)
    for job_id, filename, status, attempts, history, name_b in rows:
        expected = folder_for(layout, status)
        actual = where.get(filename)
        if actual is not None and actual != expected:
            _move_under_lock(db, job_id, filename)
        elif actual == expected:
            for stale in also.get(filename, []):
                with contextlib.suppress(OSError):
                    os.unlink(stale / filename)  # the copy arrived (durably) before the kill
        if status == "failed" and not (layout.failed / sf.report_name(filename)).exists():
            text = sf.report_text(job_id, os.fsdecode(bytes(name_b)), attempts,
                                  policy.max_attempts, orjson.loads(history),
                                  "failed (report rewritten after an interruption)", None)
            with contextlib.suppress(OSError):
                sf.write_file(layout.failed / sf.report_name(filename), text.encode("utf-8", "replace"),
                                layout.tmp)


def _move_under_lock(db: Database, job_id: str, filename: str) -> None:
    """Move a file to where the database says it belongs, holding the write lock and re-reading
    the status, so a status change by another process cannot slip between the look and the move."""
    layout = db.layout
    with db.write():
        row = db.conn.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            return
        expected = folder_for(layout, row[0])
        for folder in (layout.jobs, layout.done, layout.failed):
            if folder != expected and (folder / filename).exists():
                db.move_files(job_id, filename, folder, expected)
                break


def _adopt(db: Database, folder: Path, job_id: str, filename: str) -> None:
    """A job file the database does not know (its record was lost with a power cut after the
    file's rename was already durable): take it back, as a rebuild would."""
    layout = db.layout
    default = dict((getattr(layout, name), status) for name, status in FOLDER_STATUS)[folder]
    row = row_for_file(layout, folder, default, job_id, folder / filename, time.time())
    if row is None:
        return
    with db.write():
        if db.conn.execute("SELECT 1 FROM jobs WHERE id=?", (job_id,)).fetchone():
            return
        db.insert(row)
        db.conn.execute("UPDATE meta SET value=MAX(CAST(value AS INTEGER), ?) WHERE key='next_seq'",
                        (int(job_id[1:]) + 1,))
    db.events.emit("log", level="warning", job_id=job_id,
                      message=f"{job_id}: its file {folder / filename} had no record; taken back as {row[7]}")
