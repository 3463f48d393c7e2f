"""Judges a hang (case 70) from the worker's heartbeat, on the monotonic clock only (case 47).

The worker rewrites its heartbeat (``trainconsole.engine.runfiles.Heartbeat``) each step with
``mono`` (its time.monotonic(), which is CLOCK_MONOTONIC and shared by every process on one boot)
and ``step_time_s``. The limit adapts:
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

from trainconsole.engine.runfiles import Heartbeat, read_heartbeat
from trainconsole.engine.signals import STACKS_SIGNAL, signal_name


def collect_stacks(request: Callable[[], int], stacks_file: Path, wait_s: float) -> str:
    """Stacks first, then the kill: ``request`` asks the workers to dump their Python stacks
    (returning how many were asked); wait up to ``wait_s`` for them in ``stacks_file``. The text,
    or a line saying why there is none."""
    asked = request()
    text = ""
    deadline = time.monotonic() + wait_s
    while asked and time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            text = stacks_file.read_text(errors="replace")
        except OSError:
            text = ""
        if text.count("File ") and time.monotonic() > deadline - wait_s + 0.5:
            break
    if not text:
        text = (f"(no stacks: the worker does not register faulthandler on {signal_name(STACKS_SIGNAL)})"
                if not asked else "(the worker did not write its stacks in time)")
    return text


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
