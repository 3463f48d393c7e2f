"""What a worker itself uses: CPU and resident memory of its process tree (torchrun and its
ranks, or one worker), for the console's "job" gauge when training runs on CPU, and the tree's
pids, to pick its own GPU memory out of NVML's per-process list (``sysmon``), as nvitop does.

psutil's ``cpu_percent`` measures between two calls on the same ``Process`` object, so those are
kept per pid; the tree (children of the given pids) is walked again at most every
``tree_every_s``, since walking it reads ``/proc`` for every process on the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil

MB = 1024 * 1024


@dataclass(frozen=True)
class WorkerUsage:
    pids: tuple[int, ...]  # the watched pids and their descendants, alive at the last walk
    cpu_pct: float | None  # percent of one core, summed over the tree; None on the first look
    rss_mb: float | None
    cores: int

    @property
    def cpu_fraction(self) -> float | None:
        """Of the whole machine (every core), for a gauge."""
        return None if self.cpu_pct is None else self.cpu_pct / (100.0 * max(1, self.cores))


class ProcWatch:
    def __init__(self, tree_every_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.tree_every_s = tree_every_s
        self.clock = clock
        self._roots: tuple[int, ...] = ()
        self._walked_at = -float("inf")
        self._procs: dict[int, psutil.Process] = {}
        self._primed: set[int] = set()

    def _walk(self, roots: tuple[int, ...]) -> None:
        found: dict[int, psutil.Process] = {}
        for pid in roots:
            try:
                root = self._procs.get(pid) or psutil.Process(pid)
                found[pid] = root
                for child in root.children(recursive=True):
                    found[child.pid] = self._procs.get(child.pid) or child
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self._primed &= set(found)
        self._procs = found
        self._roots, self._walked_at = roots, self.clock()

    def usage(self, pids: Sequence[int]) -> WorkerUsage | None:
        roots = tuple(sorted(set(pids)))
        if not roots:
            self._procs, self._roots, self._primed = {}, (), set()
            return None
        if roots != self._roots or self.clock() - self._walked_at >= self.tree_every_s:
            self._walk(roots)
        cpu = rss = 0.0
        complete = True
        for pid, proc in list(self._procs.items()):
            try:
                with proc.oneshot():
                    pct = proc.cpu_percent(None)
                    rss += proc.memory_info().rss / MB
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._procs.pop(pid, None)
                continue
            if pid not in self._primed:  # the first call measures nothing: it starts the clock
                self._primed.add(pid)
                complete = False
            cpu += pct
        cores = psutil.cpu_count() or 1
        return WorkerUsage(tuple(sorted(self._procs)), cpu if complete and self._procs else None,
                           rss if self._procs else None, cores)
