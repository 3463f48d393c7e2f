"""Retention: what the engine keeps of finished work, so months of jobs fit on the disk
(``[retention]`` in config.toml).

- A done job's checkpoints are intermediate once its adapter is published in ``adapters/`` (which
  retention never touches): ``drop_checkpoints`` deletes ``runs/<job>/checkpoints``. A failed or
  cancelled job keeps them: a retry resumes from them.
- A finished job's whole run folder (its log, worker log, report, any checkpoints) goes
  ``log_days`` after the job ended (0 keeps them forever). The engine's copy of the data in
  ``done/`` or ``failed/`` stays: it is the record the job store is rebuilt from (case 58).
- The job store's upkeep (``Store.upkeep``: free pages back to the filesystem, the WAL
  checkpointed) runs with each sweep. The queue's ``events.jsonl`` is bounded by rotation
  (``EventLog(max_bytes=retention.events_max_mb)``), not here.

A folder is deleted only while its lock (``runs/<job>/train.lock``) can be taken, so a foreground
``trainconsole train`` reusing a job id is never pulled from under, and through ``fsio.discard``,
so a kill mid-delete leaves a name the next start sweeps, never a half-emptied folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from trainconsole.engine import fsio
from trainconsole.engine.config.schema import RetentionConfig
from trainconsole.engine.events import EventLog
from trainconsole.engine.layout import Layout
from trainconsole.engine.lock import RunFolderBusy, lock_run_folder
from trainconsole.engine.store import Store

FINISHED = ("done", "failed", "cancelled")
DAY_S = 86400.0


@dataclass(frozen=True)
class Swept:
    checkpoints: int = 0  # done jobs whose checkpoints were deleted
    run_folders: int = 0  # finished jobs' run folders deleted for age
    busy: int = 0  # folders left for now: another worker holds them
    db_bytes_freed: int = 0


class Retention:
    def __init__(self, cfg: RetentionConfig, layout: Layout, store: Store, events: EventLog, *,
                 clock: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.layout = layout
        self.store = store
        self.events = events
        self.clock = clock
        self.mono = mono
        self._next = 0.0
        self._done_with: set[str] = set()  # jobs with nothing left to trim until their folder's age

    def tick(self, running: Collection[str] = ()) -> Swept | None:
        """A sweep every ``retention.every_s``; None between them."""
        if self.mono() < self._next:
            return None
        self._next = self.mono() + float(self.cfg.every_s)
        return self.sweep(running)

    def sweep(self, running: Collection[str] = ()) -> Swept:
        now = self.clock()
        max_age = float(self.cfg.log_days) * DAY_S
        checkpoints = folders = busy = 0
        for job in self.store.jobs(FINISHED):
            if job.id in running:
                continue
            run_dir = self.layout.run_dir(job.id)
            old = max_age > 0 and job.finished_at is not None and now - job.finished_at >= max_age
            if old:
                gone = self._discard(run_dir, run_dir)
                folders += gone is True
                busy += gone is None
                continue
            if job.id in self._done_with:
                continue
            if job.status == "done" and self.cfg.drop_checkpoints:
                gone = self._discard(run_dir / "checkpoints", run_dir)
                if gone is None:
                    busy += 1
                    continue
                checkpoints += gone
            self._done_with.add(job.id)
        freed = self.store.upkeep().bytes_freed
        swept = Swept(checkpoints, folders, busy, freed)
        if checkpoints or folders:
            self.events.emit("log", level="info", message=(
                f"retention: removed the checkpoints of {checkpoints} done job(s) and the run folders "
                f"of {folders} job(s) older than {self.cfg.log_days:g} day(s)"
                + (f"; {busy} left for now (in use)" if busy else "")))
        return swept

    def _discard(self, target: Path, run_dir: Path) -> bool | None:
        """True when ``target`` was deleted, False when there was nothing, None when the run
        folder is held by a worker."""
        if not target.exists():
            return False
        try:
            fd = lock_run_folder(run_dir)
        except RunFolderBusy:
            return None
        try:
            fsio.discard(target)
        finally:
            os.close(fd)
        return True
