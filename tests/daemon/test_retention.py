"""What a months-long engine keeps: the queue's event log rotated at a size (and read across the
rotation), a done job's checkpoints dropped once its adapter is published, run folders older than
``retention.log_days`` removed (never one a worker holds), and the job store's free pages given
back. Real files, a real store, a real lock holder, the fake worker under the real supervisor."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon.harness import ROOT, Harness, drop
from tests.queue.conftest import Clock, make_layout
from trainconsole.engine.config.schema import RetentionConfig
from trainconsole.engine.daemon.retention import Retention
from trainconsole.engine.events import EventLog, EventTail, read_all, rotated
from trainconsole.engine.store import Store

HOLDER = """
import sys, time
from pathlib import Path
from trainconsole.engine.lock import lock_run_folder
fd = lock_run_folder(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.read()
"""


def test_the_event_log_rotates_at_its_size_and_a_tail_reads_across(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=4096)
    tail = EventTail(path)
    seen: list[int] = []
    for i in range(2000):
        log.emit("log", level="info", message=f"event {i}", n=i)
        if i % 10 == 9:
            seen += [e["n"] for e in tail.read_new()]
        assert not path.exists() or path.stat().st_size < 4096 + 200  # a line past the bound at most
    seen += [e["n"] for e in tail.read_new()]
    log.close()
    assert log.rotations > 20 and rotated(path).stat().st_size < 4096 + 200
    assert seen == list(range(2000)) and tail.lost == 0
    # Another writer (the command line's store) appending meanwhile follows the rotation too.
    other = EventLog(path, max_bytes=4096)
    other.emit("log", level="info", message="from another writer", n=-1)
    for i in range(2000, 2100):
        log.emit("log", level="info", message=f"event {i}", n=i)
        other.emit("log", level="info", message="other", n=-2)
    both = [e["n"] for part in (rotated(path), path) for e in read_all(part)]
    mine = [n for n in both if n >= 0]
    assert mine == list(range(mine[0], 2100)) and both.count(-2) > 0  # in order, none twice
    assert rotated(path).stat().st_size < 4096 + 200
    other.close()
    log.close()


def _finished(store: Store, clock: Clock, ws: Path, name: str, status: str) -> str:
    data = ws / name
    data.write_text('{"messages": []}\n')
    job = store.add_job(name, data, os.urandom(8).hex() * 8, data.stat().st_size)
    assert job is not None
    store.start(job.id)
    run = store.layout.run_dir(job.id)
    for step in (2, 4):
        folder = run / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter.bin").write_bytes(b"\0" * 65536)
    (run / "events.jsonl").write_text("{}\n")
    if status == "done":
        store.succeed(job.id, adapter=str(store.layout.adapters / f"0001-{job.id}"))
    else:
        store.fail_attempt(job.id, "data", "bad", alert=False)
    return job.id


def test_retention_drops_done_checkpoints_then_old_folders_never_a_held_one(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    clock = Clock()
    adapter = layout.adapters / "0001-j0001"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"\1" * 1000)
    with Store.open(layout, clock=clock) as store:
        done = _finished(store, clock, tmp_path, "a.jsonl", "done")
        failed = _finished(store, clock, tmp_path, "b.jsonl", "failed")
        held = _finished(store, clock, tmp_path, "c.jsonl", "done")
        events = EventLog(layout.engine_events)
        keeper = Retention(RetentionConfig(log_days=2.0, every_s=1.0), layout, store, events, clock=clock)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(layout.run_dir(held))], cwd=ROOT,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            first = keeper.sweep()
            assert (first.checkpoints, first.run_folders, first.busy) == (1, 0, 1)
            assert not (layout.run_dir(done) / "checkpoints").exists()
            assert (layout.run_dir(done) / "events.jsonl").exists()  # its log stays until log_days
            assert len(list((layout.run_dir(failed) / "checkpoints").iterdir())) == 2  # a retry resumes
            assert len(list((layout.run_dir(held) / "checkpoints").iterdir())) == 2  # in use: left
            assert (adapter / "adapter_model.safetensors").read_bytes() == b"\1" * 1000
            assert keeper.sweep() == type(first)(0, 0, 1, 0)  # nothing new; the held one still waits
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(10)
        assert keeper.sweep().checkpoints == 1 and not (layout.run_dir(held) / "checkpoints").exists()

        clock.advance(2 * 86400 + 1)
        aged = keeper.sweep()
        assert aged.run_folders == 3 and not any(layout.run_dir(j).exists() for j in (done, failed, held))
        assert adapter.is_dir() and (layout.done / store.require(done).path.name).is_file()
        assert not [p for p in layout.runs.iterdir() if p.name.startswith(".")]  # nothing half-deleted
        events.close()
        assert any("retention: removed" in e.get("message", "") for e in read_all(layout.engine_events))


def test_store_upkeep_gives_free_pages_back(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    with Store.open(layout) as store:
        assert store.db.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental, from creation
        for _ in range(3000):
            store.post_command("pause", arg={"pad": "x" * 400})
        store.take_commands()
        store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = layout.state_db.stat().st_size
        kept = store.upkeep()
        store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert kept.bytes_freed > 1 << 20 and not kept.vacuumed
        assert layout.state_db.stat().st_size < before - (1 << 20)

    # A database made before incremental vacuum: switched once, when its free pages pay for it.
    legacy = tmp_path / "legacy"
    layout2 = make_layout(legacy)
    Store.open(layout2).close()
    conn = sqlite3.connect(layout2.state_db, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=NONE")
    conn.execute("VACUUM")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    with Store.open(layout2) as store:
        for _ in range(3000):
            store.post_command("pause", arg={"pad": "x" * 400})
        store.take_commands()
        switched = store.upkeep()
        assert switched.vacuumed and switched.bytes_freed > 1 << 20
        assert store.db.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert not store.upkeep().vacuumed


def test_the_supervisor_drops_a_done_jobs_checkpoints(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CKPT_KB", "64")
    h = Harness(workspace, {"retention.every_s": 0.1})
    try:
        drop(workspace, "a.jsonl")
        h.run_until(lambda: [j.status for j in h.jobs()] == ["done"])
        run = h.layout.run_dir(h.jobs()[0].id)
        h.run_until(lambda: not (run / "checkpoints").exists(), timeout=30)
        assert (run / "events.jsonl").is_file()
    finally:
        h.close()
