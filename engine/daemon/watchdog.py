"""Judges a hang (case 70) from the worker's heartbeat, on the monotonic clock only (case 47).

The worker rewrites ``heartbeat.json`` each step with ``mono`` (its time.monotonic(), which is
CLOCK_MONOTONIC and shared by every process on one boot) and ``step_time_s``. The limit adapts:
``max(hang_floor_s, hang_multiple * recent step time)``, so a model whose steps take minutes is
not killed by a floor tuned for seconds. Until the first step the worker gets
``first_step_grace_s`` from launch (loading a model and building a token cache take a while).
After a step that ends in a save, an evaluation or the end of training (slow, and without a
beat), the limit is the first-step grace too. Wall-clock jumps (NTP, a suspended VM's clock set
back) never enter these sums.

A worker on another machine (a Slurm node) beats on that machine's monotonic clock, which means
nothing here. With ``observed=True`` a beat counts at the moment this process first sees it change
(its own monotonic time), so silence is measured on one clock; the cost is up to one poll
interval (and the shared filesystem's attribute cache) of extra silence, far below any limit.
``start`` moves the first-step grace to when the worker really began (a Slurm job may wait in
the queue for hours first).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


@dataclass(frozen=True)
class Heartbeat:
    pid: int | None
    step: int
    mono: float
    step_time_s: float | None


def read_heartbeat(path: Path) -> Heartbeat | None:
    try:
        raw: Any = orjson.loads(path.read_bytes())
        step_time = raw.get("step_time_s")
        return Heartbeat(
            pid=int(raw["pid"]) if raw.get("pid") is not None else None,
            step=int(raw.get("step", 0)),
            mono=float(raw["mono"]),
            step_time_s=float(step_time) if isinstance(step_time, int | float) else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError):
        return None


@dataclass(frozen=True)
class Verdict:
    hung: bool
    silent_for_s: float
    limit_s: float
    step: int | None


class Watchdog:
    def __init__(self, heartbeat: Path, *, floor_s: float, multiple: float, first_step_grace_s: float,
                 launched_mono: float | None = None, boundary: Callable[[int], bool] | None = None,
                 observed: bool = False) -> None:
        self.heartbeat = heartbeat
        # Steps after which the worker saves, evaluates or publishes without beating: those get
        # the long grace, not a multiple of a step's time.
        self.boundary = boundary or (lambda step: False)
        self.floor_s = floor_s
        self.multiple = multiple
        self.grace_s = first_step_grace_s
        self.launched = time.monotonic() if launched_mono is None else launched_mono
        self.recent: deque[float] = deque(maxlen=20)
        self.last: Heartbeat | None = None
        self.observed = observed
        self._seen: Heartbeat | None = None  # the beat as written, to notice a change (observed mode)

    def start(self, mono: float) -> None:
        """The worker began now (on this process's clock): the first-step grace counts from here."""
        self.launched = mono

    def limit_s(self) -> float:
        if not self.recent:
            return self.floor_s
        typical = sorted(self.recent)[len(self.recent) // 2]  # median: one slow save is no trend
        return max(self.floor_s, self.multiple * typical)

    def check(self, now: float | None = None) -> Verdict:
        now = time.monotonic() if now is None else now
        beat = read_heartbeat(self.heartbeat)
        if beat is not None and self.observed:
            if beat == self._seen:
                beat = self.last  # nothing new: keep the time it was first seen
            else:
                self._seen = beat
                beat = Heartbeat(beat.pid, beat.step, now, beat.step_time_s)
        if beat is not None and beat.mono >= self.launched - 1.0:  # a beat from this launch only
            if self.last is None or beat.mono != self.last.mono:
                if beat.step_time_s is not None and beat.step_time_s > 0:
                    self.recent.append(beat.step_time_s)
                self.last = beat
        if self.last is None or self.last.step <= 0:
            # Loading, tokenising, or resuming: measured from launch or the last sign of life.
            since = self.launched if self.last is None else max(self.launched, self.last.mono)
            silent = max(0.0, now - since)
            limit = max(self.grace_s, self.floor_s)
            return Verdict(silent > limit, silent, limit, None if self.last is None else self.last.step)
        silent = max(0.0, now - self.last.mono)
        limit = self.limit_s()
        if self.boundary(self.last.step):
            limit = max(limit, self.grace_s)
        return Verdict(silent > limit, silent, limit, self.last.step)
