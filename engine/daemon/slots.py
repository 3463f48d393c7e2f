"""How many jobs run at once, and which may start: ``launcher.max_parallel`` slots, never two jobs
of one lineage (a lineage is a chain: each job continues the adapter the one before published, so
two of one chain at once would fork it).

Each job carries its lineage (``trainconsole add --lineage``, ``--new-lineage``, ``--sweep``;
``main`` by default); ``lineage_of`` is the one place that reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from trainconsole.engine.store import Job

MAIN = "main"


def lineage_of(job: Job) -> str:
    return job.lineage


@dataclass(frozen=True)
class Slots:
    max_parallel: int
    lineage: Callable[[Job], str] = lineage_of

    def free(self, running: Iterable[Job]) -> int:
        return max(0, self.max_parallel - len(list(running)))

    def may_start(self, job: Job, running: Iterable[Job]) -> bool:
        """A free slot and no job of its lineage running."""
        running = list(running)
        busy = {self.lineage(r) for r in running}
        return self.free(running) > 0 and self.lineage(job) not in busy

    def pick(self, runnable: Iterable[Job], running: Iterable[Job]) -> list[Job]:
        """The jobs to start now, in the queue's order (``runnable`` comes best first): a job whose
        lineage is busy waits without holding back the jobs of other lineages behind it."""
        running = list(running)
        busy = {self.lineage(r) for r in running}
        chosen: list[Job] = []
        for job in runnable:
            if len(running) + len(chosen) >= self.max_parallel:
                break
            lineage = self.lineage(job)
            if lineage not in busy:
                chosen.append(job)
                busy.add(lineage)
        return chosen
