"""Which queued job runs next, and when a failed attempt may run again: pure functions of the job's
numbers and an explicit ``now``, so tests drive them with an injected clock and no sleeps.

Priority with aging (case 59). Levels are high=0, normal=1, low=2. A queued job's effective level
is its level minus one for every ``aging_s`` it has waited since it was queued (never below high).
Jobs are ordered by effective level, then by the time they were queued (FIFO), then by id.

The bound: a job queued at time T has effective level high from ``T + 2 * aging_s`` on. From then
on only jobs queued before T can rank ahead of it, since every later arrival, even a high one,
ties on level and loses on FIFO. So however many high jobs keep arriving, a low job starts at the
latest ``2 * aging_s`` after it was queued, plus the rest of the run in progress at that moment,
plus the runs of jobs that were already waiting when it was queued (none of which can be
overtaken by later arrivals either). Holding, pausing and retry back-off are the operator's and
the retry policy's delays and come on top.

Back-off (case 60): attempt n (1-based) that failed waits ``backoff_s * 2**(n-1)``, scaled by a
random factor in [0.8, 1.2] so a batch of failures does not retry in lock-step, capped at
``backoff_max_s``.

Clock skew (case 47): the retry time is stored as wall-clock seconds, because it must survive a
restart and monotonic clocks restart with the machine. A wall clock set back would then make a job
wait for hours; so a stored time further than ``backoff_max_s`` in the future is treated as due at
``now + backoff_max_s``. A clock jumping forward only makes retries due sooner, which is harmless.
"""

from __future__ import annotations

import random
from typing import Final, Protocol

from trainconsole.engine.errors import UsageError

LEVELS: Final = ("high", "normal", "low")
LEVEL_RANK: Final = {name: i for i, name in enumerate(LEVELS)}


class QueuePolicy(Protocol):
    """What the store reads from ``cfg.queue`` (``trainconsole.engine.config.schema.QueueConfig`` fits)."""

    @property
    def max_attempts(self) -> int: ...
    @property
    def backoff_s(self) -> float: ...
    @property
    def backoff_max_s(self) -> float: ...
    @property
    def aging_s(self) -> float: ...


class DefaultPolicy:
    """The documented defaults, for callers that open the store without a config."""

    max_attempts = 3
    backoff_s = 30.0
    backoff_max_s = 3600.0
    aging_s = 600.0


def check_level(priority: str) -> str:
    if priority not in LEVEL_RANK:
        raise UsageError(f"priority must be one of {', '.join(LEVELS)}, got {priority!r}")
    return priority


def effective_rank(priority: str, queued_at: float, now: float, aging_s: float) -> int:
    """The level a job competes at: one level higher per ``aging_s`` waited, never above high."""
    base = LEVEL_RANK.get(priority, 1)
    if aging_s <= 0:
        return 0
    waited = max(0.0, now - queued_at)
    return max(0, base - int(waited // aging_s))


def order_key(priority: str, queued_at: float, seq: int, now: float, aging_s: float
              ) -> tuple[int, float, int]:
    return (effective_rank(priority, queued_at, now, aging_s), queued_at, seq)


def backoff_delay(attempts: int, backoff_s: float, backoff_max_s: float,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempts`` (1-based)."""
    exponent = max(0, attempts - 1)
    base = backoff_s * (2.0 ** min(exponent, 60))
    jitter = (rng or random).uniform(0.8, 1.2)
    return max(0.0, min(backoff_max_s, base * jitter))


def due_at(next_attempt_at: float | None, now: float, backoff_max_s: float) -> float | None:
    """When a job waiting for a retry may run, clamped against a wall clock set back (case 47)."""
    if next_attempt_at is None:
        return None
    return min(next_attempt_at, now + backoff_max_s)


def is_due(next_attempt_at: float | None, now: float, backoff_max_s: float) -> bool:
    due = due_at(next_attempt_at, now, backoff_max_s)
    return due is None or due <= now
