"""Start-up recovery after the daemon was killed, the power went or the machine rebooted (41-43),
all of it here: ``recover`` is what the daemon runs before anything trains.

Workers orphaned by a killed daemon are ended (found both by the pid and process identity the
store recorded, ``trainconsole.engine.procid``: a pid since given to an unrelated process is not
ours to end, and by their command line naming a spec under our runs folder, in case the daemon
died between spawning and recording; a live `trainconsole train`'s worker, as its spec says, is
left alone); jobs left ``running`` are requeued without charging an attempt (the worker resumes
from the newest good checkpoint), or recorded as done when an orphan finished meanwhile; what
dead writers left (temporary files, staging folders: ``trainconsole.engine.fsio.sweep``) is
removed. ``sweep_run`` is also what the supervisor runs after each worker ends.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine import fsio
from trainconsole.engine.daemon.launcher import WORKER_MODULE
from trainconsole.engine.daemon.notify import Notifier
from trainconsole.engine.events import EventLog
from trainconsole.engine.layout import Layout
from trainconsole.engine.procid import same_process
from trainconsole.engine.runfiles import JobSpec, RunFileError, RunFolder, read_report
from trainconsole.engine.store import Job, Store

STALE_TMP_S = 3600.0


@dataclass(frozen=True)
class Orphan:
    pid: int
    job_id: str | None
    how: str


def find_orphans(jobs: list[Job], layout: Layout) -> list[Orphan]:
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
        if spec.startswith(runs + os.sep) and proc.pid not in found and not _foreground(spec):
            # torchrun's ranks are found through their parent's group; one entry per group.
            try:
                pgid = os.getpgid(proc.pid)
            except ProcessLookupError:
                continue
            if pgid not in found:
                found[pgid] = Orphan(pgid, Path(spec).parent.name, "found by its command line")
    return list(found.values())


def _foreground(spec_path: str) -> bool:
    """A worker that a live `trainconsole train` started is an operator's foreground run, not an
    orphan of a killed engine, and is left alone. Its spec says who launched it, and that
    command's pid and process identity tell a live launcher from a gone one."""
    try:
        spec = JobSpec.read(Path(spec_path))
    except RunFileError:
        return False
    return spec.launched_by == "train" and same_process(spec.launcher_pid, spec.launcher_identity)


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


def recover(store: Store, layout: Layout, notifier: Notifier, events: EventLog, *, grace_s: float,
            config: Path | None = None, owned: frozenset[str] = frozenset()) -> None:
    """Before anything trains: end orphans, requeue jobs left running (or record one an orphan
    finished meanwhile as done), sweep leftovers. ``owned``: jobs whose Slurm attempt the engine
    follows again (``Supervisor.reattach``); their workers and run folders are left alone."""
    running = [j for j in store.jobs(["running"]) if j.id not in owned]
    orphans = [o for o in find_orphans(running, layout) if o.job_id not in owned]
    if orphans:
        notifier.alert(41, f"ending {len(orphans)} worker(s) left by an engine that did not stop cleanly: "
                           + ", ".join(f"pid {o.pid} ({o.job_id or '?'}, {o.how})" for o in orphans),
                       severity="warning", key="orphans")
        end_orphans(orphans, grace_s)
    for job in running:
        report = read_report(layout.run_folder(job.id).report)
        if report is not None and report.done:
            # The orphan finished its job while no engine watched: its work is not redone.
            store.succeed(job.id)
            notifier.alert(41, f"{job.id} finished while the engine was down; recorded as done",
                           severity="info", job_id=job.id)
            continue
        store.requeue(job.id, charge_attempt=False,
                      reason="the engine stopped while this job ran; it resumes from its last checkpoint")
        notifier.alert(41, f"{job.id} was running when the engine stopped (killed, power loss or "
                           "reboot); requeued, it resumes from its newest good checkpoint",
                       severity="warning", job_id=job.id)
    removed = sweep(layout, config=config, skip=owned)
    if removed:
        events.emit("log", level="info", message=f"swept {len(removed)} leftover temporary file(s): "
                    + ", ".join(p.name for p in removed[:10]))


def sweep(layout: Layout, *, config: Path | None = None, stale_s: float = STALE_TMP_S,
          skip: frozenset[str] = frozenset()) -> list[Path]:
    """What dead writers left, found by the pid in their names (``trainconsole.engine.fsio``):
    everything in ``queue/.tmp`` whose writer is dead (or older than an hour: that folder holds
    nothing else), the PID file's and the config's temporaries, each run folder's (see
    ``sweep_run``, plus the heartbeat and stacks of workers that are gone), and the adapters'
    staging folders and pointer temporaries. Returns what was removed. ``skip``: jobs whose worker
    may still run on another machine (a Slurm node), whose pids say nothing here: their run
    folders are left alone, and so is the shared adapters folder."""
    removed = fsio.sweep(layout.tmp, every_name=True, stale_s=stale_s)
    removed += fsio.sweep(layout.queue)
    for path in {config, config.resolve()} if config is not None else ():
        removed += fsio.sweep(path.parent, only=f".{path.name}.")  # edits killed midway
    try:
        run_dirs = [d for d in layout.runs.iterdir() if d.is_dir() and d.name not in skip]
    except OSError:
        run_dirs = []
    for run_dir in run_dirs:
        removed += sweep_run(run_dir)
        for leftover in (RunFolder(run_dir).heartbeat, RunFolder(run_dir).stacks()):
            if leftover.exists() and _remove(leftover):
                removed.append(leftover)
    if not skip:
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
    checkpoints = RunFolder(run_dir).checkpoints
    return fsio.sweep(run_dir) + fsio.sweep(checkpoints) + fsio.sweep(checkpoints / ckpt.QUARANTINE)


def _remove(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False
