"""Priorities, FIFO and aging (case 59), driven by an injected clock: no sleeps, exact bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from trainconsole.engine.store import Store
from trainconsole.engine.store import scheduling as sch

from .conftest import Clock, Policy, add


def test_high_before_normal_before_low_and_fifo_within_a_level(store: Store, tmp_path: Path,
                                                               clock: Clock) -> None:
    order = []
    for prio in ("low", "normal", "high", "normal", "low", "high"):
        order.append((prio, add(store, tmp_path, f"{prio}.jsonl", priority=prio)))
        clock.advance(1)
    started = []
    while (job := store.next_runnable(clock.now)) is not None:
        store.start(job.id)
        store.succeed(job.id)
        started.append(job.id)
    by_level = [i for p in ("high", "normal", "low") for (q, i) in order if q == p]
    assert started == by_level


def _simulate(store: Store, tmp_path: Path, clock: Clock, run_s: float, arrival_s: float,
              horizon_s: float) -> tuple[float, float]:
    """A high job is running when a low one arrives; high jobs keep arriving every ``arrival_s``
    and each job runs ``run_s``. Returns (when the low job was queued, when it started)."""
    first = add(store, tmp_path, "running-high.jsonl", priority="high")
    store.start(first)
    running, ends_at = first, clock.now + run_s
    low = add(store, tmp_path, "low.jsonl", priority="low")
    low_queued = clock.now
    next_arrival = clock.now
    n = 0
    while clock.now < low_queued + horizon_s:
        step = min(ends_at, next_arrival)
        clock.now = step
        if step == next_arrival:
            n += 1
            add(store, tmp_path, f"high-{n}.jsonl", priority="high")
            next_arrival += arrival_s
        if step == ends_at:
            store.succeed(running)
            job = store.next_runnable(clock.now)
            assert job is not None
            store.start(job.id)
            if job.id == low:
                return low_queued, clock.now
            running, ends_at = job.id, clock.now + run_s
    return low_queued, float("inf")


@pytest.mark.edge(59)
def test_a_low_job_waits_at_most_two_aging_periods_plus_the_current_run(store: Store, tmp_path: Path,
                                                                        clock: Clock, policy: Policy) -> None:
    policy.aging_s = 600.0
    run_s = 300.0
    queued, started = _simulate(store, tmp_path, clock, run_s=run_s, arrival_s=20.0, horizon_s=10_000)
    assert started - queued <= 2 * policy.aging_s + run_s
    assert started - queued >= policy.aging_s  # it did have to wait for the aging, high jobs first


@pytest.mark.edge(59)
def test_without_aging_the_same_stream_starves_the_low_job(store: Store, tmp_path: Path, clock: Clock,
                                                           policy: Policy) -> None:
    policy.aging_s = 10**9  # aging effectively off: this is the inversion the bound prevents
    queued, started = _simulate(store, tmp_path, clock, run_s=300.0, arrival_s=40.0, horizon_s=3_000)
    assert started == float("inf")


@pytest.mark.edge(59)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(aging=st.floats(1, 5000), run=st.floats(1, 5000), arrival=st.floats(0.5, 500),
       backlog=st.lists(st.sampled_from(sch.LEVELS), max_size=5))
def test_the_aging_bound_holds_for_any_rates(aging: float, run: float, arrival: float,
                                             backlog: list[str]) -> None:
    """The documented bound, on the pure ordering: 2*aging_s + the run in progress + the runs of
    jobs already waiting when the low job arrived, however fast high jobs keep coming."""
    limit = 2 * aging + run + run * len(backlog)
    assume(limit / arrival <= 1000 and limit / run <= 300)  # keeps each example to milliseconds
    now = 0.0
    waiting: list[tuple[str, float, int]] = [(p, -1.0, i) for i, p in enumerate(backlog)]
    seq = len(waiting)
    low = ("low", now, seq)
    waiting.append(low)
    ends_at, next_arrival = run, 0.0
    while True:
        step = min(ends_at, next_arrival)
        now = step
        assert now <= limit + 1e-6, "low job starved past the documented bound"
        if step == next_arrival:
            seq += 1
            waiting.append(("high", now, seq))
            next_arrival += arrival
        if step == ends_at:
            waiting.sort(key=lambda j: sch.order_key(j[0], j[1], j[2], now, aging))
            if waiting.pop(0) == low:
                return
            ends_at = now + run


def test_effective_rank_ages_one_level_per_period() -> None:
    assert sch.effective_rank("low", 0, 599, 600) == 2
    assert sch.effective_rank("low", 0, 600, 600) == 1
    assert sch.effective_rank("low", 0, 1200, 600) == 0
    assert sch.effective_rank("normal", 0, 10**9, 600) == 0
    assert sch.effective_rank("high", 100, 0, 600) == 0  # a clock set back never lowers a job


def test_release_restarts_the_wait_and_hold_blocks(store: Store, tmp_path: Path, clock: Clock) -> None:
    a = add(store, tmp_path, "a.jsonl", priority="low")
    store.hold(a)
    clock.advance(5000)
    b = add(store, tmp_path, "b.jsonl", priority="normal")
    store.release(a)
    job = store.next_runnable(clock.now)
    assert job is not None and job.id == b
