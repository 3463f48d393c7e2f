"""Resource guards: the daemon stops starting new work before the kernel or the disk stops it for
us, and says why; it starts again once the machine is healthy.

- RAM (case 24): available memory below ``hardware.min_free_ram_mb``, cgroup-aware (sysmon).
- Swap thrashing (case 30): swap-in above ``hardware.max_swap_mb_s``.
- Disk (case 25): free space on the queue, runs or adapters filesystem below
  ``hardware.min_free_disk_mb``, or not yet back above what it was when a worker hit ENOSPC.

Also the start-up check that every folder the engine writes is writable (case 46), with a plain
message naming the folder and the user, instead of a traceback an hour into a run.
"""

from __future__ import annotations

import errno
import os
import pwd
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from trainconsole.engine.daemon.notify import Notifier
from trainconsole.engine.layout import Layout
from trainconsole.engine.sysmon import Sample


class Sampler(Protocol):
    """What the guard reads resources through (``trainconsole.engine.sysmon.Sysmon`` fits)."""

    def sample(self, paths: Iterable[Path | str] = ()) -> Sample: ...


@dataclass
class DiskHold:
    """Set when a worker ran out of disk: no attempt charged, the queue waits for space."""

    path: str
    resume_at_mb: float  # free space at which the queue resumes


@dataclass(frozen=True)
class GuardState:
    blocked: list[str] = field(default_factory=list)  # reasons, empty when healthy

    @property
    def ok(self) -> bool:
        return not self.blocked


class ResourceGuard:
    def __init__(self, sysmon: Sampler, layout: Layout, notifier: Notifier, *, min_free_ram_mb: float,
                 min_free_disk_mb: float, max_swap_mb_s: float, every_s: float = 5.0) -> None:
        self.sysmon = sysmon
        self.layout = layout
        self.notifier = notifier
        self.min_ram = float(min_free_ram_mb)
        self.min_disk = float(min_free_disk_mb)
        self.max_swap = float(max_swap_mb_s)
        self.every_s = every_s
        self.disk_hold: DiskHold | None = None
        self.state = GuardState()
        self.last_sample: Sample | None = None
        self._last_mono: float | None = None
        self._active: set[str] = set()
        # Swap activity is a rate between two samples: prime it, so the first check can see
        # thrashing that is already under way when the engine starts.
        sysmon.sample(())

    def paths(self) -> list[Path]:
        return [self.layout.queue, self.layout.runs, self.layout.adapters]

    def hold_for_disk(self, path: Path, needed_mb: float, *, from_now: bool = True) -> None:
        """Hold new work until ``needed_mb`` more is free on ``path`` than now (or, with
        ``from_now=False``, until that much is free at all)."""
        free = self.sysmon.sample([path]).disk_free_mb.get(str(path), 0.0) if from_now else 0.0
        self.disk_hold = DiskHold(str(path), float(free) + max(1.0, needed_mb))
        self._last_mono = None  # re-sample on the next check

    def check(self, now: float | None = None) -> GuardState:
        now = time.monotonic() if now is None else now
        if self._last_mono is not None and now - self._last_mono < self.every_s:
            return self.state
        self._last_mono = now
        sample = self.sysmon.sample(self.paths())
        self.last_sample = sample
        found: dict[str, tuple[int, str]] = {}
        if self.min_ram > 0 and sample.ram_available_mb < self.min_ram:
            found["ram"] = (24, f"only {sample.ram_available_mb:.0f} MB of memory is available "
                                f"(hardware.min_free_ram_mb = {self.min_ram:.0f}); no new job starts "
                                "until memory is free")
        if sample.swap_in_mb_s > self.max_swap:
            found["swap"] = (30, f"the system is swapping ({sample.swap_in_mb_s:.0f} MB/s in, "
                                 f"hardware.max_swap_mb_s = {self.max_swap:.0f}); no new job starts "
                                 "until it stops")
        for path, free in sample.disk_free_mb.items():
            if self.min_disk > 0 and free < self.min_disk:
                found[f"disk:{path}"] = (25, f"only {free:.0f} MB free on {path} "
                                             f"(hardware.min_free_disk_mb = {self.min_disk:.0f}); "
                                             "no new job starts until space is freed")
        if self.disk_hold is not None:
            hold = self.disk_hold
            seen = sample.disk_free_mb.get(hold.path)
            held_free = (self.sysmon.sample([hold.path]).disk_free_mb.get(hold.path, 0.0) if seen is None
                         else seen)
            if held_free >= hold.resume_at_mb:
                self.notifier.alert(25, f"disk space is back on {hold.path} ({held_free:.1f} MB free): "
                                        "the queue resumes", severity="info", key="disk-full-cleared")
                self.disk_hold = None
            else:
                found["disk-full"] = (25, f"a worker ran out of disk on {hold.path}: the queue is "
                                          f"paused until {hold.resume_at_mb:.1f} MB is free "
                                          f"(now {held_free:.1f} MB)")
        for key, (case, message) in found.items():
            if key not in self._active:
                self.notifier.alert(case, message, key=f"guard:{key}")
        for key in self._active - set(found):
            self.notifier.forget(f"guard:{key}")
            if key != "disk-full":
                self.notifier.alert(None, f"resource guard cleared: {key}", severity="info",
                                    key=f"guard-clear:{key}")
        self._active = set(found)
        self.state = GuardState([message for _, message in found.values()])
        return self.state


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def check_writable(folders: list[Path]) -> list[str]:
    """Plain messages for folders the engine cannot create or write (case 46); empty when fine.

    Writes and removes a probe file, because permission bits lie (read-only mounts, ACLs,
    immutable directories) and only a write tells the truth.
    """
    problems: list[str] = []
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"cannot create {folder}: {exc.strerror or exc} (running as {_user()})")
            continue
        probe = folder / f".write-test-{os.getpid()}"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"ok")
            probe.unlink()
        except OSError as exc:
            why = exc.strerror or str(exc)
            hint = {errno.EROFS: "the filesystem is mounted read-only",
                    errno.ENOSPC: "the disk is full",
                    errno.EACCES: f"user {_user()} may not write there; fix its owner or mode",
                    errno.EPERM: "the folder is immutable or protected"}.get(exc.errno or 0, "")
            problems.append(f"cannot write in {folder}: {why}{'; ' + hint if hint else ''}")
            try:
                probe.unlink()
            except OSError:
                pass
    return problems


def checkpoint_mb(run_dir: Path) -> float:
    """The newest checkpoint's size: how much space a save needs, for the disk-full hold."""
    best = 0.0
    for folder in run_dir.glob("**/checkpoint-*"):
        try:
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        except OSError:
            continue
        best = max(best, size / (1024 * 1024))
    return max(1.0, best)


_VANISHED = {errno.ENOENT, errno.ESTALE, errno.ENOTCONN, errno.ENODEV, errno.EHOSTDOWN}
_LOCKED = {errno.EPERM, errno.EACCES, errno.EBUSY, errno.ETXTBSY}


def io_problem(exc: BaseException) -> tuple[int, str]:
    """The case and a phrase for an I/O failure of the engine's own folders, by its errno."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code in _VANISHED:
        return 45, "a folder or file the engine needs is gone"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return 25, "the disk is full"
    if code in _LOCKED:
        return 50, "a file could not be moved or removed (locked, busy or immutable)"
    return 44, "an I/O error"
