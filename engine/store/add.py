"""Taking files into ``jobs/``, several at a time, so that a kill at any instant neither loses nor
doubles one (cases 51, 52, 53).

The protocol, per batch:

1. one transaction: the duplicate check (content hash against jobs, pending intents and the batch
   itself), an id for each file, and an *intent* row naming source and destination;
2. for each file: its sidecar, then the file itself renamed (or copied, fsynced and renamed) into
   ``jobs/``; one fsync of each folder touched, for the whole batch;
3. one transaction: the job rows inserted and the intents deleted.

A kill between 1 and 3 leaves intents; ``trainconsole.engine.store.repair`` finishes each one at the next open
(the file arrived: record it; it did not: move it now, or forget the intent). Batching makes the
two commits and the folder fsyncs per batch instead of per file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainconsole.engine import fsio
from trainconsole.engine.errors import DataError
from trainconsole.engine.names import display
from trainconsole.engine.procid import my_identity
from trainconsole.engine.store import files as sf
from trainconsole.engine.store import scheduling as sch
from trainconsole.engine.store.db import Database, Row
from trainconsole.engine.store.folders import COLUMNS
from trainconsole.engine.store.types import Experiment, Job


@dataclass(frozen=True)
class NewFile:
    name: str  # the original name, kept exactly
    path: Path  # where it is now
    sha256: str
    size: int
    priority: str = "normal"
    move: bool = False  # rename it in (the inbox); else copy, leaving the caller's file
    experiment: Experiment = field(default_factory=Experiment)  # settings, lineage, ... (types.py)


@dataclass
class Added:
    file: NewFile
    job: Job | None = None  # None with no error: a job already has this content
    error: BaseException | None = None


def new_row(seq: int, job_id: str, name: bytes, filename: str, sha256: str, size: int, priority: str,
            now: float, experiment: str = "{}") -> Row:
    """The row of a job just taken in: queued, no attempts, no history; ``experiment`` as JSON."""
    return dict(zip(COLUMNS, (seq, job_id, name, filename, sha256, size, priority, "queued", 0, None,
                              None, None, "{}", "[]", now, now, None, None, None, None, None, None,
                              None, None, None, experiment, None, None, None),
                    strict=True))


def add_files(db: Database, files: list[NewFile], *, force: bool = False) -> list[Added]:
    """Several files at once (two commits and one fsync per folder for the lot); one ``Added``
    per file, in order, with its job, None for a duplicate (unless ``force``), or its error."""
    for f in files:
        sch.check_level(f.priority)
    results = [Added(f) for f in files]
    now = db.clock()
    conn = db.conn
    pending: list[tuple[int, Row]] = []
    with db.write():
        batch_hashes: set[str] = set()
        for i, f in enumerate(files):
            if not force and (f.sha256 in batch_hashes or db.duplicate_of(f.sha256) is not None
                              or conn.execute("SELECT 1 FROM intents WHERE sha256=?", (f.sha256,)).fetchone()):
                continue
            batch_hashes.add(f.sha256)
            seq = int(conn.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0])
            conn.execute("UPDATE meta SET value=? WHERE key='next_seq'", (str(seq + 1),))
            job_id = f"j{seq:04d}"
            filename = sf.data_filename(job_id, f.name)
            conn.execute(
                "INSERT INTO intents(seq,id,src,name,filename,sha256,size,priority,mode,owner_pid,"
                "created_at,owner_start,experiment) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (seq, job_id, os.fsencode(f.path), os.fsencode(f.name), filename, f.sha256, f.size,
                 f.priority, "move" if f.move else "copy", os.getpid(), time.time(), my_identity(),
                 f.experiment.to_json()))
            pending.append((i, new_row(seq, job_id, os.fsencode(f.name), filename, f.sha256, f.size,
                                         f.priority, now, f.experiment.to_json())))
    if not pending:
        return results
    db.layout.jobs.mkdir(parents=True, exist_ok=True)
    arrived: list[tuple[int, Row]] = []
    touched = {db.layout.jobs}
    try:
        for i, row in pending:
            if _take(db, files[i], row, results[i]):
                arrived.append((i, row))
                if files[i].move:
                    touched.add(Path(files[i].path).parent)
    finally:
        # Even when interrupted: what arrived is made durable and recorded; the rest is forgotten.
        for folder in touched:
            fsio.fsync_dir(folder)
        with db.write() as after:
            for i, row in arrived:
                db.insert(row, or_ignore=True)
                job = db.job(row)
                results[i].job = job
                after.append(functools.partial(db.emit, job, "added"))
            conn.executemany("DELETE FROM intents WHERE seq=?", [(row["seq"],) for _, row in pending])
    return results


def _take(db: Database, f: NewFile, row: Row, result: Added) -> bool:
    """Sidecar, then the file. True when the file is in ``jobs/``; else the error is recorded and
    nothing of this file is left behind."""
    src = Path(f.path)
    dest = db.layout.jobs / row["filename"]
    sidecar = db.layout.jobs / sf.sidecar_name(row["id"])
    try:
        if not f.move:
            row["sha256"], row["size"] = sf.copy_into(src, dest, db.layout.tmp, sync_dir=False)
        db.write_sidecar(row, db.layout.jobs, sync_dir=False)
        if f.move:
            take_by_move(db.layout.tmp, src, dest, sync=False)
        return True
    except Exception as exc:
        if f.move and dest.exists() and not src.exists():
            return True  # the file did arrive; only a later step failed
        if src.exists():
            with contextlib.suppress(OSError):
                dest.unlink()  # a partial take: the source is still the one true copy
        with contextlib.suppress(OSError):
            sidecar.unlink()
        if isinstance(exc, FileNotFoundError) and not src.exists():
            result.error = DataError(f"{display(f.name)}: the file vanished before it could be "
                                     "queued", case=51)
        else:
            result.error = exc
        return False


def take_by_move(tmp_dir: Path, src: Path, dest: Path, *, sync: bool = True) -> None:
    """Rename ``src`` to ``dest`` (copy, then unlink, across filesystems); ``tmp_dir`` holds the
    copy's temporary file."""
    try:
        fsio.move(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        sf.copy_into(src, dest, tmp_dir, sync_dir=sync)
        os.unlink(src)
    else:
        if not stat.S_ISREG(os.lstat(dest).st_mode):
            # Swapped for a link (or anything else) after it was examined: put it back, where the
            # inbox's rules for links apply; a job never points outside the queue.
            fsio.move(dest, src)
            raise DataError(f"{display(str(src))} was replaced while it was being queued; it will "
                            "be looked at again", case=54)
    if sync:
        fsio.fsync_dir(dest.parent)
        fsio.fsync_dir(src.parent)
