"""One attempt the supervisor follows, local or on Slurm: its worker, watchdog and progress.

With ``launcher.max_parallel`` above 1 the supervisor follows several at once (one per job), so
what belongs to an attempt lives here rather than on the supervisor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine.config import Config
from trainconsole.engine.daemon.launcher import WorkerProcess
from trainconsole.engine.daemon.notify import Notifier
from trainconsole.engine.daemon.slurm.launcher import SlurmWorker
from trainconsole.engine.daemon.watchdog import Watchdog, collect_stacks
from trainconsole.engine.events import EventLog, EventTail
from trainconsole.engine.runfiles import RunFolder
from trainconsole.engine.store import Job, Store

STACK_WAIT_S = 3.0


@dataclass
class Running:
    job: Job
    worker: WorkerProcess | SlurmWorker
    watchdog: Watchdog
    folder: RunFolder
    oom_before: int
    tail: EventTail
    last_step: int | None = None
    last_max_steps: int | None = None
    term_at: float | None = None  # monotonic time SIGTERM went to the group
    term_grace_s: float = 0.0
    killed: bool = False
    hung_for_s: float | None = None
    stopping: bool = False  # stopped by us (stop, cancel): an interruption, not a failure
    cancel: bool = False
    # A Slurm worker cannot inherit the run folder's lock: the engine holds it for the attempt.
    lock_fd: int | None = None
    started: bool = True  # False while Slurm keeps the job pending: no watchdog before it runs
    checkpoint_at_start: int = 0  # the newest checkpoint's step when the attempt began

    @property
    def on_slurm(self) -> bool:
        return isinstance(self.worker, SlurmWorker)


def newest_checkpoint_step(folder: RunFolder, *, before: float | None = None) -> int:
    """The newest checkpoint's step; with ``before`` (wall seconds), the newest one published
    before then. A checkpoint folder is published by one rename of a finished folder, so its mtime
    is when it was written: an attempt followed again after an engine restart (whose start value
    died with the old engine) finds what it began from with its start time from the store."""
    for step, path in ckpt.list_checkpoints(folder.checkpoints):
        if before is None:
            return int(step)
        try:
            if path.stat().st_mtime <= before:
                return int(step)
        except OSError:
            continue
    return 0


def read_progress(run: Running, store: Store) -> None:
    """The job's new step and eval events since the last look, into the store (once per change)."""
    last = None
    eval_loss: float | None = None
    for event in run.tail.read_new():
        if event.get("type") == "step" and isinstance(event.get("step"), int):
            last = event
        elif event.get("type") == "eval" and isinstance(event.get("eval_loss"), int | float):
            eval_loss = float(event["eval_loss"])
    if (last is not None and last["step"] != run.last_step) or eval_loss is not None:
        if last is not None:
            run.last_step = last["step"]
            max_steps = last.get("max_steps")
            run.last_max_steps = max_steps if isinstance(max_steps, int) else run.last_max_steps
        loss = last.get("loss") if last is not None else None
        store.progress(run.job.id, run.last_step or 0, run.last_max_steps,
                       loss=float(loss) if isinstance(loss, int | float) else None, eval_loss=eval_loss)


def event_tail(job_log: Path) -> EventTail:
    """The job's event log, read from its current end: an attempt's progress is its own."""
    try:
        size = int(job_log.stat().st_size)
    except OSError:
        size = 0
    return EventTail(job_log, size)


def dump_stacks(run: Running, silent_s: float, limit_s: float, job_log: Path, notifier: Notifier) -> None:
    """Stacks first, then the kill: a hang is only fixable if we know where it sat (case 70)."""
    text = collect_stacks(run.worker.request_stacks, run.folder.stacks(), STACK_WAIT_S)
    message = (f"{run.job.id}: no training progress for {silent_s:.0f}s (limit {limit_s:.0f}s); "
               f"ending the worker. Python stacks:\n{text[-20000:]}")
    with EventLog(job_log) as log:
        log.emit("log", level="error", job_id=run.job.id, message=message)
    notifier.alert(70, f"{run.job.id}: no training progress for {silent_s:.0f}s (limit "
                       f"{limit_s:.0f}s); the worker is ended and the job resumes from its last "
                       f"checkpoint; stacks in {job_log}", job_id=run.job.id, severity="critical")


def watchdog_for(job: Job, cfg: Config, heartbeat: Path, max_steps: Callable[[], int | None], *,
                 launched_mono: float | None, observed: bool = False) -> Watchdog:
    """The attempt's watchdog, with the job's own guards. ``max_steps``: the run's newest word on
    its length (the last step of all is a slow one: publishing)."""
    g, t = cfg.guards, cfg.training

    def slow_after(step: int) -> bool:
        last = max_steps() or job.max_steps
        return (step % max(1, t.save_steps) == 0 or step % max(1, t.eval_steps) == 0
                or (last is not None and step >= last))
    return Watchdog(heartbeat, floor_s=g.hang_floor_s, multiple=g.hang_multiple, first_step_grace_s=g.first_step_grace_s,
                    launched_mono=launched_mono, boundary=slow_after, observed=observed)
