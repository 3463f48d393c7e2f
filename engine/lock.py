"""One engine per queue folder (case 48): an flock on ``engine.lock`` held for the daemon's life,
plus ``engine.pid`` saying who holds it.

The lock is the truth; the PID file is for people and consoles. A PID file is only believed when
its pid is alive *and* is the very process the file names (``trainconsole.engine.procid``: the
kernel's start ticks and boot id, which a clock step cannot move), so a stale file whose pid the
kernel has since given to another process never blocks a start nor makes a console think an engine
runs, and a live engine never reads as stale after NTP steps the clock. Never a soft (marker-file) lock: a marker survives SIGKILL and
would block every later start.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

from trainconsole.engine import fsio
from trainconsole.engine.errors import TrainconsoleError
from trainconsole.engine.layout import Layout
from trainconsole.engine.procid import from_stored, my_identity, same_process
from trainconsole.engine.runfiles import RunFolder


class AlreadyRunning(TrainconsoleError):
    """A second daemon for the same queue folder (case 48)."""

    def __init__(self, message: str, info: PidInfo | None) -> None:
        super().__init__(message, case=48)
        self.info = info


@dataclass(frozen=True)
class PidInfo:
    pid: int
    identity: str  # trainconsole.engine.procid token: whether the pid is still this daemon
    start_time: float  # wall-clock start, for uptime; files before "identity" compared on it
    started_at: str  # ISO time, for people

    def describe(self) -> str:
        return f"pid {self.pid}, since {self.started_at}"


def read_pidfile(layout: Layout) -> PidInfo | None:
    """What the PID file says, or None when it is missing or unreadable (never raises)."""
    try:
        raw: Any = orjson.loads(layout.pidfile.read_bytes())
        start_time = float(raw["start_time"])
        # A file written before identities has only start_time: read as a legacy identity.
        token = from_stored(raw.get("identity", start_time))
        if token is None:
            return None
        return PidInfo(int(raw["pid"]), token, start_time, str(raw.get("started_at", "")))
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None


def pidfile_problem(layout: Layout, exc: OSError | None = None) -> str:
    """Why the PID file cannot be written, as one line saying what to do."""
    path = layout.pidfile
    if path.is_dir() and not path.is_symlink():
        return (f"the engine's PID file {path} is a folder; remove it (rmdir {path}) when no engine "
                "runs, then start the engine again")
    why = f" ({exc.strerror or exc})" if exc is not None else ""
    return (f"the engine cannot write its PID file {path}{why}; give the engine's user write "
            f"access to {layout.queue} and the file (or remove it when no engine runs)")


def engine_running(layout: Layout) -> PidInfo | None:
    """The running engine for this queue folder, or None (a stale PID file counts as none)."""
    info = read_pidfile(layout)
    if info is None or not same_process(info.pid, info.identity):
        return None
    return info


class EngineLock:
    """Held for the daemon's life. ``acquire`` raises ``AlreadyRunning`` at once, never waits."""

    def __init__(self, layout: Layout) -> None:
        # Imported here: every console start asks engine_running, only the daemon holds the lock
        # (filelock pulls in asyncio and logging, a tenth of a second before the first frame).
        import filelock

        self.layout = layout
        self._lock = filelock.FileLock(
            layout.lockfile, timeout=0, thread_local=False, fallback_to_soft=False,
            preserve_lock_file=True,
        )
        self.info: PidInfo | None = None

    def acquire(self) -> PidInfo:
        import filelock

        self.layout.queue.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            # The holder may still be writing its PID file: give it a moment to say who it is.
            holder = None
            for _ in range(20):
                holder = engine_running(self.layout)
                if holder is not None:
                    break
                time.sleep(0.05)
            who = holder.describe() if holder else "pid unknown"
            raise AlreadyRunning(
                f"an engine is already running for {self.layout.queue} ({who})", holder) from None
        except OSError as exc:  # after Timeout, which is an OSError too (TimeoutError)
            raise TrainconsoleError(
                f"the engine cannot open its lock file {self.layout.lockfile} ({exc.strerror or exc}); "
                "give the engine's user read and write access to it (or remove it when no engine "
                "runs)", case=46) from None
        me = psutil.Process()
        self.info = PidInfo(
            pid=me.pid,
            identity=my_identity(),
            start_time=float(me.create_time()),
            started_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        )
        try:
            # start_time stays for uptime and for an older console reading the file.
            fsio.write_bytes(self.layout.pidfile, orjson.dumps(
                {"pid": self.info.pid, "identity": self.info.identity,
                 "start_time": self.info.start_time, "started_at": self.info.started_at}))
        except OSError as exc:
            self.info = None
            self._lock.release(force=True)
            raise TrainconsoleError(pidfile_problem(self.layout, exc), case=46) from None
        return self.info

    def release(self) -> None:
        if self.info is not None:
            current = read_pidfile(self.layout)
            if current is not None and current.pid == self.info.pid:
                try:
                    self.layout.pidfile.unlink()
                except OSError:
                    pass
            self.info = None
        if self._lock.is_locked:
            self._lock.release(force=True)

    def __enter__(self) -> EngineLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunFolderBusy(TrainconsoleError):
    """Another worker (a `trainconsole train`, or the engine's) holds the run folder."""


def lock_run_folder(run_dir: Path) -> int:
    """An flock on the run folder's lock file, returned as a file descriptor for the worker to inherit
    (``pass_fds``) so it stays held for the worker's life, even if whoever started it dies. Two
    workers on one folder would interleave its checkpoints and publish the job's adapter twice.
    Raises ``RunFolderBusy`` at once, never waits."""
    fd = os.open(RunFolder(run_dir).lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunFolderBusy(f"{run_dir} is in use by another worker (a `trainconsole train`, or the "
                            "engine training that job)") from None
    return fd
