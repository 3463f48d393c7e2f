"""The supervisor's handle on Slurm (``launcher.kind = "slurm"``): the launcher and its tracker,
what the store records of each attempt, the cluster's summary line, and start-up re-attachment.

Store writes happen only when what Slurm says changed (submitted, placed on a node, a new pending
reason), not at every poll: the store's write rate stays that of the local launcher.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from trainconsole.engine.config import Config
from trainconsole.engine.daemon.launcher import DevicePlan
from trainconsole.engine.daemon.slurm import reattach
from trainconsole.engine.daemon.slurm.commands import SlurmCommands
from trainconsole.engine.daemon.slurm.launcher import SlurmLauncher, SlurmWorker
from trainconsole.engine.daemon.slurm.state import ClusterSummary, SlurmError, SlurmJob
from trainconsole.engine.daemon.slurm.submit import queue_tag, slurm_plan
from trainconsole.engine.daemon.slurm.tracker import SlurmTracker
from trainconsole.engine.errors import TransientError
from trainconsole.engine.store import Job, Store

SUMMARY_EVERY_S = 30.0
ANSWER_WAIT_S = 60.0  # how long a starting engine waits for slurmctld before giving up


@dataclass
class Recovery:
    """What a starting engine found of the attempts an earlier one left."""

    attach: list[tuple[Job, SlurmWorker]] = field(default_factory=list)
    judge: list[tuple[Job, SlurmJob | None]] = field(default_factory=list)
    requeue: list[Job] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)

    @property
    def owned(self) -> set[str]:
        """Jobs whose run folders a Slurm job may still write: no local sweep or orphan hunt there."""
        return {job.id for job, _ in self.attach} | {job.id for job, _ in self.judge}


class SlurmCluster:
    def __init__(self, cfg: Config, *, commands: SlurmCommands | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        lc = cfg.launcher
        self.commands = commands or SlurmCommands()
        self.clock = clock
        self.tag = queue_tag(cfg.layout().queue)
        self.plan: DevicePlan = slurm_plan(cfg.hardware.device, lc.gpus_per_job)
        self.tracker = SlurmTracker(self.commands, lc.poll_s, clock=clock)
        self.launcher = SlurmLauncher(lc, self.plan, self.tag, commands=self.commands, tracker=self.tracker)
        self._recorded: dict[str, tuple[int, str, str]] = {}
        self._summary: ClusterSummary | None = None
        self._summary_at = float("-inf")
        self.summary_error: str | None = None

    def record(self, store: Store, job_id: str, worker: SlurmWorker) -> None:
        """The attempt's Slurm id, node and pending reason, written when they change."""
        now = (worker.slurm_id, worker.node, worker.reason)
        if self._recorded.get(job_id) != now:
            store.set_slurm(job_id, worker.slurm_id, worker.node or None, worker.reason or None)
            self._recorded[job_id] = now

    def forget(self, job_id: str, worker: SlurmWorker) -> None:
        self._recorded.pop(job_id, None)
        self.tracker.forget(worker.slurm_id)

    def summary(self) -> ClusterSummary | None:
        """``sinfo --json`` at most every 30 s (the last answer between, None until one came)."""
        now = self.clock()
        if now - self._summary_at >= SUMMARY_EVERY_S:
            self._summary_at = now
            try:
                self._summary = self.commands.cluster()
                self.summary_error = None
            except SlurmError as exc:
                self.summary_error = exc.message
        return self._summary

    def _queue_at_start(self, wait_s: float) -> dict[int, SlurmJob]:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self.commands.queue()
            except SlurmError as exc:
                if time.monotonic() >= deadline:
                    raise TransientError(
                        f"{exc.message}; the engine cannot tell which of its Slurm jobs still run, and "
                        "will not risk submitting one twice: start it again once slurmctld answers",
                        case=41) from None
                time.sleep(1.0)

    def recover(self, store: Store, *, wait_s: float = ANSWER_WAIT_S) -> Recovery:
        """Sort the store's running jobs by what Slurm says of them (``reattach.plan``), cancel our
        Slurm jobs that no running job owns, and start following the ones still active."""
        running = store.jobs(["running"])
        jobs = self._queue_at_start(wait_s)
        plan = reattach.plan({j.id: j.slurm_id for j in running}, jobs, self.tag)
        by_id = {j.id: j for j in running}
        out = Recovery()
        for slurm_id in plan.cancel:
            try:
                self.commands.cancel(slurm_id)
                out.cancelled.append(slurm_id)
            except SlurmError:
                pass  # gone meanwhile; the next restart looks again
        for job_id, slurm_id in plan.attach.items():
            job = by_id[job_id]
            worker = self.launcher.attach(slurm_id, job_id, store.layout.run_folder(job_id).worker_log)
            out.attach.append((job, worker))
        out.judge = [(by_id[job_id], seen) for job_id, seen in plan.judge.items()]
        out.requeue = [by_id[job_id] for job_id in plan.requeue]
        self.tracker.refresh(force=True)
        for job, worker in out.attach:
            self.record(store, job.id, worker)
        return out
