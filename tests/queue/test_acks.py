"""Acknowledged alerts live in the store: shared by every console and the command line, kept
across restarts, and an alert that fires again later is unread again."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

from tests.helpers import run_cli
from trainconsole.console.client import WorkspaceClient
from trainconsole.engine.config import load_config
from trainconsole.engine.events import EventLog, alert_id
from trainconsole.engine.store import SCHEMA_VERSION, Store

from .conftest import make_layout


def cli(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(ws / "config.toml"), *args, cwd=ws, timeout=60)


def _ids(listing: str) -> list[str]:
    return [line.split()[0] for line in listing.splitlines() if line.startswith("a")]


def test_acks_are_shared_between_connections_and_kept_across_reopening(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    with Store.open(layout) as one, Store.open(layout) as two:
        one.acks.acknowledge({"disk": 100.0})
        seen = two.acks.read()
        assert seen.covers("disk", 100.0) and not seen.covers("disk", 100.5)  # fired again later
        assert not seen.covers("other", 50.0)
    with Store.open(layout) as again:
        again.acks.acknowledge({"disk": 90.0})  # an older occurrence never moves the mark back
        acks = again.acks.read()
        assert acks.covers("disk", 100.0)
        again.acks.acknowledge_all(200.0)
        acks = again.acks.read()
        assert acks.covers("other", 199.0) and not acks.covers("other", 201.0)
        assert acks.by_key == {}  # rows under the mark are folded into it


def test_a_schema_5_database_gains_the_acks_table(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    Store.open(layout).close()
    conn = sqlite3.connect(layout.state_db, isolation_level=None)
    conn.execute("DROP TABLE acks")
    conn.execute("PRAGMA user_version=5")
    conn.close()
    with Store.open(layout) as store:
        store.acks.acknowledge({"k": 1.0})
        assert store.acks.read().covers("k", 1.0)
    conn = sqlite3.connect(layout.state_db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    conn.close()


def test_ack_command_lists_acknowledges_and_every_console_sees_it(workspace: Path) -> None:
    cfg = load_config(workspace / "config.toml")
    layout = cfg.layout()
    layout.ensure()
    Store.open(layout).close()
    log = EventLog(layout.engine_events)
    log.alert(25, "disk low on /queue", severity="critical", key="disk")
    log.alert(None, "reporter wandb missing", severity="warning", key="reporter-missing")
    # An alert in a job's own log, written without a key or job id (the worker's case 3).
    EventLog(layout.job_events("j0001")).alert(3, "2 example(s) truncated", severity="info")
    with Store.open(layout) as store:
        job = store.add_job("a.jsonl", _data(workspace), "0" * 64, 3)
        assert job is not None and job.id == "j0001"
        store.fail_attempt(job.id, "data", "no usable example", alert=False)  # consoles read its log
    first, second = WorkspaceClient(cfg), WorkspaceClient(cfg)
    first.snapshot(None, 80)
    assert first.snapshot(None, 80).alert_counts()[0] == 3

    listed = cli(workspace, "ack")
    assert listed.returncode == 0, listed.stderr
    ids = _ids(listed.stdout)
    assert len(ids) == 3 and alert_id("disk") in ids, listed.stdout
    assert "case 25" in listed.stdout and "disk low" in listed.stdout

    res = cli(workspace, "ack", alert_id("disk"), "anope", "zzz")
    assert res.returncode == 1
    assert res.stdout.startswith(f"acknowledged {alert_id('disk')}: case 25")
    bad = res.stderr.strip().splitlines()
    assert len(bad) == 2 and "'anope'" in bad[0] and "'zzz'" in bad[1], res.stderr
    assert "Traceback" not in res.stderr

    # Both consoles, the one open before and one opened after, show it read.
    for client in (first, second):
        rows = {a.key: a.acked for a in client.snapshot(None, 80).alerts}
        assert rows["disk"] and not rows["reporter-missing"], rows
    assert len(_ids(cli(workspace, "ack").stdout)) == 2

    # Acknowledged in a console: the command line and the other console see it.
    first.acknowledge(["reporter-missing"])
    assert {a.key: a.acked for a in second.snapshot(None, 80).alerts}["reporter-missing"]
    assert len(_ids(cli(workspace, "ack").stdout)) == 1

    # Fired again later: unread again everywhere.
    time.sleep(0.01)
    log.alert(25, "disk low on /queue again", severity="critical", key="disk")
    assert alert_id("disk") in _ids(cli(workspace, "ack").stdout)
    assert not {a.key: a.acked for a in second.snapshot(None, 80).alerts}["disk"]

    done = cli(workspace, "ack", "--all")
    assert done.returncode == 0 and done.stdout.strip() == "acknowledged 2 alert(s)", done.stdout
    assert cli(workspace, "ack").stdout.strip() == "no unread alerts"
    # A console started afresh (a restart) shows them read from the store.
    third = WorkspaceClient(cfg)
    third.snapshot(None, 80)
    assert third.snapshot(None, 80).alert_counts()[0] == 0
    log.close()


def test_ack_refuses_ids_with_all_and_needs_a_queue(workspace: Path) -> None:
    res = cli(workspace, "ack", "--all")
    assert res.returncode == 1 and "no queue" in res.stderr and "Traceback" not in res.stderr
    res = cli(workspace, "ack", "--all", "a12345678")
    assert res.returncode == 2 and "not both" in res.stderr


def _data(ws: Path) -> Path:
    path = ws / "a.jsonl"
    path.write_text('{"messages": []}\n')
    return path
