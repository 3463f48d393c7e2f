"""The real data source on a real workspace: a real SQLite store, real event logs written by
EventLog, a real PID file. Then the real app on top of it, keys writing through the store."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import psutil
import pytest

from tests.chatdata import line
from trainconsole.console.app import TrainConsole
from trainconsole.console.client import WorkspaceClient
from trainconsole.console.widgets.confirm import ConfirmDialog
from trainconsole.console.widgets.queue_table import QueueTable
from trainconsole.engine.config import load_config
from trainconsole.engine.events import EventLog
from trainconsole.engine.layout import Layout
from trainconsole.engine.store import Store

LINE = line("hi", "yo").encode()


def add(layout: Layout, name: str, body: bytes = LINE, priority: str = "normal") -> str:
    src = layout.tmp / name
    src.write_bytes(body)
    with Store.open(layout) as store:
        job = store.add_job(name, src, hashlib.sha256(body).hexdigest(), len(body), priority)
    assert job is not None
    return job.id


@pytest.fixture
def ws(workspace: Path) -> tuple[WorkspaceClient, Layout]:
    cfg = load_config(workspace / "config.toml")
    layout = cfg.layout()
    layout.ensure()
    return WorkspaceClient(cfg), layout


def test_no_queue_yet_is_a_state(ws: tuple[WorkspaceClient, Layout]) -> None:
    client, layout = ws
    snap = client.snapshot(None, 60)
    assert snap.jobs == () and snap.engine.state == "not running"
    assert "no queue yet" in snap.problem
    assert not layout.state_db.exists()  # looking never creates the database


@pytest.mark.edge(64)
def test_loss_series_eval_alerts_and_rate_from_events(ws: tuple[WorkspaceClient, Layout]) -> None:
    client, layout = ws
    a = add(layout, "a.jsonl")
    with Store.open(layout) as store:
        store.start(a, os.getpid(), None)
    log = EventLog(layout.job_events(a))
    for step in range(1, 301):
        log.emit("step", job_id=a, step=step, max_steps=400, loss=3.0 / step, lr=1e-4, grad_norm=1.0,
                 tokens_per_s=100.0)
    log.emit("step", job_id=a, step=301, max_steps=400, loss=float("nan"), lr=1e-4, grad_norm=1.0,
             tokens_per_s=1.0)
    # Rolled back to the checkpoint at 250 and resumed: the old tail is replaced.
    for step in range(251, 261):
        log.emit("step", job_id=a, step=step, max_steps=400, loss=0.5, lr=5e-5, grad_norm=1.0,
                 tokens_per_s=100.0)
    log.emit("eval", job_id=a, step=250, eval_loss=0.7)
    log.alert(64, "loss became NaN at step 301; rolled back to step 250", job_id=a, severity="warning")
    EventLog(layout.engine_events).alert(25, "disk low", severity="critical", key="disk")
    snap = client.snapshot(None, 40)
    assert snap.loss is not None and snap.loss.job_id == a
    assert snap.loss.last_step == 260 and snap.loss.last_loss == 0.5
    assert len(snap.loss.train_x) <= 120 and max(snap.loss.train_x) == 260
    assert snap.loss.eval_x == (250.0,)
    assert [al.case for al in snap.alerts] == [25, 64]  # newest first
    running = snap.job(a)
    assert running is not None and running.status == "running"
    # Acknowledgement is kept by this console, until the same alert fires again.
    client.acknowledge(["disk"])
    assert client.snapshot(None, 40).alerts[0].acked
    time.sleep(0.01)
    EventLog(layout.engine_events).alert(25, "disk low again", severity="critical", key="disk")
    again = client.snapshot(None, 40).alerts
    assert again[0].message == "disk low again" and not again[0].acked and len(again) == 2


def test_engine_state_from_the_pid_file(ws: tuple[WorkspaceClient, Layout]) -> None:
    client, layout = ws
    layout.pidfile.write_text('{"pid": 999999, "start_time": 1.0, "started_at": "then"}')
    assert client.snapshot(None, 40).engine.state == "stopped"
    me = psutil.Process()
    layout.pidfile.write_text(
        f'{{"pid": {me.pid}, "start_time": {me.create_time()}, "started_at": "now"}}')
    add(layout, "x.jsonl")
    engine = client.snapshot(None, 40).engine
    assert engine.state == "running" and engine.pid == me.pid and engine.uptime_s is not None
    with Store.open(layout) as store:
        store.set_paused(True)
    assert client.snapshot(None, 40).engine.state == "paused"


def test_job_log_shows_report_and_events(ws: tuple[WorkspaceClient, Layout]) -> None:
    client, layout = ws
    a = add(layout, "a.jsonl")
    EventLog(layout.job_events(a)).emit("log", job_id=a, level="info", message="loading the model")
    (layout.run_dir(a) / "report.json").write_text(
        '{"schema": 1, "status": "failed", "error_class": "data", "case": 4, "message": "bad line 3",'
        ' "traceback": "Traceback\\n  boom"}')
    lines = client.job_log(a)
    assert any("bad line 3" in line and "case 4" in line for line in lines)
    assert any("loading the model" in line for line in lines)


async def test_keys_write_through_the_real_store(ws: tuple[WorkspaceClient, Layout]) -> None:
    client, layout = ws
    a = add(layout, "a.jsonl")
    b = add(layout, "b.jsonl", LINE.replace(b"hi", b"hello"))
    app = TrainConsole(client, poll_interval=0.25, watch_terminal=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.first_frame.wait()
        await pilot.pause()
        table = app.query_one(QueueTable)
        table.move_cursor(row=table.get_row_index(b))
        await pilot.pause()
        for key in ("plus", "h"):
            await pilot.press(key)
            await app.workers.wait_for_complete()
            await pilot.pause()
        await pilot.press("p")
        await app.workers.wait_for_complete()
        table.move_cursor(row=table.get_row_index(a))
        await pilot.pause()
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
    with Store.open(layout, repair=False) as store:
        job_b = store.get(b)
        job_a = store.get(a)
        assert job_b is not None and (job_b.priority, job_b.status) == ("high", "held")
        assert job_a is not None and job_a.status == "cancelled"
        assert store.paused()


async def test_readonly_client_refuses_writes(ws: tuple[WorkspaceClient, Layout]) -> None:
    client, layout = ws
    a = add(layout, "a.jsonl")
    client.readonly = True
    with pytest.raises(PermissionError):
        client.hold(a)
    app = TrainConsole(client, poll_interval=0.25, watch_terminal=False)
    assert app.readonly
    async with app.run_test(size=(80, 24)) as pilot:
        await app.first_frame.wait()
        await pilot.press("h", "c", "p")
        await app.workers.wait_for_complete()
    with Store.open(layout, repair=False) as store:
        job = store.get(a)
        assert job is not None and job.status == "queued" and not store.paused()


def test_a_store_error_reaches_the_operator_as_a_notice(ws: tuple[WorkspaceClient, Layout]) -> None:
    client, layout = ws
    a = add(layout, "a.jsonl")
    client.cancel(a)
    from trainconsole.engine.errors import TrainconsoleError

    with pytest.raises(TrainconsoleError, match="already cancelled"):
        client.cancel(a)
    assert time.time() > 0


def test_several_consoles_watch_one_queue_at_once(workspace: Path) -> None:
    import threading

    cfg = load_config(workspace / "config.toml")
    layout = cfg.layout()
    layout.ensure()
    a = add(layout, "a.jsonl")
    clients = [WorkspaceClient(cfg, readonly=True) for _ in range(3)]
    log = EventLog(layout.job_events(a))
    with Store.open(layout) as store:
        store.start(a, os.getpid(), None)
    errors: list[BaseException] = []

    def watch(client: WorkspaceClient) -> None:
        try:
            for _ in range(20):
                snap = client.snapshot(a, 40)
                assert [j.id for j in snap.jobs] == [a]
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=watch, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for step in range(1, 200):
        log.emit("step", job_id=a, step=step, max_steps=200, loss=1.0 / step, lr=1e-4, grad_norm=1.0,
                 tokens_per_s=1.0)
    for t in threads:
        t.join()
    assert errors == []
    final = [c.snapshot(a, 40).loss for c in clients]
    assert all(view is not None and view.last_step == 199 for view in final)


@pytest.mark.edge(58)
def test_a_rebuilt_database_is_followed(ws: tuple[WorkspaceClient, Layout]) -> None:
    client, layout = ws
    a = add(layout, "a.jsonl")
    assert [j.id for j in client.snapshot(None, 40).jobs] == [a]
    # The engine set the database aside and rebuilt it (case 58): a new file at the same path.
    for suffix in ("", "-wal", "-shm"):
        old = layout.state_db.with_name(layout.state_db.name + suffix)
        if old.exists():
            old.rename(old.with_name(old.name + ".aside"))
    with Store.open(layout, repair=False) as store:
        store.set_paused(True)
    snap = client.snapshot(None, 40)
    assert snap.jobs == () and snap.paused
    client.close()


def test_following_a_log_reads_its_end_then_only_what_is_new(ws: tuple[WorkspaceClient, Layout]) -> None:
    client, layout = ws
    a = add(layout, "a.jsonl")
    log = EventLog(layout.job_events(a))
    for step in range(1, 3001):
        log.emit("step", job_id=a, step=step, max_steps=4000, loss=1.0, lr=1e-4, grad_norm=1.0,
                 tokens_per_s=1.0)
    lines, offset = client.follow_log(a, None)
    assert len(lines) == 2000 and "step 3000/4000" in lines[-1] and "step 1001/4000" in lines[0]
    assert offset == layout.job_events(a).stat().st_size
    assert client.follow_log(a, offset) == ([], offset)
    log.alert(66, "loss plateau", severity="warning", job_id=a, key=f"plateau-{a}")  # a retry appends
    lines, later = client.follow_log(a, offset)
    assert len(lines) == 1 and "ALERT warning case 66: loss plateau" in lines[0] and later > offset
