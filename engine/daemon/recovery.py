"""Start-up recovery after the daemon was killed, the power went or the machine rebooted (41-43).

Before anything trains: workers orphaned by a killed daemon are ended (found both by the pid and
process identity the store recorded (``trainconsole.engine.procid``: a pid since given to an
unrelated process is not ours to end), and by their command line naming a spec under our runs folder, in
case the daemon died between spawning and recording); jobs left ``running`` are requeued without
charging an attempt (the worker resumes from the newest good checkpoint); temporary and
checkpoint-staging files of dead writers are swept.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from trainconsole.engine.daemon.launcher import WORKER_MODULE
from trainconsole.engine.layout import Layout
from trainconsole.engine.procid import same_process

_PID_IN_NAME = re.compile(r"(?:^|[-.])(\d{2,})(?:[-.]|$)")
STALE_TMP_S = 3600.0


@dataclass(frozen=True)
class Orphan:
    pid: int
    job_id: str | None
    how: str


def find_orphans(jobs: list[Any], layout: Layout) -> list[Orphan]:
    found: dict[int, Orphan] = {}
    for job in jobs:
        if job.status == "running" and job.pid and same_process(job.pid, job.pid_start):
            found[job.pid] = Orphan(job.pid, job.id, "recorded in the store")
    runs = str(layout.runs)
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
        except psutil.Error:
            continue
        if proc.pid == me or WORKER_MODULE not in cmd:
            continue
        spec = cmd[-1] if cmd else ""
        if spec.startswith(runs + os.sep) and proc.pid not in found and not _foreground(proc):
            # torchrun's ranks are found through their parent's group; one entry per group.
            try:
                pgid = os.getpgid(proc.pid)
            except ProcessLookupError:
                continue
            if pgid not in found:
                found[pgid] = Orphan(pgid, Path(spec).parent.name, "found by its command line")
    return list(found.values())


def _foreground(proc: psutil.Process) -> bool:
    """A worker that a live `trainconsole train` started (its parent, or torchrun's parent) is an
    operator's foreground run, not an orphan of a killed engine: it is left alone."""
    try:
        for parent in proc.parents()[:2]:
            argv = parent.cmdline()
            command = [a for a in argv if not a.startswith("-")]
            is_cli = any(a == "trainconsole.console.cli" or a.endswith("trainconsole") for a in argv)
            if is_cli and "train" in command:
                return True
    except psutil.Error:
        return False
    return False


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process left in the group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def end_orphans(orphans: list[Orphan], grace_s: float) -> None:
    """SIGTERM each group (a healthy orphan then checkpoints at its next step), SIGKILL on expiry.
    Orphans are not our children, so we poll instead of waiting on them."""
    for orphan in orphans:
        try:
            os.killpg(orphan.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_group_alive(o.pid) for o in orphans):
        time.sleep(0.1)
    for orphan in orphans:
        if _group_alive(orphan.pid):
            try:
                os.killpg(orphan.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_group_alive(o.pid) for o in orphans):
        time.sleep(0.05)


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (an orphan of a killed daemon waits for init): either
    way it writes nothing more."""
    if pid == os.getpid():
        return False
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _writer_dead(name: str) -> bool:
    match = _PID_IN_NAME.search(name)
    return match is not None and _dead(int(match.group(1)))


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def sweep(layout: Layout, *, stale_s: float = STALE_TMP_S) -> list[Path]:
    """Remove leftovers: entries in ``queue/.tmp`` whose writer is dead (or older than an hour),
    checkpoint staging folders, and stale heartbeats. Returns what was removed."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(layout.tmp.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        try:
            age = now - entry.lstat().st_mtime
        except OSError:
            continue
        if (_writer_dead(entry.name) or age > stale_s) and _remove(entry):
            removed.append(entry)
    try:
        run_dirs = [d for d in layout.runs.iterdir() if d.is_dir()]
    except OSError:
        run_dirs = []
    for run_dir in run_dirs:
        removed += _sweep_run(run_dir)
    removed += sweep_staging(layout.adapters)
    return removed


def _staging_dead(name: str) -> bool:
    """``.staging-<name>-<pid>-<hex>`` (engine/checkpoints.py): a save whose writer is gone never
    got its manifest, so it is not a checkpoint, only bytes."""
    parts = name.rsplit("-", 2)
    return len(parts) == 3 and parts[1].isdigit() and _dead(int(parts[1]))


def sweep_staging(folder: Path) -> list[Path]:
    removed: list[Path] = []
    try:
        entries = list(folder.glob(".staging-*"))
    except OSError:
        return removed
    for entry in entries:
        if _staging_dead(entry.name) and _remove(entry):
            removed.append(entry)
    return removed


def sweep_run_staging(run_dir: Path) -> list[Path]:
    """Partial saves of dead writers in one run folder: they never got a manifest, so they are
    not checkpoints; left alone they would be quarantined and pile up with every kill mid-save."""
    removed = sweep_staging(run_dir)
    # A worker killed mid-write leaves its atomic-write temp file (.heartbeat.json.<pid>.<hex>.tmp).
    for leftover in run_dir.glob(".*.tmp"):
        if _writer_dead(leftover.name) and _remove(leftover):
            removed.append(leftover)
    try:
        subdirs = [d for d in run_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError:
        subdirs = []
    for sub in subdirs:
        removed += sweep_staging(sub)
    return removed


def _sweep_run(run_dir: Path) -> list[Path]:
    removed = sweep_run_staging(run_dir)
    for name in ("heartbeat.json", "stacks.txt"):
        leftover = run_dir / name
        if leftover.exists() and _remove(leftover):
            removed.append(leftover)
    return removed
