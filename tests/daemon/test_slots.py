"""Parallel slots: max_parallel jobs at once, never two of one lineage, other lineages filling in."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from trainconsole.engine.daemon.slots import MAIN, Slots, lineage_of
from trainconsole.engine.store import Job

BASE = Job(id="j0001", name="a.jsonl", path=Path("/q/jobs/j0001--a.jsonl"), sha256="0" * 64, size=1,
           priority="normal", status="queued", attempts=0, next_attempt_at=None, error_class=None, error=None,
           overrides={}, created_at=0.0, started_at=None, finished_at=None, pid=None, pid_start=None, step=None,
           max_steps=None)


def _jobs(*lineages: str) -> tuple[list[Job], dict[str, str]]:
    jobs = [replace(BASE, id=f"j{i:04d}", seq=i) for i in range(1, len(lineages) + 1)]
    return jobs, {j.id: lin for j, lin in zip(jobs, lineages, strict=True)}


def test_every_job_is_main_until_jobs_carry_a_lineage() -> None:
    jobs, _ = _jobs("x", "y", "z")
    assert {lineage_of(j) for j in jobs} == {MAIN}
    assert Slots(3).pick(jobs, []) == jobs[:1]  # one chain: one at a time, whatever max_parallel says


def test_three_lineages_fill_three_slots() -> None:
    jobs, lin = _jobs("a", "b", "c", "d")
    slots = Slots(3, lambda j: lin[j.id])
    assert slots.pick(jobs, []) == jobs[:3]
    assert slots.pick(jobs[3:], jobs[:3]) == []  # no slot left
    assert slots.free(jobs[:1]) == 2


def test_a_busy_lineage_waits_without_blocking_the_others() -> None:
    jobs, lin = _jobs("a", "a", "b", "a", "c")
    slots = Slots(3, lambda j: lin[j.id])
    assert [j.id for j in slots.pick(jobs, [])] == ["j0001", "j0003", "j0005"]
    running = [jobs[0]]
    assert [j.id for j in slots.pick(jobs[1:], running)] == ["j0003", "j0005"]
    assert not slots.may_start(jobs[1], running) and slots.may_start(jobs[2], running)


def test_one_slot_is_the_old_one_at_a_time() -> None:
    jobs, lin = _jobs("a", "b")
    slots = Slots(1, lambda j: lin[j.id])
    assert slots.pick(jobs, []) == jobs[:1] and slots.pick(jobs[1:], jobs[:1]) == []


def test_lineage_of_reads_the_lineage_each_job_was_queued_in() -> None:
    from trainconsole.engine.store import Experiment

    jobs = [replace(BASE, id=f"j{i:04d}", seq=i, experiment=Experiment(lineage=name))
            for i, name in enumerate(["alpha", "alpha", "beta"], 1)]
    assert [lineage_of(j) for j in jobs] == ["alpha", "alpha", "beta"]
    assert [j.id for j in Slots(3).pick(jobs, [])] == ["j0001", "j0003"]  # never two of alpha at once
