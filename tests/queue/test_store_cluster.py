"""The store's cluster columns: a running job's Slurm id, node and pending reason, each attempt
starting clean, and a job held with the reason it was held for (someone else's scancel)."""

from __future__ import annotations

from pathlib import Path

from tests.queue.conftest import add
from trainconsole.engine.store import Store


def test_slurm_id_node_and_pending_reason_are_the_jobs_reason(store: Store, tmp_path: Path) -> None:
    job_id = add(store, tmp_path, "a.jsonl")
    store.start(job_id)
    store.set_slurm(job_id, 4312, None, "Resources")
    job = store.require(job_id)
    assert (job.slurm_id, job.node, job.slurm_reason) == (4312, None, "Resources")
    assert store.reason(job) == "pending in Slurm (Resources)"
    store.set_slurm(job_id, 4312, "gpu-07")
    store.progress(job_id, 5, 100)
    assert store.reason(store.require(job_id)) == "running on gpu-07 (step 5/100)"
    row = next(r for r in store.snapshot()[1] if r["id"] == job_id)
    assert (row["slurm_id"], row["node"], row["reason"]) == (4312, "gpu-07", "running on gpu-07 (step 5/100)")


def test_each_attempt_starts_without_the_last_ones_slurm_job(store: Store, tmp_path: Path) -> None:
    job_id = add(store, tmp_path, "a.jsonl")
    store.start(job_id)
    store.set_slurm(job_id, 11, "gpu-01")
    store.requeue(job_id, reason="time limit")
    assert store.require(job_id).slurm_id == 11  # the last attempt's, for the record
    store.start(job_id)
    job = store.require(job_id)
    assert (job.slurm_id, job.node, job.slurm_reason) == (None, None, None)


def test_held_with_a_reason_is_shown_and_not_charged(store: Store, tmp_path: Path) -> None:
    job_id = add(store, tmp_path, "a.jsonl")
    store.start(job_id)
    why = "cancelled in Slurm by someone else (Slurm job 11 on gpu-01)"
    job = store.requeue(job_id, reason=why, hold=True)
    assert job.status == "held" and job.attempts == 0 and job.error == why
    assert store.reason(job) == f"held: {why}"
    assert store.next_runnable() is None
    assert store.release(job_id).status == "queued"


def test_runnable_lists_every_startable_job_best_first(store: Store, tmp_path: Path) -> None:
    low = add(store, tmp_path, "low.jsonl", priority="low")
    high = add(store, tmp_path, "high.jsonl", priority="high")
    normal = add(store, tmp_path, "normal.jsonl")
    held = add(store, tmp_path, "held.jsonl")
    store.hold(held)
    assert [j.id for j in store.runnable()] == [high, normal, low]
    assert store.runnable()[0] == store.next_runnable()
    store.set_paused(True)
    assert store.runnable() == []
