"""The supervision loop: one worker at a time, watched, reaped, classified, and its job moved on.

Each ``tick`` applies operator commands, watches the running worker (heartbeat, exit), and when
none runs: takes new files from the inbox, checks the resource guards and devices, and starts the
next runnable job. Every phase is guarded: an I/O error or a vanished folder (cases 44, 45) is an
alert and a back-off, never a crash or a hang; an unexpected exception in our own code is logged
with its traceback and the loop goes on. Durations are monotonic (case 47).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trainconsole.engine.config import Config
from trainconsole.engine.config.jobsettings import with_settings
from trainconsole.engine.daemon import inbox as ingest
from trainconsole.engine.daemon.launcher import (
    DevicePlan,
    Launcher,
    WorkerProcess,
    device_plan,
    launcher_for,
    start_worker,
)
from trainconsole.engine.daemon.notify import Notifier
from trainconsole.engine.daemon.outcome import classify, log_tail, oom_kill_count
from trainconsole.engine.daemon.recovery import sweep_adapters, sweep_run
from trainconsole.engine.daemon.resources import ResourceGuard, Sampler, checkpoint_mb, io_problem
from trainconsole.engine.daemon.retry_policy import Ended, Holds, apply_outcome
from trainconsole.engine.daemon.watchdog import Watchdog, collect_stacks
from trainconsole.engine.errors import ErrorClass
from trainconsole.engine.events import EventLog, EventTail
from trainconsole.engine.lock import RunFolderBusy, lock_run_folder
from trainconsole.engine.runfiles import JobSpec, RunFolder, read_report
from trainconsole.engine.store import Job, QueueError, Store
from trainconsole.engine.store import files as store_files

STACK_WAIT_S = 3.0
IO_BACKOFF_MAX_S = 60.0
RESOURCE_EVENT_S = 30.0


@dataclass
class Running:
    job: Job
    worker: WorkerProcess
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


class Supervisor:
    def __init__(self, cfg: Config, store: Store, events: EventLog, notifier: Notifier, sysmon: Sampler, *,
                 launcher_factory: Callable[[DevicePlan], Launcher] = launcher_for) -> None:
        self.cfg = cfg
        self.launcher_factory = launcher_factory
        self.layout = cfg.layout()
        self.store = store
        self.events = events
        self.notifier = notifier
        hw, guards = cfg.hardware, cfg.guards
        self.poll_s = float(cfg.queue.poll_s)
        self.guard = ResourceGuard(sysmon, self.layout, notifier, min_free_ram_mb=hw.min_free_ram_mb,
                                   min_free_disk_mb=hw.min_free_disk_mb, max_swap_mb_s=hw.max_swap_mb_s,
                                   every_s=max(0.5, min(5.0, self.poll_s * 5)))
        self.hang_grace_s = max(3.0, min(30.0, float(guards.hang_floor_s)))
        self.stop_grace_s = max(60.0, 2 * float(guards.hang_floor_s))
        self.current: Running | None = None
        self.stop_requested = False
        self.signalled: str | None = None  # set from a signal handler, acted on in the loop
        self.holds = Holds()  # a full disk's pause and recent device faults (retry_policy)
        self.io_failures = 0
        self.io_retry_at = 0.0
        self.busy_retry_at = 0.0  # a job's run folder was held by another worker: look again then
        # Folders that are mount points now: one that stops being one has lost its mount (45).
        lay = self.layout
        self.mounted = [p for p in (lay.queue, lay.jobs, lay.done, lay.failed, lay.runs, lay.adapters)
                        if os.path.ismount(p)]
        self.needs_repair = False
        self._cpu_warned = False
        self._resource_emit_at = 0.0

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        while True:
            try:
                if self.signalled:
                    self.request_stop(self.signalled)
                    self.signalled = None
                self.tick()
            except Exception:  # last resort: nothing a tick meets may end the engine
                self.io_retry_at = time.monotonic() + IO_BACKOFF_MAX_S / 4
                with contextlib.suppress(Exception):
                    self.notifier.alert(None, "engine error in its loop", severity="critical",
                                        key="engine-loop", traceback=traceback.format_exc())
            if self.stop_requested and self.current is None:
                return 0
            self._sleep(self.poll_s)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.signalled and (left := end - time.monotonic()) > 0:
            time.sleep(min(0.05, left))

    def tick(self) -> None:
        failed_before = self.io_failures
        due = time.monotonic() >= self.io_retry_at  # phases that failed wait out their back-off
        ok = self._guarded("commands", self._apply_commands)
        if self.current is not None:
            ok = self._guarded("worker", self._watch) and ok
        if self.needs_repair and due:
            # A move the store committed but could not make (EBUSY, EPERM, an immutable file: case
            # 50) is finished by the store's own repair, retried until it succeeds.
            repaired = self._guarded("finishing file moves", self.store.repair)
            self.needs_repair = not repaired
            ok = repaired and ok
        if due:
            ok = self._guarded("checking mounts", self._check_mounts) and ok
            ok = self._guarded("sampling resources", self._check_resources) and ok
        if not self.stop_requested and due:
            # The inbox is read while a job trains too, so a file dropped meanwhile is queued (and
            # can be held or reprioritised) at once rather than when the job ends.
            ok = self._guarded("inbox", lambda: ingest.scan(self.layout, self.store, self.cfg, self.events)) and ok
        if self.current is None and not self.stop_requested and due:
            ok = self._guarded("schedule", self._maybe_start) and ok
        if ok and due and failed_before and self.io_failures == failed_before:
            self.io_failures = 0
            self.notifier.forget("io")
            self.notifier.alert(None, "the engine's folders are usable again; work continues",
                                severity="info", key="io-ok")
            self.notifier.forget("io-ok")

    def _check_mounts(self) -> None:
        """A lost mount leaves its mount point behind, empty: what is written there meanwhile is
        hidden once the mount is back, and what was there cannot be moved. Raised as ENOENT, the
        tick backs off (case 45) and the store's repair runs once it is back."""
        for path in self.mounted:
            if not os.path.ismount(path):
                raise FileNotFoundError(errno.ENOENT, "no longer a mount point (an unmounted share?)",
                                        str(path))

    def _guarded(self, phase: str, func: Callable[[], Any]) -> bool:
        try:
            func()
            return True
        except (OSError, sqlite3.Error) as exc:
            self.io_failures += 1
            self.needs_repair = True
            delay = min(IO_BACKOFF_MAX_S, self.poll_s * 2 ** min(self.io_failures, 10))
            self.io_retry_at = time.monotonic() + delay
            case, what = io_problem(exc)
            self.notifier.alert(case, f"{what} while {phase}: {exc}; retrying in {delay:.0f}s "
                                      f"(check that {self.layout.queue} is mounted and healthy)",
                                severity="critical", key="io")
        except Exception as exc:  # our own bug: logged with its traceback, the engine goes on
            self.io_failures += 1
            self.io_retry_at = time.monotonic() + min(IO_BACKOFF_MAX_S, self.poll_s * 2 ** min(self.io_failures, 10))
            self.notifier.alert(None, f"engine error while {phase}: {type(exc).__name__}: {exc}",
                                severity="critical", key=f"engine-bug:{phase}:{type(exc).__name__}",
                                traceback=traceback.format_exc())
        return False

    # -- commands ---------------------------------------------------------------------------------

    def request_stop(self, why: str) -> None:
        if not self.stop_requested:
            self.events.emit("log", level="info", message=f"engine stopping ({why})")
        self.stop_requested = True
        if self.current is not None:
            self._terminate(self.current, self.stop_grace_s, stopping=True)

    def _apply_commands(self) -> None:
        for cmd in self.store.take_commands():
            if cmd.kind == "stop":
                self.request_stop("stop command")
            elif cmd.kind == "pause":
                self.store.set_paused(True)
            elif cmd.kind == "resume":
                self.store.set_paused(False)
            elif cmd.kind == "cancel":
                run = self.current
                if run is not None and run.job.id == cmd.job_id:
                    run.cancel = True
                    self._terminate(run, self.stop_grace_s, stopping=True)
            else:
                self.events.emit("log", level="warning", message=f"unknown command {cmd.kind!r} ignored")

    # -- starting ---------------------------------------------------------------------------------

    def _check_resources(self) -> None:
        """Sampled every few seconds, a job running or not: the alert should come before the
        kernel's OOM killer or a full disk does."""
        self.guard.check()
        if self.holds.disk_paused and self.guard.disk_hold is None:
            self.holds.disk_paused = False
            self.store.set_paused(False)
        self._emit_resources()

    def _maybe_start(self) -> None:
        if not self.guard.state.ok or self.store.paused() or time.monotonic() < self.busy_retry_at:
            return
        plan = device_plan(self.cfg.hardware, self.guard.last_sample)
        if plan.hold:
            self.notifier.alert(plan.case, f"the queue is held: {plan.hold}", severity="critical",
                                key="device-hold")
            return
        self.notifier.forget("device-hold")
        if plan.warning and not self._cpu_warned:
            self._cpu_warned = True
            self.notifier.alert(plan.case, plan.warning, severity="warning", key="device-cpu")
        job = self.store.next_runnable()
        if job is not None:
            try:
                self._launch(job, plan)
            except QueueError as exc:  # held or cancelled by an operator a moment ago: not an error
                self.events.emit("log", level="info", job_id=job.id, message=f"not started: {exc.message}")

    def _emit_resources(self) -> None:
        sample = self.guard.last_sample
        now = time.monotonic()
        if sample is not None and now >= self._resource_emit_at:
            self._resource_emit_at = now + RESOURCE_EVENT_S
            self.events.emit("resource", **sample.event_fields())

    def _launch(self, job: Job, plan: DevicePlan) -> None:
        run_dir = self.layout.run_dir(job.id)
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            # Taken before anything in the folder is touched: its files may be another worker's.
            lock_fd = lock_run_folder(run_dir)
        except RunFolderBusy as exc:
            self.busy_retry_at = time.monotonic() + max(1.0, min(IO_BACKOFF_MAX_S, self.poll_s * 20))
            self.notifier.alert(None, f"{job.id} waits: {exc.message}; it starts once that worker "
                                      "ends (or cancel it, or stop the other worker)",
                                job_id=job.id, severity="warning", key=f"run-busy:{job.id}")
            return
        try:
            self._launch_locked(job, plan, run_dir, lock_fd)
        finally:
            os.close(lock_fd)  # the worker holds its own copy for as long as it lives
        self.notifier.forget(f"run-busy:{job.id}")

    def _launch_locked(self, job: Job, plan: DevicePlan, run_dir: Path, lock_fd: int) -> None:
        folder = RunFolder(run_dir)
        for path in folder.attempt_files():
            path.unlink(missing_ok=True)  # this attempt's files only
        if not self._data_copy_present(job):
            message = (f"the engine's copy of the data, {job.path}, was removed by hand (the queue "
                       "folder itself is fine), so the job cannot run; add the file again with "
                       f"`trainconsole add FILE` or drop it into {self.layout.incoming}")
            self.store.fail_attempt(job.id, ErrorClass.DATA, message)
            self.notifier.alert(51, f"{job.id}: {message}", job_id=job.id, severity="warning")
            return
        exp = job.experiment
        # The job's own settings (fixed when queued) and where its adapter continues from.
        spec = JobSpec(job_id=job.id, data_file=job.path, config=self.cfg.source, run_dir=run_dir,
                       overrides=job.overrides, adapters_dir=self.layout.adapters, settings=exp.settings,
                       lineage=exp.lineage, start_from=exp.start_from)
        spec.write()
        job = self.store.start(job.id)  # durable before the spawn: a kill now still used an attempt
        oom_before = oom_kill_count()
        try:
            launcher, worker = start_worker(spec, plan, job_name=job.name, keep_fds=(lock_fd,),
                                            factory=self.launcher_factory)
        except OSError as exc:
            self.store.fail_attempt(job.id, ErrorClass.TRANSIENT, f"could not start the worker: {exc}")
            raise
        g = self.job_config(job).guards
        self.current = Running(
            job, worker, Watchdog(folder.heartbeat, floor_s=g.hang_floor_s, multiple=g.hang_multiple,
                                  first_step_grace_s=g.first_step_grace_s, launched_mono=worker.launched_mono,
                                  boundary=self._boundary(job)),
            folder, oom_before, EventTail(self.layout.job_events(job.id), self._log_size(job.id)))
        self.store.set_worker(job.id, worker.pid, worker.pid_start)
        self.events.emit("log", level="info", job_id=job.id, message=(
            f"{job.id} attempt {job.attempts} started: {launcher.name} pid {worker.pid}, "
            f"{plan.device} x{plan.nproc}" + (f", overrides {job.overrides}" if job.overrides else "")))

    def _data_copy_present(self, job: Job) -> bool:
        """False only when the job's own copy under jobs/ was deleted (51). A queue folder that is
        gone, unmounted or unreadable (45) raises instead: the guarded phase backs off without
        using the job's attempts, since nothing is wrong with the job."""
        folder = job.path.parent
        try:
            if job.path.exists():
                return True
            # The sidecar beside it, still there, shows the folder is mounted and readable.
            if (folder / store_files.sidecar_name(job.id)).exists() and self.layout.queue.is_dir():
                return False
            why = "gone or empty"
        except OSError as exc:
            why = f"unreadable ({exc.strerror or exc})"
        raise FileNotFoundError(errno.ENOENT, f"the queue's jobs folder is {why} (an unmounted share?)",
                                str(folder))

    def job_config(self, job: Job) -> Config:
        """The config this job runs with: its stored settings over config.toml."""
        return with_settings(self.cfg, job.experiment.settings)

    def _boundary(self, job: Job) -> Callable[[int], bool]:
        t = self.job_config(job).training

        def slow_after(step: int) -> bool:
            last = self.current.last_max_steps if self.current is not None else None
            last = last or job.max_steps
            return (step % max(1, t.save_steps) == 0 or step % max(1, t.eval_steps) == 0
                    or (last is not None and step >= last))
        return slow_after

    def _log_size(self, job_id: str) -> int:
        try:
            return int(self.layout.job_events(job_id).stat().st_size)
        except OSError:
            return 0

    # -- watching ---------------------------------------------------------------------------------

    def _watch(self) -> None:
        run = self.current
        assert run is not None
        code = run.worker.poll()
        if code is not None:
            self._finish(run, code)
            return
        now = time.monotonic()
        self._progress(run)
        if run.term_at is None:
            verdict = run.watchdog.check(now)
            if verdict.hung:
                run.hung_for_s = verdict.silent_for_s
                self._dump_stacks(run, verdict.silent_for_s, verdict.limit_s)
                self._terminate(run, self.hang_grace_s)
        elif not run.killed and now - run.term_at > run.term_grace_s:
            run.killed = True
            run.worker.signal_group(signal.SIGKILL)
            self.events.emit("log", level="warning", job_id=run.job.id, message=(
                f"{run.job.id}: worker did not exit {run.term_grace_s:.0f}s after SIGTERM; killed"))

    def _terminate(self, run: Running, grace_s: float, *, stopping: bool = False) -> None:
        run.stopping = run.stopping or stopping
        if run.term_at is None:
            run.term_at = time.monotonic()
            run.term_grace_s = grace_s
            run.worker.signal_group(signal.SIGTERM)

    def _progress(self, run: Running) -> None:
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
            self.store.progress(run.job.id, run.last_step or 0, run.last_max_steps,
                                loss=float(loss) if isinstance(loss, int | float) else None, eval_loss=eval_loss)

    def _dump_stacks(self, run: Running, silent_s: float, limit_s: float) -> None:
        """Stacks first, then the kill: a hang is only fixable if we know where it sat (case 70)."""
        text = collect_stacks(run.worker.request_stacks, run.folder.stacks(), STACK_WAIT_S)
        message = (f"{run.job.id}: no training progress for {silent_s:.0f}s (limit {limit_s:.0f}s); "
                   f"ending the worker. Python stacks:\n{text[-20000:]}")
        with EventLog(self.layout.job_events(run.job.id)) as job_log:
            job_log.emit("log", level="error", job_id=run.job.id, message=message)
        self.notifier.alert(70, f"{run.job.id}: no training progress for {silent_s:.0f}s (limit "
                                f"{limit_s:.0f}s); the worker is ended and the job resumes from its last "
                                f"checkpoint; stacks in {self.layout.job_events(run.job.id)}",
                            job_id=run.job.id, severity="critical")

    # -- finishing --------------------------------------------------------------------------------

    def _finish(self, run: Running, code: int) -> None:
        swept = sweep_run(run.folder.path) + sweep_adapters(self.layout.adapters)
        if swept:
            self.events.emit("log", level="info", job_id=run.job.id,
                             message=f"removed {len(swept)} unfinished save(s) of the ended worker")
        report = read_report(run.folder.report)
        outcome = classify(report, code, oom_kills_during_run=oom_kill_count() - run.oom_before,
                           hung_for_s=run.hung_for_s, stopped_by_us=run.stopping,
                           log_tail=log_tail(run.worker.log_path) if report is None else "")
        if outcome.error_class in (ErrorClass.BUG, ErrorClass.TRANSIENT):
            # A full disk surfaces in many disguises (torch.save's "unexpected pos", a torn write):
            # the filesystem, not the message, says whether the attempt was the disk's fault (25).
            run_dir = run.folder.path
            free = self.guard.sysmon.sample([run_dir]).disk_free_mb.get(str(run_dir))
            if free is not None and free < checkpoint_mb(run_dir):
                outcome = replace(outcome, error_class=ErrorClass.DISK_FULL, case=25, message=(
                    f"{outcome.message} (only {free:.2f} MB free on {run_dir}: treated as a full disk)"))
        ended = Ended(run.job, run_dir=run.folder.path, job_log=self.layout.job_events(run.job.id),
                      cancelled=run.cancel)
        apply_outcome(outcome, ended, store=self.store, notifier=self.notifier, guard=self.guard,
                      holds=self.holds, training=self.job_config(run.job).training)
        self.current = None

