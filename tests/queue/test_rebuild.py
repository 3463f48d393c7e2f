"""Case 58: a corrupt or unreadable job database is set aside, never deleted, and rebuilt from the
queue folders without losing a job, a name, a priority or an attempt, nor reusing an id."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from trainconsole.engine.errors import ErrorClass
from trainconsole.engine.events import EventLog
from trainconsole.engine.layout import Layout
from trainconsole.engine.store import Store

from .conftest import Clock, Policy, add, alerts

HOSTILE = "we\udcffird \"name\"\n-x.jsonl"  # an invalid UTF-8 byte, quotes, a newline


def _populate(layout: Layout, tmp_path: Path, clock: Clock, policy: Policy) -> dict[str, tuple]:
    with Store.open(layout, policy=policy, clock=clock) as st:
        add(st, tmp_path, HOSTILE, priority="low")
        held = add(st, tmp_path, "held.jsonl", priority="high")
        st.hold(held)
        done = add(st, tmp_path, "done.jsonl")
        st.start(done)
        st.succeed(done)
        failed = add(st, tmp_path, "failed.jsonl")
        st.start(failed)
        st.fail_attempt(failed, ErrorClass.DATA, "line 3: not JSON")
        cancelled = add(st, tmp_path, "cancelled.jsonl")
        st.cancel(cancelled)
        retried = add(st, tmp_path, "retried.jsonl")
        st.start(retried)
        st.fail_attempt(retried, ErrorClass.TRANSIENT, "io")
        for _ in range(40):  # enough rows that the file spans many pages
            add(st, tmp_path, "filler.jsonl")
        last = add(st, tmp_path, "last.jsonl")
        st.start(last)
        st.succeed(last)
        return {j.id: (j.name, j.status if j.status != "running" else "queued", j.priority, j.attempts,
                       j.sha256) for j in st.jobs()}


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 8192
    path.write_bytes(data[: len(data) // 3])


def _header_ok_pages_garbled(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(4096, len(data), 3):
        data[i] = (data[i] * 7 + 13) % 256
    path.write_bytes(bytes(data))


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "something").write_text("x")


@pytest.mark.edge(58)
@pytest.mark.parametrize("damage", [_garbage, _truncated, _header_ok_pages_garbled, _directory],
                         ids=["garbage", "truncated", "garbled-pages", "directory"])
def test_corrupt_database_is_set_aside_and_rebuilt(layout: Layout, tmp_path: Path, clock: Clock,
                                                   policy: Policy, damage: Callable[[Path], None]) -> None:
    before = _populate(layout, tmp_path, clock, policy)
    for suffix in ("-wal", "-shm"):
        Path(str(layout.state_db) + suffix).unlink(missing_ok=True)
    damage(layout.state_db)
    damaged = sorted(p.name for p in layout.queue.iterdir())

    events = EventLog(layout.engine_events)
    with Store.open(layout, events, policy=policy, clock=clock) as st:
        after = {j.id: (j.name, j.status, j.priority, j.attempts, j.sha256) for j in st.jobs()}
        assert after == before
        # The next id is past every id ever given, so none is reused.
        new = add(st, tmp_path, "new.jsonl")
        assert int(new[1:]) == max(int(i[1:]) for i in before) + 1
        for job in st.jobs():
            assert job.path.is_file(), job
    aside = [p for p in layout.queue.iterdir() if p.name.startswith("state.db.corrupt-")]
    assert len(aside) == 1, damaged  # kept for a post-mortem, never deleted
    got = [a for a in alerts(layout) if a["case"] == 58]
    assert len(got) == 1 and str(aside[0]) in str(got[0]["message"])


@pytest.mark.edge(58)
def test_ids_are_not_reused_when_the_newest_job_left_only_a_run_folder(layout: Layout, tmp_path: Path,
                                                                       clock: Clock, policy: Policy) -> None:
    with Store.open(layout, policy=policy, clock=clock) as st:
        add(st, tmp_path, "a.jsonl")
        gone = add(st, tmp_path, "b.jsonl")
        job = st.require(gone)
    (layout.runs / gone).mkdir(parents=True)
    job.path.unlink()  # an operator removed the file by hand
    layout.state_db.write_bytes(b"\0" * 100)
    with Store.open(layout, policy=policy, clock=clock) as st:
        assert add(st, tmp_path, "c.jsonl") == "j0003"


@pytest.mark.edge(58)
def test_two_processes_finding_the_damage_rebuild_once(layout: Layout, tmp_path: Path, clock: Clock,
                                                       policy: Policy) -> None:
    import subprocess
    import sys

    _populate(layout, tmp_path, clock, policy)
    _garbage(layout.state_db)
    code = ("import sys; from trainconsole.engine.layout import Layout; from trainconsole.engine.store import Store; "
            "from pathlib import Path; r = Path(sys.argv[1]); "
            "L = Layout(r/'queue', r/'runs', r/'adapters', r/'cache'); "
            "s = Store.open(L); print(len(s.jobs()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    counts = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert counts == [counts[0]] * 3 and counts[0] > 40
    assert len([p for p in layout.queue.iterdir() if p.name.startswith("state.db.corrupt-")]) == 1


def test_a_database_from_a_newer_version_is_refused_not_destroyed(layout: Layout) -> None:
    import sqlite3

    from trainconsole.engine.errors import ConfigError

    conn = sqlite3.connect(layout.state_db)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(ConfigError, match="newer than this trainconsole"):
        Store.open(layout)
    assert layout.state_db.is_file()


def test_a_locked_database_is_waited_for_never_set_aside(layout: Layout, tmp_path: Path) -> None:
    """A writer holding the lock is not damage: the opener waits (busy timeout), and the file
    stays. Only SQLITE_CORRUPT / SQLITE_NOTADB count as damage."""
    import sqlite3

    from trainconsole.engine.store.schema import is_corruption

    Store.open(layout).close()
    holder = sqlite3.connect(layout.state_db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        busy = sqlite3.connect(layout.state_db, timeout=0.05)
        with pytest.raises(sqlite3.OperationalError) as info:
            busy.execute("BEGIN IMMEDIATE")
        busy.close()
        assert not is_corruption(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Store.open(layout) as st:
        assert st.jobs() == []
    assert not [p for p in layout.queue.iterdir() if "corrupt" in p.name]


@pytest.mark.edge(58)
def test_a_job_file_without_a_record_is_taken_back_at_open(layout: Layout, tmp_path: Path, clock: Clock,
                                                           policy: Policy) -> None:
    """Power cut after the file's rename became durable but before the record did."""
    import sqlite3

    with Store.open(layout, policy=policy, clock=clock) as st:
        keep = add(st, tmp_path, "keep.jsonl")
        lost = add(st, tmp_path, "lost record.jsonl", priority="high")
    conn = sqlite3.connect(layout.state_db)
    conn.execute("DELETE FROM jobs WHERE id=?", (lost,))
    conn.execute("UPDATE meta SET value='2' WHERE key='next_seq'")  # as if the allocation was lost too
    conn.commit()
    conn.close()
    with Store.open(layout, policy=policy, clock=clock) as st:
        job = st.require(lost)
        assert (job.name, job.priority, job.status) == ("lost record.jsonl", "high", "queued")
        assert st.require(keep).status == "queued"
        assert add(st, tmp_path, "next.jsonl") == "j0003"  # never reuses the adopted id


@pytest.mark.edge(58)
def test_garbled_sidecars_cost_only_their_own_fields(layout: Layout, tmp_path: Path, clock: Clock,
                                                     policy: Policy) -> None:
    with Store.open(layout, policy=policy, clock=clock) as st:
        a = add(st, tmp_path, "a.jsonl")
        b = add(st, tmp_path, "b.jsonl")
        sha_b = st.require(b).sha256
    import json

    (layout.jobs / f"{a}.json").write_text(json.dumps({"id": a, "attempts": "many", "history": {"x": 1},
                                                       "priority": "urgent", "sha256": 5, "created_at": []}))
    (layout.jobs / f"{b}.json").write_bytes(b"\x00\xff not json")
    layout.state_db.write_bytes(b"junk" * 100)
    with Store.open(layout, policy=policy, clock=clock) as st:
        ja, jb = st.require(a), st.require(b)
        assert (ja.attempts, ja.priority, ja.history) == (0, "normal", ())
        assert jb.sha256 == sha_b and jb.name.endswith(".jsonl")


@pytest.mark.edge(58)
def test_a_console_never_rebuilds_under_a_running_engine(layout: Layout, tmp_path: Path, clock: Clock,
                                                         policy: Policy) -> None:
    """The engine keeps the old file open; a second database beside it would split the queue. So a
    console refuses, plainly, and the engine (or anyone once it is gone) rebuilds."""
    import json
    import subprocess
    import sys

    from trainconsole.engine.errors import TransientError

    _populate(layout, tmp_path, clock, policy)
    _garbage(layout.state_db)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(layout.lockfile)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        (layout.pidfile).write_text(json.dumps({"pid": holder.pid, "start_time": 0}))
        with pytest.raises(TransientError, match="running engine will set it aside") as info:
            Store.open(layout, policy=policy, clock=clock)
        assert info.value.case == 58
        assert not [p for p in layout.queue.iterdir() if "corrupt" in p.name]
        # The engine itself (its pid in the PID file, its lock held) does rebuild.
        (layout.pidfile).write_text(json.dumps({"pid": os.getpid(), "start_time": 0}))
        with Store.open(layout, policy=policy, clock=clock) as st:
            assert len(st.jobs()) > 40
    finally:
        holder.kill()
        holder.wait()
