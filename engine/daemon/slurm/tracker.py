"""Following our Slurm jobs: one ``squeue --json`` per interval for all of them, however many.

The tracker keeps Slurm's last word on each job it watches. A job missing from ``squeue`` is
asked about once with ``scontrol show job`` (for a Slurm whose ``squeue`` drops finished jobs);
when neither knows it, it has vanished (purged after ``MinJobAge``, or lost with the controller's
state), and the worker's report decides how it ended. When the controller does not answer (it is
restarting, the network is down), nothing changes: the last word stands, ``error`` says why, and
no job is judged on silence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from trainconsole.engine.daemon.slurm.commands import SlurmCommands
from trainconsole.engine.daemon.slurm.state import SlurmError, SlurmJob


@dataclass
class Watched:
    job: SlurmJob | None = None  # None: not seen yet
    vanished: bool = False
    first_running_mono: float | None = None  # when it was first seen running (this process's clock)


class SlurmTracker:
    def __init__(self, commands: SlurmCommands, poll_s: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.commands = commands
        self.poll_s = poll_s
        self.clock = clock
        self.watched: dict[int, Watched] = {}
        self.next_at = 0.0
        self.error: str | None = None  # why the last look failed, None when it worked
        self.calls = 0  # squeue calls made (the batching is a promise the tests hold us to)

    def watch(self, slurm_id: int) -> None:
        self.watched.setdefault(slurm_id, Watched())
        self.next_at = 0.0  # a new job is looked at on the next refresh

    def forget(self, slurm_id: int) -> None:
        self.watched.pop(slurm_id, None)

    def get(self, slurm_id: int) -> Watched:
        """What is known of a job (nothing yet for one not watched; asking does not watch it)."""
        return self.watched.get(slurm_id) or Watched()

    def refresh(self, *, force: bool = False) -> None:
        now = self.clock()
        if not self.watched or (not force and now < self.next_at):
            return
        self.next_at = now + self.poll_s
        try:
            self.calls += 1
            jobs = self.commands.queue()
            for slurm_id, seen in self.watched.items():
                if seen.vanished:
                    continue
                job = jobs.get(slurm_id)
                if job is None:
                    job = self.commands.show(slurm_id)
                if job is None:
                    seen.vanished = True
                    continue
                seen.job = job
                if job.running and seen.first_running_mono is None:
                    seen.first_running_mono = now
        except SlurmError as exc:
            self.error = exc.message
            return
        self.error = None

    def ended(self, slurm_id: int) -> bool:
        seen = self.get(slurm_id)
        return seen.vanished or (seen.job is not None and not seen.job.active)
