"""The job store's behaviour: states, the retry policy, back-off, clock skew, commands."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from trainconsole.engine.errors import ErrorClass
from trainconsole.engine.layout import Layout
from trainconsole.engine.store import SCHEMA_VERSION, QueueError, Store

from .conftest import Clock, Policy, add, alerts


@pytest.mark.edge(42)
def test_open_sets_wal_full_sync_and_schema_version(store: Store, layout: Layout) -> None:
    """synchronous=FULL: a committed transaction survives a power loss (case 42)."""
    conn = sqlite3.connect(layout.state_db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    finally:
        conn.close()
    assert store.db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_ids_are_ordered_and_files_are_the_engines_own(store: Store, tmp_path: Path) -> None:
    ids = [add(store, tmp_path, f"f{i}.jsonl") for i in range(3)]
    assert ids == ["j0001", "j0002", "j0003"]
    for job in store.jobs():
        assert job.path.parent == store.layout.jobs and job.path.is_file()
        assert (store.layout.jobs / f"{job.id}.json").is_file()


def test_rereading_the_queue_gives_back_the_same_job_for_an_unchanged_row(store: Store, layout: Layout,
                                                                          tmp_path: Path) -> None:
    """A watcher (the console opens its store with memo) rereads the whole queue when one job's
    progress moves: the others come back as the very same (frozen) Job objects, and the moved one
    as a new Job with the new values."""
    ids = [add(store, tmp_path, f"f{i}.jsonl") for i in range(3)]
    store.start(ids[0], pid=os.getpid(), pid_start=1.0)
    with Store.open(layout, repair=False, memo=True) as watcher:
        before = watcher.jobs()
        store.progress(ids[0], 5, 10)
        after = watcher.jobs()
        assert [j.id for j in after] == ids
        assert after[1] is before[1] and after[2] is before[2]
        assert after[0] is not before[0] and (after[0].step, before[0].step) == (5, None)
        running = watcher.jobs(["running"])
        assert running == [after[0]] and running[0] is after[0]


def test_the_engines_store_keeps_no_job_it_handed_back(store: Store, tmp_path: Path) -> None:
    """Without memo (the engine) every read builds its Jobs anew and holds none of them: an engine
    that has run thousands of jobs must not carry them all (the soak's memory growth)."""
    add(store, tmp_path, "f0.jsonl")
    first, again = store.jobs(), store.jobs()
    assert first == again and first[0] is not again[0]


def test_lifecycle_moves_files_between_folders(store: Store, tmp_path: Path) -> None:
    a, b = add(store, tmp_path, "a.jsonl"), add(store, tmp_path, "b.jsonl")
    store.start(a, pid=os.getpid(), pid_start=1.0)
    done = store.succeed(a)
    assert done.status == "done" and done.path.parent == store.layout.done and done.path.is_file()
    cancelled = store.cancel(b)
    assert cancelled.status == "cancelled" and cancelled.path.parent == store.layout.failed


@pytest.mark.edge(60)
def test_poison_job_is_retried_a_bounded_number_of_times(store: Store, tmp_path: Path, clock: Clock) -> None:
    job_id = add(store, tmp_path, "poison.jsonl")
    for attempt in range(1, 4):
        job = store.next_runnable(clock.now)
        assert job is not None and job.id == job_id
        store.start(job_id)
        job = store.fail_attempt(job_id, ErrorClass.TRANSIENT, f"boom {attempt}",
                                 "Traceback (most recent call last):\n  ...\nOSError: boom")
        if attempt < 3:
            assert job.status == "queued" and job.next_attempt_at is not None
            assert store.next_runnable(clock.now) is None  # backing off
            clock.advance(job.next_attempt_at - clock.now + 0.001)
    assert job.status == "failed" and job.attempts == 3
    assert store.next_runnable(clock.now + 10**6) is None  # never again on its own
    assert job.path.parent == store.layout.failed and job.path.is_file()
    report = (store.layout.failed / job.path.name.replace(".jsonl", ".report.txt")).read_text()
    assert job_id in report and "poison.jsonl" in report and "3 of 3" in report
    for n in (1, 2, 3):
        assert f"transient: boom {n}" in report
    assert "OSError: boom" in report and f"trainconsole retry {job_id}" in report
    assert any(a["case"] == 60 for a in alerts(store.layout))


@pytest.mark.edge(60)
def test_permanent_errors_are_never_retried(store: Store, tmp_path: Path) -> None:
    for cls in (ErrorClass.DATA, ErrorClass.CONFIG, ErrorClass.DIVERGED, ErrorClass.BUG):
        job_id = add(store, tmp_path, f"{cls}.jsonl")
        store.start(job_id)
        job = store.fail_attempt(job_id, cls, "bad")
        assert job.status == "failed" and job.attempts == 1, cls


def test_uncharged_failures_give_the_attempt_back(store: Store, tmp_path: Path) -> None:
    job_id = add(store, tmp_path, "a.jsonl")
    store.start(job_id)
    job = store.fail_attempt(job_id, ErrorClass.INTERRUPTED, "stopped")
    assert job.status == "queued" and job.attempts == 0 and not store.paused()
    store.start(job_id)
    job = store.fail_attempt(job_id, ErrorClass.DISK_FULL, "ENOSPC")
    assert job.attempts == 0 and store.paused()


def test_backoff_doubles_with_jitter_and_a_cap(store: Store, tmp_path: Path, clock: Clock,
                                               policy: Policy) -> None:
    policy.max_attempts = 10
    policy.backoff_max_s = 200.0
    job_id = add(store, tmp_path, "a.jsonl")
    delays = []
    for _ in range(6):
        store.start(job_id)
        job = store.fail_attempt(job_id, ErrorClass.OOM, "oom")
        assert job.next_attempt_at is not None
        delays.append(job.next_attempt_at - clock.now)
        clock.advance(delays[-1] + 0.01)
    for n, delay in enumerate(delays):
        expected = min(200.0, 30.0 * 2**n)
        assert min(200.0, expected * 0.8) - 1e-6 <= delay <= min(200.0, expected * 1.2) + 1e-6


@pytest.mark.edge(47)
def test_clock_set_back_does_not_stall_a_retry(store: Store, tmp_path: Path, clock: Clock,
                                              policy: Policy) -> None:
    job_id = add(store, tmp_path, "a.jsonl")
    store.start(job_id)
    job = store.fail_attempt(job_id, ErrorClass.TRANSIENT, "io")
    assert job.next_attempt_at is not None
    clock.advance(-10 * 86400)  # the wall clock is set back ten days
    assert store.next_runnable(clock.now) is None
    assert "waiting for retry at" in store.reason(store.require(job_id), clock.now)
    clock.advance(policy.backoff_max_s + 1)  # at most backoff_max_s later, not ten days
    runnable = store.next_runnable(clock.now)
    assert runnable is not None and runnable.id == job_id


@pytest.mark.edge(47)
def test_clock_jumping_forward_only_makes_a_retry_due_sooner(store: Store, tmp_path: Path,
                                                             clock: Clock) -> None:
    job_id = add(store, tmp_path, "a.jsonl")
    store.start(job_id)
    store.fail_attempt(job_id, ErrorClass.TRANSIENT, "io")
    clock.advance(86400)
    job = store.next_runnable(clock.now)
    assert job is not None and job.id == job_id


@pytest.mark.edge(57)
def test_retry_all_failed_with_none_failed_is_an_empty_answer(store: Store, tmp_path: Path) -> None:
    assert store.retry_all_failed() == []
    add(store, tmp_path, "a.jsonl")
    assert store.retry_all_failed() == []


def test_retry_resets_attempts_and_brings_the_file_back(store: Store, tmp_path: Path) -> None:
    job_id = add(store, tmp_path, "a.jsonl")
    store.start(job_id)
    failed = store.fail_attempt(job_id, ErrorClass.DATA, "bad line 3")
    report = store.layout.failed / failed.path.name.replace(".jsonl", ".report.txt")
    assert report.exists()
    assert store.reason(failed) == "failed: data: bad line 3"
    job = store.retry(job_id)
    assert job.status == "queued" and job.attempts == 0 and job.path.parent == store.layout.jobs
    assert job.path.is_file() and not report.exists()
    assert [j.id for j in store.retry_all_failed()] == []


def test_hold_release_priority_and_wrong_states(store: Store, tmp_path: Path) -> None:
    job_id = add(store, tmp_path, "a.jsonl")
    assert store.hold(job_id).status == "held"
    assert store.next_runnable() is None
    assert store.reason(store.require(job_id)) == "held"
    assert store.release(job_id).status == "queued"
    assert store.set_priority(job_id, "high").priority == "high"
    with pytest.raises(QueueError, match="no job 'j0999'"):
        store.hold("j0999")
    store.start(job_id)
    with pytest.raises(QueueError, match="only a queued job can be held"):
        store.hold(job_id)
    from trainconsole.engine.errors import UsageError

    with pytest.raises(UsageError, match="priority must be one of"):
        store.set_priority(job_id, "urgent")


def test_cancel_of_a_running_job_asks_the_daemon(store: Store, tmp_path: Path) -> None:
    job_id = add(store, tmp_path, "a.jsonl")
    store.start(job_id, pid=12345, pid_start=1.0)
    assert store.cancel(job_id).status == "running"
    commands = store.take_commands()
    assert [(c.kind, c.job_id) for c in commands] == [("cancel", job_id)]
    assert store.take_commands() == []
    assert store.cancel(job_id, worker_stopped=True).status == "cancelled"


def test_commands_carry_json_arguments(store: Store) -> None:
    store.post_command("stop")
    store.post_command("priority", "j0001", {"level": "high"})
    got = store.take_commands()
    assert [(c.kind, c.job_id, c.arg) for c in got] == [("stop", None, None),
                                                         ("priority", "j0001", {"level": "high"})]


def test_requeue_merges_overrides_and_charges_only_when_asked(store: Store, tmp_path: Path,
                                                              policy: Policy) -> None:
    job_id = add(store, tmp_path, "a.jsonl")
    store.start(job_id)
    job = store.requeue(job_id, overrides={"batch_size": 2, "oom_rung": 1}, reason="oom: halving batch")
    assert job.attempts == 0 and job.overrides == {"batch_size": 2, "oom_rung": 1}
    for _ in range(policy.max_attempts):
        store.start(job_id)
        job = store.requeue(job_id, charge_attempt=True, reason="worker vanished")
    assert job.status == "failed"


def test_reasons_read_like_squeue(store: Store, tmp_path: Path, clock: Clock) -> None:
    a, b, c = (add(store, tmp_path, f"{n}.jsonl") for n in "abc")
    store.start(a)
    store.progress(a, 5, 100)
    reasons = store.reasons(clock.now)
    assert reasons[a] == "running (step 5/100)"
    assert reasons[b] == "priority (1 ahead)" and reasons[c] == "priority (2 ahead)"
    store.set_paused(True)
    assert store.reasons(clock.now)[b] == "paused"


def test_reopen_keeps_everything(layout: Layout, tmp_path: Path, clock: Clock, policy: Policy) -> None:
    with Store.open(layout, policy=policy, clock=clock) as st:
        job_id = add(st, tmp_path, "we ird 'name'.jsonl", priority="low")
        st.start(job_id)
        st.set_paused(True)
    with Store.open(layout, policy=policy, clock=clock) as st:
        job = st.require(job_id)
        assert (job.name, job.priority, job.status, job.attempts) == ("we ird 'name'.jsonl", "low", "running", 1)
        assert st.paused()


@pytest.mark.edge(57)
def test_a_failed_job_whose_data_file_is_gone_is_not_retried(store: Store, tmp_path: Path) -> None:
    gone, kept = add(store, tmp_path, "gone.jsonl"), add(store, tmp_path, "kept.jsonl")
    for job_id in (gone, kept):
        store.start(job_id)
        store.fail_attempt(job_id, ErrorClass.DATA, "bad")
    (store.layout.failed / store.require(gone).path.name).unlink()
    with pytest.raises(QueueError, match="is gone"):
        store.retry(gone)
    assert [j.id for j in store.retry_all_failed()] == [kept]
    assert store.require(gone).status == "failed" and store.require(kept).status == "queued"
