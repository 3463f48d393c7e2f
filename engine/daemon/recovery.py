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
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine import fsio
from trainconsole.engine.daemon.launcher import WORKER_MODULE
from trainconsole.engine.layout import Layout
from trainconsole.engine.procid import same_process

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


def sweep(layout: Layout, *, config: Path | None = None, stale_s: float = STALE_TMP_S) -> list[Path]:
    """What dead writers left, found by the pid in their names (``trainconsole.engine.fsio``):
    everything in ``queue/.tmp`` whose writer is dead (or older than an hour: that folder holds
    nothing else), the PID file's and the config's temporaries, each run folder's (see
    ``sweep_run``, plus the heartbeat and stacks of workers that are gone), and the adapters'
    staging folders and pointer temporaries. Returns what was removed."""
    removed = fsio.sweep(layout.tmp, every_name=True, stale_s=stale_s)
    removed += fsio.sweep(layout.queue)
    for path in {config, config.resolve()} if config is not None else ():
        removed += fsio.sweep(path.parent, only=f".{path.name}.")  # edits killed midway
    try:
        run_dirs = [d for d in layout.runs.iterdir() if d.is_dir()]
    except OSError:
        run_dirs = []
    for run_dir in run_dirs:
        removed += sweep_run(run_dir)
        for name in ("heartbeat.json", "stacks.txt"):
            leftover = run_dir / name
            if leftover.exists() and _remove(leftover):
                removed.append(leftover)
    removed += sweep_adapters(layout.adapters)
    return removed


def sweep_adapters(adapters: Path) -> list[Path]:
    """Publications killed midway: staging folders, and temporaries of the ``latest`` pointer and
    of quarantine notes."""
    return fsio.sweep(adapters) + fsio.sweep(adapters / ckpt.QUARANTINE)


def sweep_run(run_dir: Path) -> list[Path]:
    """Leftovers of dead writers in one run folder: temporaries of its files, and staging folders
    of saves that never got their manifest (only bytes, not checkpoints; left alone they would be
    quarantined and pile up with every kill mid-save)."""
    removed = fsio.sweep(run_dir)
    try:
        subdirs = [d for d in run_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError:
        subdirs = []
    for sub in subdirs:
        removed += fsio.sweep(sub) + fsio.sweep(sub / ckpt.QUARANTINE)
    return removed


def _remove(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False
