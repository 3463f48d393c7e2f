"""SIGKILL an ingesting process at random instants, over and over, then check that every file
dropped into the inbox became exactly one job, with its bytes intact, and that no temporary file
or half-finished record is left (cases 41, 51, 52: a kill must neither lose nor double a file)."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from trainconsole.engine.daemon.inbox import Inbox
from trainconsole.engine.layout import Layout
from trainconsole.engine.store import Store

from .conftest import make_layout

CHILD = Path(__file__).with_name("ingest_child.py")
LANES = 4
KILLS_PER_LANE = 30
FILES_PER_CYCLE = 4


def _lane(root: Path, seed: int) -> tuple[Layout, dict[str, int], int]:
    """One queue folder, one ingesting process at a time, killed at a random point each cycle."""
    rng = random.Random(seed)
    layout = make_layout(root)
    expected: dict[str, int] = {}  # sha256 -> how many files carried it (always 1 here)
    kills = 0
    n = 0
    cycles = 0
    while kills < KILLS_PER_LANE and cycles < 4 * KILLS_PER_LANE:
        cycles += 1
        for _ in range(FILES_PER_CYCLE):
            n += 1
            body = f'{{"messages": [{{"role": "user", "content": "lane {seed} file {n}"}}]}}\n'.encode()
            folder = layout.incoming_for(rng.choice(["normal", "high", "low"]))
            (folder / f"f {n} 'x'.jsonl").write_bytes(body)
            expected[hashlib.sha256(body).hexdigest()] = 1
        proc = subprocess.Popen([sys.executable, str(CHILD), str(root)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        proc.stdout.readline()  # past interpreter start-up and the store's repair
        # Kill anywhere in the child's work; a child that finished first does not count as a kill.
        time.sleep(rng.uniform(0.0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
    return layout, expected, kills


@pytest.mark.edge(51, 52)
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_minus_9_while_ingesting_neither_loses_nor_doubles(tmp_path: Path) -> None:
    with ThreadPoolExecutor(LANES) as pool:
        results = list(pool.map(lambda i: _lane(tmp_path / f"lane{i}", i), range(LANES)))
    total_kills = sum(r[2] for r in results)
    assert total_kills >= 100, total_kills
    for layout, expected, _ in results:
        with Store.open(layout) as store:  # finishes what the last kill interrupted
            inbox = Inbox(layout)
            while inbox.scan(store, stable_s=0.0):
                pass
            jobs = store.jobs()
            assert store.db.conn.execute("SELECT COUNT(*) FROM intents").fetchone()[0] == 0
        shas = [j.sha256 for j in jobs]
        assert sorted(shas) == sorted(expected), "a file was lost or doubled"
        for job in jobs:
            assert hashlib.sha256(job.path.read_bytes()).hexdigest() == job.sha256
        data_files = [p for p in layout.jobs.iterdir() if p.name.endswith(".jsonl")]
        assert len(data_files) == len(jobs)
        assert [p for p in layout.incoming.rglob("*") if p.is_file()] == []
        assert [p.name for p in layout.tmp.iterdir()] == []
        ids = [int(j.id[1:]) for j in jobs]
        assert len(set(ids)) == len(ids)


@pytest.mark.edge(51)
def test_an_intent_left_by_a_process_before_a_reboot_is_finished_even_if_the_pid_is_ours(
        tmp_path: Path) -> None:
    """After a reboot the engine can get the very pid its predecessor had: the intent is judged by
    the owner's start time, not the pid alone, so it is finished rather than waited on forever."""
    import os
    import sqlite3

    layout = make_layout(tmp_path)
    Store.open(layout).close()
    src = layout.incoming / "left.jsonl"
    src.write_bytes(b'{"messages": []}\n')
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    conn = sqlite3.connect(layout.state_db)
    conn.execute("INSERT INTO intents(seq,id,src,name,filename,sha256,size,priority,mode,owner_pid,"
                 "created_at) VALUES (1,'j0001',?,?,'j0001--left.jsonl',?,?,'normal','move',?,?)",
                 (os.fsencode(src), b"left.jsonl", sha, src.stat().st_size, os.getpid(), 1000.0))
    conn.execute("UPDATE meta SET value='2' WHERE key='next_seq'")
    conn.commit()
    conn.close()
    with Store.open(layout) as store:
        (job,) = store.jobs()
        assert (job.id, job.name, job.sha256) == ("j0001", "left.jsonl", sha)
        assert job.path.is_file() and not src.exists()


def _intent(layout: Layout, src: Path, owner_pid: int, owner_start: str) -> None:
    import os
    import sqlite3

    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    conn = sqlite3.connect(layout.state_db)
    conn.execute("INSERT INTO intents(seq,id,src,name,filename,sha256,size,priority,mode,owner_pid,"
                 "created_at,owner_start) VALUES (1,'j0001',?,?,'j0001--left.jsonl',?,?,'normal','move',?,?,?)",
                 (os.fsencode(src), b"left.jsonl", sha, src.stat().st_size, owner_pid, 1.0e12, owner_start))
    conn.execute("UPDATE meta SET value='2' WHERE key='next_seq'")
    conn.commit()
    conn.close()


@pytest.mark.edge(51)
def test_an_intent_is_judged_by_its_owners_identity_not_by_clocks(tmp_path: Path) -> None:
    """The owner's identity (engine/procid.py) decides: a live owner's intent is left to it; the
    same pid with another identity (a reused pid) is not the owner, and the intent is finished.
    Its created_at is set far in the future, so the old wall-clock rule would have waited."""
    import os
    import sqlite3

    from trainconsole.engine.procid import identity

    layout = make_layout(tmp_path)
    Store.open(layout).close()
    src = layout.incoming / "left.jsonl"
    src.write_bytes(b'{"messages": []}\n')
    owner = subprocess.Popen(["sleep", "60"])
    try:
        token = identity(owner.pid)
        assert token is not None
        _intent(layout, src, owner.pid, token)
        with Store.open(layout) as store:
            assert store.jobs() == [] and src.exists()  # still the live owner's to finish
    finally:
        owner.kill()
        owner.wait()
    other = identity(os.getpid())
    assert other is not None and other != token
    conn = sqlite3.connect(layout.state_db)
    conn.execute("UPDATE intents SET owner_pid=?", (os.getpid(),))  # its pid, someone else's now
    conn.commit()
    conn.close()
    with Store.open(layout) as store:
        (job,) = store.jobs()
        assert (job.id, job.name) == ("j0001", "left.jsonl") and job.path.is_file() and not src.exists()
