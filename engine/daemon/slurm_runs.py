"""What the supervisor does differently when its workers are Slurm jobs (``launcher.kind = "slurm"``).

- ``submit``: ``sbatch`` the attempt and record its Slurm id at once (a restarted engine follows it
  by that id); an ``sbatch`` that fails is a transient failure of the attempt, retried with the
  store's back-off.
- ``observe``: at each look, the id, node and pending reason into the store when they change; no
  watchdog while Slurm keeps the job pending (it may wait hours), and the first-step grace counts
  from when it was first seen running. A stop or cancel of a job still pending cancels it outright:
  there is nothing to checkpoint.
- ``judge``: the ending through ``endings.slurm_ending`` (the report first, Slurm's state for what
  the report cannot say); someone else's ``scancel`` holds the job with that reason.
- ``reattach``: at start-up, the attempts an earlier engine left (``SlurmCluster.recover``): those
  still pending or running are followed again, those that ended meanwhile are judged at the first
  look, as any ending; never submitted twice.

The engine holds each attempt's run folder lock while it follows it (a worker on a node cannot
inherit it), so a `trainconsole train` of the same job is refused as on one machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from trainconsole.engine.daemon.launcher import DevicePlan
from trainconsole.engine.daemon.notify import Notifier
from trainconsole.engine.daemon.outcome import Outcome
from trainconsole.engine.daemon.running import Running, event_tail, newest_checkpoint_step
from trainconsole.engine.daemon.slurm.cluster import SlurmCluster
from trainconsole.engine.daemon.slurm.endings import slurm_ending
from trainconsole.engine.daemon.slurm.launcher import SlurmWorker
from trainconsole.engine.daemon.slurm.state import SlurmError
from trainconsole.engine.daemon.watchdog import Watchdog
from trainconsole.engine.errors import ErrorClass
from trainconsole.engine.events import EventLog, EventTail
from trainconsole.engine.lock import RunFolderBusy, lock_run_folder
from trainconsole.engine.runfiles import JobSpec, Report
from trainconsole.engine.store import Job, Store


def _worker(run: Running) -> SlurmWorker:
    assert isinstance(run.worker, SlurmWorker)
    return run.worker


class SlurmRuns:
    def __init__(self, cluster: SlurmCluster, store: Store, notifier: Notifier, events: EventLog) -> None:
        self.cluster = cluster
        self.store = store
        self.notifier = notifier
        self.events = events

    @property
    def plan(self) -> DevicePlan:
        """What each job asks Slurm for (the nodes' GPUs, not this machine's)."""
        return self.cluster.plan

    def submit(self, job: Job, spec: JobSpec, env: Mapping[str, str], watchdog: Watchdog, tail: EventTail,
               lock_fd: int) -> Running | None:
        """The attempt submitted and its id recorded; None when ``sbatch`` refused (the attempt
        is failed as transient, and the job retried after the store's back-off)."""
        folder = spec.folder
        try:
            worker = self.cluster.launcher.submit(job.id, folder.spec, env, folder.worker_log)
        except SlurmError as exc:
            after = self.store.fail_attempt(job.id, ErrorClass.TRANSIENT, f"sbatch failed: {exc.message}",
                                            alert=False)  # the one alert is below
            retried = after.status == "queued"
            self.notifier.alert(None, f"{job.id}: sbatch failed: {exc.message}; " + (
                "retrying after a delay" if retried else f"no attempts left: job {after.status}"),
                job_id=job.id, severity="warning" if retried else "critical", key=f"sbatch:{job.id}:{after.status}")
            return None
        self.cluster.record(self.store, job.id, worker)
        plan = self.plan
        self.events.emit("log", level="info", job_id=job.id, message=(
            f"{job.id} attempt {job.attempts} submitted: Slurm job {worker.slurm_id}, "
            f"{plan.device} x{plan.nproc}" + (f", overrides {job.overrides}" if job.overrides else "")))
        return Running(job, worker, watchdog, folder, 0, tail, lock_fd=lock_fd, started=False,
                       checkpoint_at_start=newest_checkpoint_step(folder))

    def observe(self, run: Running) -> bool:
        """Slurm's word on the attempt into the store; False while the job is not running yet."""
        worker = _worker(run)
        self.cluster.record(self.store, run.job.id, worker)
        since = worker.running_since_mono
        if since is None:
            if run.term_at is not None and not run.killed:
                run.killed = True
                worker.cancel()
            return False
        if not run.started:
            run.started = True
            run.watchdog.start(since)
        return True

    def judge(self, run: Running, report: Report | None, log_tail: str) -> Outcome | None:
        """The attempt's outcome for the retry policy, or None when the job was held here instead
        (cancelled in Slurm by someone else)."""
        worker = _worker(run)
        # Its last node and no pending reason, also when it ran and ended between two looks.
        self.cluster.record(self.store, run.job.id, worker)
        ending = slurm_ending(None if worker.vanished else worker.job, report, stopped_by_us=run.stopping,
                              hung_for_s=run.hung_for_s, log_tail=log_tail,
                              progressed=newest_checkpoint_step(run.folder) > run.checkpoint_at_start)
        if ending.hold_reason is not None and not run.cancel:
            self.store.requeue(run.job.id, reason=ending.hold_reason, hold=True)
            self.notifier.alert(None, f"{run.job.id}: {ending.hold_reason}", job_id=run.job.id,
                                severity="warning")
            return None
        return ending.outcome

    def release(self, run: Running) -> None:
        """The attempt is judged and applied: stop following it, give its run folder back."""
        self.cluster.forget(run.job.id, _worker(run))
        if run.lock_fd is not None:
            os.close(run.lock_fd)
            run.lock_fd = None

    def _lock(self, job: Job) -> int | None:
        try:
            return lock_run_folder(self.store.layout.run_dir(job.id))
        except RunFolderBusy:
            return None  # held by a `trainconsole train` of the same folder: it keeps it

    def reattach(self, watchdog: Callable[[Job], Watchdog]) -> list[Running]:
        """At start, before the local recovery: the attempts an earlier engine left, to follow
        (ended ones included: the first look judges them). Their run folders belong to their
        Slurm jobs, so the local recovery must leave them alone."""
        found = self.cluster.recover(self.store)
        if found.cancelled:
            self.events.emit("log", level="info", message="cancelled Slurm job(s) that no running job owns: "
                             + ", ".join(str(i) for i in found.cancelled))
        follow = list(found.attach)
        for job, seen in found.judge:
            slurm_id = seen.slurm_id if seen is not None else job.slurm_id
            if slurm_id is not None:
                log = self.store.layout.run_folder(job.id).worker_log
                follow.append((job, self.cluster.launcher.attach(slurm_id, job.id, log)))
        runs = []
        for job, worker in follow:
            self.notifier.alert(41, f"{job.id}: the engine restarted while Slurm job {worker.slurm_id} "
                                    "ran it; followed again, not submitted twice", job_id=job.id,
                                severity="info")
            folder = self.store.layout.run_folder(job.id)
            runs.append(Running(job, worker, watchdog(job), folder, 0, event_tail(self.store.layout.job_events(job.id)),
                                lock_fd=self._lock(job), started=False,
                                checkpoint_at_start=newest_checkpoint_step(folder, before=job.started_at or 0.0)))
        return runs
