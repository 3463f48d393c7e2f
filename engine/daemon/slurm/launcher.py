"""The Slurm launcher: one ``sbatch`` per attempt, and the submitted job seen as a worker.

``SlurmWorker`` answers what the supervisor asks of a local worker process (has it ended, with
what status; send it a signal; ask for its Python stacks) through Slurm: the state from the
shared ``SlurmTracker`` (one ``squeue`` per interval for every job), signals with
``scancel --signal=... --full`` (the batch shell and every process under it). It has no local
pid: what identifies it, in the store too, is the Slurm job id.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from pathlib import Path

from trainconsole.engine import fsio
from trainconsole.engine.config.schema import LauncherConfig
from trainconsole.engine.daemon.launcher import DevicePlan
from trainconsole.engine.daemon.slurm.commands import SlurmCommands
from trainconsole.engine.daemon.slurm.state import SlurmError, SlurmJob
from trainconsole.engine.daemon.slurm.submit import (
    batch_script,
    job_name,
    sbatch_argv,
    worker_command,
)
from trainconsole.engine.daemon.slurm.tracker import SlurmTracker
from trainconsole.engine.runfiles import RunFolder
from trainconsole.engine.signals import STACKS_SIGNAL, signal_name

# What a job's status reads as before Slurm gives one (vanished, or ended by a signal we cannot see).
NO_STATUS = -signal.SIGKILL


class SlurmWorker:
    """One submitted attempt, followed through the tracker."""

    def __init__(self, slurm_id: int, name: str, log_path: Path, tracker: SlurmTracker,
                 commands: SlurmCommands, *, launched_mono: float | None = None) -> None:
        self.slurm_id = slurm_id
        self.name = name
        self.log_path = log_path
        self.tracker = tracker
        self.commands = commands
        self.launched_mono = time.monotonic() if launched_mono is None else launched_mono
        tracker.watch(slurm_id)

    @property
    def job(self) -> SlurmJob | None:
        return self.tracker.get(self.slurm_id).job

    @property
    def vanished(self) -> bool:
        return self.tracker.get(self.slurm_id).vanished

    @property
    def node(self) -> str:
        job = self.job
        return job.node if job is not None else ""

    @property
    def state(self) -> str:
        job = self.job
        return "VANISHED" if self.vanished else job.state if job is not None else "SUBMITTED"

    @property
    def reason(self) -> str:
        """Slurm's reason while it keeps the job pending (Resources, Priority, QOSMaxJobs...)."""
        job = self.job
        return job.reason if job is not None and job.state == "PENDING" and job.reason != "None" else ""

    @property
    def running_since_mono(self) -> float | None:
        """When this process first saw the job running: the watchdog's clock starts there, not at
        submission (a job may wait hours in the queue)."""
        return self.tracker.get(self.slurm_id).first_running_mono

    def poll(self) -> int | None:
        """The job's exit status once Slurm says it ended (or it vanished), else None."""
        self.tracker.refresh()
        if not self.tracker.ended(self.slurm_id):
            return None
        job = self.job
        if job is None or self.vanished:
            return NO_STATUS
        if job.signal:
            return -job.signal
        return job.exit_code if job.exit_code is not None else NO_STATUS

    def wait(self, timeout: float) -> int | None:
        """Like ``Popen.wait``: the status once ended, None when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while True:
            self.tracker.refresh(force=True)
            code = self.poll()
            if code is not None or time.monotonic() >= deadline:
                return code
            time.sleep(min(0.5, max(0.05, self.tracker.poll_s)))

    def signal_group(self, sig: int) -> None:
        """SIGKILL cancels the job; any other signal goes to every process of it."""
        try:
            if sig == signal.SIGKILL:
                self.commands.cancel(self.slurm_id)
            else:
                self.commands.signal(self.slurm_id, signal_name(sig).removeprefix("SIG"))
        except SlurmError:
            # Ended meanwhile, or the controller is away: the next look at its state says which,
            # and the supervisor's grace timer escalates as it would for a local worker.
            pass

    def request_stacks(self) -> int:
        try:
            self.commands.signal(self.slurm_id, signal_name(STACKS_SIGNAL).removeprefix("SIG"))
        except SlurmError:
            return 0
        return 1

    def cancel(self) -> None:
        self.signal_group(signal.SIGKILL)


class SlurmLauncher:
    """Submits each attempt with ``sbatch``; all its workers share one tracker."""

    name = "slurm"

    def __init__(self, lc: LauncherConfig, plan: DevicePlan, tag: str, *, commands: SlurmCommands | None = None,
                 tracker: SlurmTracker | None = None) -> None:
        self.lc = lc
        self.plan = plan
        self.tag = tag
        self.commands = commands or SlurmCommands()
        self.tracker = tracker or SlurmTracker(self.commands, lc.poll_s)

    def command(self, spec: Path) -> list[str]:
        return worker_command(spec, self.plan.nproc)

    def submit(self, job_id: str, spec: Path, env: Mapping[str, str], log_path: Path) -> SlurmWorker:
        run_dir = spec.parent
        script = RunFolder(run_dir).slurm_script
        fsio.write_bytes(script, batch_script(self.command(spec), run_dir, forward=self.plan.nproc > 1).encode())
        name = job_name(self.tag, job_id)
        argv = sbatch_argv(self.lc, self.plan, name=name, script=script, run_dir=run_dir, log_path=log_path)
        slurm_id = self.commands.submit(argv, env)
        return SlurmWorker(slurm_id, name, log_path, self.tracker, self.commands)

    def attach(self, slurm_id: int, job_id: str, log_path: Path) -> SlurmWorker:
        """A job submitted by an earlier daemon, followed again (never submitted twice)."""
        return SlurmWorker(slurm_id, job_name(self.tag, job_id), log_path, self.tracker, self.commands)
