"""The supervision loop: workers started, watched, reaped, classified, and their jobs moved on.

Each ``tick`` applies operator commands, watches the running workers (heartbeat, exit), takes new
files from the inbox, checks the resource guards and devices, and while a slot is free starts the
next runnable jobs: one at a time on this machine; with ``launcher.kind = "slurm"`` up to
``launcher.max_parallel``, never two of one lineage (``trainconsole.engine.daemon.slots``), each
worker a Slurm job (``trainconsole.engine.daemon.slurm_runs``). Every phase is guarded: an
I/O error or a vanished folder (cases 44, 45) is an alert and a back-off, never a crash or a hang;
an unexpected exception in our own code is logged with its traceback and the loop goes on.
Durations are monotonic (case 47).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sqlite3
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from trainconsole.engine.config import Config
from trainconsole.engine.config.jobsettings import with_settings
from trainconsole.engine.daemon import inbox as ingest
from trainconsole.engine.daemon.launcher import (
    DevicePlan,
    Launcher,
    device_plan,
    launcher_for,
    start_worker,
    worker_env,
)
from trainconsole.engine.daemon.notify import Notifier
from trainconsole.engine.daemon.outcome import classify, log_tail, oom_kill_count
from trainconsole.engine.daemon.preempt import Preemption
from trainconsole.engine.daemon.preempt import choose as choose_preemption
from trainconsole.engine.daemon.recovery import sweep_adapters, sweep_run
from trainconsole.engine.daemon.resources import ResourceGuard, Sampler, checkpoint_mb, io_problem
from trainconsole.engine.daemon.retention import Retention
from trainconsole.engine.daemon.retry_policy import Ended, Holds, apply_outcome
from trainconsole.engine.daemon.running import Running, dump_stacks, event_tail, read_progress, watchdog_for
from trainconsole.engine.daemon.slots import Slots
from trainconsole.engine.daemon.slurm.cluster import SlurmCluster
from trainconsole.engine.daemon.slurm_runs import SlurmRuns
from trainconsole.engine.daemon.watchdog import Watchdog
from trainconsole.engine.errors import ErrorClass
from trainconsole.engine.events import EventLog
from trainconsole.engine.lock import RunFolderBusy, lock_run_folder
from trainconsole.engine.runfiles import JobSpec, RunFolder, read_report
from trainconsole.engine.store import Job, QueueError, Store
from trainconsole.engine.store import files as store_files

IO_BACKOFF_MAX_S = 60.0
RESOURCE_EVENT_S = 30.0


class Supervisor:
    def __init__(self, cfg: Config, store: Store, events: EventLog, notifier: Notifier, sysmon: Sampler, *,
                 launcher_factory: Callable[[DevicePlan], Launcher] = launcher_for,
                 cluster: SlurmCluster | None = None) -> None:
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
        self.running: dict[str, Running] = {}  # by job id
        self.preempting: dict[str, Preemption] = {}  # by the stopping job's id (queue.preempt)
        self.retention = Retention(cfg.retention, self.layout, store, events)
        slurm = cfg.launcher.kind == "slurm"
        self.slurm = SlurmRuns(cluster or SlurmCluster(cfg), store, notifier, events) if slurm else None
        self.slots = Slots(cfg.launcher.max_parallel if slurm else 1)
        self.stop_requested = False
        self.signalled: str | None = None  # set from a signal handler, acted on in the loop
        self.holds = Holds()  # a full disk's pause and recent device faults (retry_policy)
        self.io_failures = 0
        self.io_retry_at = 0.0
        # Folders that are mount points now: one that stops being one has lost its mount (45).
        lay = self.layout
        self.mounted = [p for p in (lay.queue, lay.jobs, lay.done, lay.failed, lay.runs, lay.adapters)
                        if os.path.ismount(p)]
        self.needs_repair = False
        self._cpu_warned = False
        self._resource_emit_at = 0.0

    @property
    def current(self) -> Running | None:
        """The running attempt (the first of them when several slots are busy)."""
        return next(iter(self.running.values()), None)

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
            if self.stop_requested and not self.running:
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
        for run in list(self.running.values()):
            ok = self._guarded("worker", functools.partial(self._watch, run)) and ok
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
        if due:
            ok = self._guarded("retention", lambda: self.retention.tick(frozenset(self.running))) and ok
        if self.cfg.queue.preempt and self.running and not self.stop_requested and due:
            ok = self._guarded("preempting", self._maybe_preempt) and ok
        if len(self.running) < self.slots.max_parallel and not self.stop_requested and due:
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
        for run in self.running.values():
            self._terminate(run, self.stop_grace_s, stopping=True)

    def _apply_commands(self) -> None:
        for cmd in self.store.take_commands():
            if cmd.kind == "stop":
                self.request_stop("stop command")
            elif cmd.kind == "pause":
                self.store.set_paused(True)
            elif cmd.kind == "resume":
                self.store.set_paused(False)
            elif cmd.kind == "cancel":
                run = self.running.get(cmd.job_id or "")
                if run is not None:
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
        if not self.guard.state.ok or self.store.paused():
            return
        plan = self.slurm.plan if self.slurm else device_plan(self.cfg.hardware, self.guard.last_sample)
        if plan.hold:
            self.notifier.alert(plan.case, f"the queue is held: {plan.hold}", severity="critical",
                                key="device-hold")
            return
        self.notifier.forget("device-hold")
        if plan.warning and not self._cpu_warned:
            self._cpu_warned = True
            self.notifier.alert(plan.case, plan.warning, severity="warning", key="device-cpu")
        # A job whose run folder is busy waits (``_launch``): the next look passes it over.
        for job in self.slots.pick(self.store.runnable(), [r.job for r in self.running.values()]):
            try:
                self._launch(job, plan)
            except QueueError as exc:  # held or cancelled by an operator a moment ago: not an error
                self.events.emit("log", level="info", job_id=job.id, message=f"not started: {exc.message}")

    def _maybe_preempt(self) -> None:
        """``queue.preempt``: stop a lower-priority job at a checkpoint for a waiting higher one
        (``trainconsole.engine.daemon.preempt``); its slot is taken by ``_maybe_start`` once it exits."""
        if not self.guard.state.ok or self.store.paused():
            return
        found = choose_preemption(self.store.runnable(), list(self.running.values()), self.slots)
        if found is None:
            return
        run = found.victim
        self.preempting[run.job.id] = found
        self.events.emit("log", level="info", job_id=run.job.id, message=(
            f"{run.job.id} ({run.job.priority}) stops at its next step for {found.for_job.id} "
            f"({found.for_job.priority}): checkpoint, requeue, resume later"))
        self._terminate(run, self.stop_grace_s, stopping=True)

    def _emit_resources(self) -> None:
        sample = self.guard.last_sample
        now = time.monotonic()
        if sample is not None and now >= self._resource_emit_at:
            self._resource_emit_at = now + RESOURCE_EVENT_S
            fields = sample.event_fields()
            summary = self.slurm.cluster.summary() if self.slurm else None
            if summary is not None:
                fields["cluster"] = summary.line()  # the console's "cluster" line
            self.events.emit("resource", **fields)

    def _launch(self, job: Job, plan: DevicePlan) -> None:
        """A job whose run folder is busy (a foreground ``train`` holds it) waits, uncharged, its
        reason shown, and is tried again later, while the jobs behind it run."""
        run_dir = self.layout.run_dir(job.id)
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            # Taken before anything in the folder is touched: its files may be another worker's.
            lock_fd = lock_run_folder(run_dir)
        except RunFolderBusy as exc:
            self.store.wait_busy(job.id, f"run folder busy: {exc.message}",
                                 max(1.0, min(IO_BACKOFF_MAX_S, self.poll_s * 20)))
            self.notifier.alert(None, f"{job.id} waits: {exc.message}; it starts once that worker "
                                      "ends (or cancel it, or stop the other worker); the jobs behind it "
                                      "run meanwhile", job_id=job.id, severity="warning", key=f"run-busy:{job.id}")
            return
        kept = False
        try:
            kept = self._launch_locked(job, plan, run_dir, lock_fd)
        finally:
            if not kept:
                os.close(lock_fd)  # the worker holds its own copy for as long as it lives
        self.notifier.forget(f"run-busy:{job.id}")

    def _launch_locked(self, job: Job, plan: DevicePlan, run_dir: Path, lock_fd: int) -> bool:
        """Start the attempt; True when its Running keeps ``lock_fd`` (a Slurm job's)."""
        folder = RunFolder(run_dir)
        for path in folder.attempt_files():
            path.unlink(missing_ok=True)  # this attempt's files only
        if not self._data_copy_present(job):
            message = (f"the engine's copy of the data, {job.path}, was removed by hand (the queue "
                       "folder itself is fine), so the job cannot run; add the file again with "
                       f"`trainconsole add FILE` or drop it into {self.layout.incoming}")
            self.store.fail_attempt(job.id, ErrorClass.DATA, message, alert=False)  # the 51 below is its one
            self.notifier.alert(51, f"{job.id}: {message}", job_id=job.id, severity="warning")
            return False
        exp = job.experiment
        # The job's own settings (fixed when queued) and where its adapter continues from.
        spec = JobSpec(job_id=job.id, data_file=job.path, config=self.cfg.source, run_dir=run_dir,
                       overrides=job.overrides, adapters_dir=self.layout.adapters, settings=exp.settings,
                       lineage=exp.lineage, start_from=exp.start_from)
        spec.write()
        job = self.store.start(job.id)  # durable before the spawn: a kill now still used an attempt
        if self.slurm is not None:
            run = self.slurm.submit(job, spec, worker_env(plan, job.name), self._watchdog(job, None, observed=True),
                                    event_tail(self.layout.job_events(job.id)), lock_fd)
            if run is not None:
                self.running[job.id] = run
            return run is not None
        oom_before = oom_kill_count()
        try:
            launcher, worker = start_worker(spec, plan, job_name=job.name, keep_fds=(lock_fd,),
                                            factory=self.launcher_factory)
        except OSError as exc:
            self.store.fail_attempt(job.id, ErrorClass.TRANSIENT, f"could not start the worker: {exc}")
            raise
        self.running[job.id] = Running(job, worker, self._watchdog(job, worker.launched_mono), folder, oom_before,
                                       event_tail(self.layout.job_events(job.id)))
        self.store.set_worker(job.id, worker.pid, worker.pid_start)
        self.events.emit("log", level="info", job_id=job.id, message=(
            f"{job.id} attempt {job.attempts} started: {launcher.name} pid {worker.pid}, "
            f"{plan.device} x{plan.nproc}" + (f", overrides {job.overrides}" if job.overrides else "")))
        return False

    def _watchdog(self, job: Job, launched_mono: float | None, *, observed: bool = False) -> Watchdog:
        def max_steps() -> int | None:
            run = self.running.get(job.id)
            return run.last_max_steps if run is not None else None
        return watchdog_for(job, self.job_config(job), self.layout.run_folder(job.id).heartbeat, max_steps,
                            launched_mono=launched_mono, observed=observed)

    def reattach(self) -> frozenset[str]:
        """At start-up with Slurm: follow the attempts an earlier engine left. Returns their jobs,
        which the local recovery must leave alone (``recovery.recover``'s ``owned``)."""
        if self.slurm is None:
            return frozenset()
        for run in self.slurm.reattach(lambda job: self._watchdog(job, None, observed=True)):
            self.running[run.job.id] = run
        return frozenset(self.running)

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

    # -- watching ---------------------------------------------------------------------------------

    def _watch(self, run: Running) -> None:
        code = run.worker.poll()
        if code is not None:
            self._finish(run, code)
            return
        if self.slurm is not None and not self.slurm.observe(run):
            return  # waiting in Slurm's queue: nothing to watch yet
        now = time.monotonic()
        read_progress(run, self.store)
        if run.term_at is None:
            verdict = run.watchdog.check(now)
            if verdict.hung:
                run.hung_for_s = verdict.silent_for_s
                dump_stacks(run, verdict.silent_for_s, verdict.limit_s, self.layout.job_events(run.job.id),
                            self.notifier)
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

    # -- finishing --------------------------------------------------------------------------------

    def _finish(self, run: Running, code: int) -> None:
        # Temporaries carry their writer's pid, which says nothing of a worker on another node:
        # the shared adapters folder is swept only while no other worker may be publishing there.
        others = any(r is not run for r in self.running.values())
        swept = sweep_run(run.folder.path) + ([] if others else sweep_adapters(self.layout.adapters))
        if swept:
            self.events.emit("log", level="info", job_id=run.job.id,
                             message=f"removed {len(swept)} unfinished save(s) of the ended worker")
        report = read_report(run.folder.report)
        tail = log_tail(run.worker.log_path) if report is None else ""
        if self.slurm is not None:
            judged = self.slurm.judge(run, report, tail)
            if judged is None:  # held: someone else cancelled its Slurm job
                self._release(run)
                return
            outcome = judged
        else:
            outcome = classify(report, code, oom_kills_during_run=oom_kill_count() - run.oom_before,
                               hung_for_s=run.hung_for_s, stopped_by_us=run.stopping, log_tail=tail)
        if outcome.error_class in (ErrorClass.BUG, ErrorClass.TRANSIENT):
            # A full disk surfaces in many disguises (torch.save's "unexpected pos", a torn write):
            # the filesystem, not the message, says whether the attempt was the disk's fault (25).
            run_dir = run.folder.path
            free = self.guard.sysmon.sample([run_dir]).disk_free_mb.get(str(run_dir))
            if free is not None and free < checkpoint_mb(run_dir):
                outcome = replace(outcome, error_class=ErrorClass.DISK_FULL, case=25, message=(
                    f"{outcome.message} (only {free:.2f} MB free on {run_dir}: treated as a full disk)"))
        preempted = self.preempting.pop(run.job.id, None)
        ended = Ended(run.job, run_dir=run.folder.path, job_log=self.layout.job_events(run.job.id),
                      cancelled=run.cancel, requeue_reason=preempted.reason() if preempted else None)
        apply_outcome(outcome, ended, store=self.store, notifier=self.notifier, guard=self.guard,
                      holds=self.holds, training=self.job_config(run.job).training)
        self._release(run)

    def _release(self, run: Running) -> None:
        """Only once its outcome is applied: a tick that failed before is retried on the same run."""
        if self.slurm is not None:
            self.slurm.release(run)
        self.running.pop(run.job.id, None)

