"""Reading event logs as a console does: a long run's log read newest part first (a cold start
reads the tail, not the whole file), its older part in bounded bites afterwards, and a rotation
of the file followed without losing an event. Real files written by EventLog."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.console.test_client import add
from trainconsole.console.client import WorkspaceClient
from trainconsole.console.logtail import TailFirst
from trainconsole.console.widgets.engine_state import render_state
from trainconsole.engine.config import load_config
from trainconsole.engine.events import EventLog, EventTail, read_all, rotated
from trainconsole.engine.store import Store


def write_steps(path: Path, steps: range, alert_every: int = 0) -> None:
    with EventLog(path) as log:
        for step in steps:
            log.emit("step", job_id="j0001", step=step, max_steps=10**6, loss=1.0 + 1.0 / step, lr=1e-4,
                     grad_norm=1.0, tokens_per_s=1.0)
            if alert_every and step % alert_every == 0:
                log.alert(66, f"old plateau alert at {step}", severity="warning", job_id="j0001",
                          key=f"plateau-{step}")


def test_a_cold_start_reads_only_the_tail_then_the_rest_in_bounded_bites(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_steps(path, range(1, 40_001))
    size = path.stat().st_size
    assert size > 4 << 20  # a long run's log
    log = TailFirst(path, window=64 << 10, chunk=1 << 20)
    new, older = log.read()
    # The first look: the newest 64 KB only, whole lines, ending at the last step.
    assert log.bytes_read <= (64 << 10) + 1 and older == []
    assert new[-1]["step"] == 40_000 and new[0]["step"] > 39_000
    assert [e["step"] for e in new] == list(range(new[0]["step"], 40_001))
    bites: list[list[int]] = []
    while log.backfilling:
        before = log.bytes_read
        more_new, more_older = log.read()
        assert more_new == [] and log.bytes_read - before <= (1 << 20) + 1
        bites.append([e["step"] for e in more_older])
    # Bites walk back from the window to the start, each in log order, every line once.
    assert [step for bite in reversed(bites) for step in bite] == list(range(1, new[0]["step"]))
    assert bites[0][-1] == new[0]["step"] - 1 and log.bite_at_start
    assert len(bites) == pytest.approx(size / (1 << 20), abs=2)
    with EventLog(path) as writer:
        writer.emit("step", job_id="j0001", step=40_001, max_steps=10**6, loss=1.0, lr=1e-4,
                    grad_norm=1.0, tokens_per_s=1.0)
    assert [e["step"] for e in log.read()[0]] == [40_001]


def _running_job_with_history(workspace: Path, **write: Any) -> tuple[WorkspaceClient, str]:
    """A console on a workspace whose one running job has logged 30,000 steps."""
    cfg = load_config(workspace / "config.toml")
    layout = cfg.layout()
    layout.ensure()
    job = add(layout, "a.jsonl")
    with Store.open(layout) as store:
        store.start(job, os.getpid(), None)
    write_steps(layout.job_events(job), range(1, 30_001), **write)
    return WorkspaceClient(cfg), job


def test_the_console_shows_a_long_run_at_once_and_fills_in_its_history(workspace: Path) -> None:
    client, job = _running_job_with_history(workspace, alert_every=100)
    first = client.snapshot(None, 60)
    assert first.loss is not None and first.loss.last_step == 30_000
    assert first.loss.train_x[0] > 28_000  # only the tail so far
    tail = client._watches[job].log
    assert tail.bytes_read <= (256 << 10) + 1
    for _ in range(20):
        snap = client.snapshot(None, 60)
        if not tail.backfilling:
            break
    snap = client.snapshot(None, 60)
    assert snap.loss is not None and snap.loss.train_x[0] == 1 and snap.loss.last_step == 30_000
    assert len(snap.loss.train_x) <= 3 * 60 + 1
    # 300 alerts under 300 keys: the panel holds the newest 200, the header counts all of them.
    assert len(snap.alerts) == 200 and snap.alert_unread == 300 and snap.alert_total == 300
    assert "300 alerts" in render_state(snap, False, "").plain
    client.acknowledge_all()
    after = client.snapshot(None, 60)
    assert after.alert_unread == 0 and "alert" not in render_state(after, False, "").plain


def test_after_the_warm_poll_the_first_frame_waits_for_no_history(workspace: Path) -> None:
    client, job = _running_job_with_history(workspace)
    client._warm()  # what warm() runs on its thread, here on this one
    tail = client._watches[job].log
    read = tail.bytes_read
    first = client.snapshot(None, 60)  # the app's first poll: only what is new
    assert tail.bytes_read == read and first.loss is not None and first.loss.last_step == 30_000
    client.snapshot(None, 60)  # the next one reads history
    assert tail.older_bytes_read > 0


def test_a_standing_alert_is_one_row_and_a_resolution_settles_it(workspace: Path) -> None:
    cfg = load_config(workspace / "config.toml")
    layout = cfg.layout()
    layout.ensure()
    job = add(layout, "a.jsonl")
    with Store.open(layout) as store:
        store.start(job, os.getpid(), None)
    client = WorkspaceClient(cfg)
    with EventLog(layout.job_events(job)) as log:
        for _ in range(5):
            log.alert(66, "loss plateau", severity="warning", job_id=job, key=f"plateau-{job}")
        snap = client.snapshot(None, 60)
        assert [a.message for a in snap.alerts] == ["loss plateau"] and snap.alert_unread == 1
        log.alert(66, "loss improving again", severity="info", job_id=job, key=f"plateau-{job}",
                  resolved=True)
    snap = client.snapshot(None, 60)
    assert len(snap.alerts) == 1 and snap.alerts[0].resolved and snap.alert_unread == 0


def test_a_rotated_log_is_read_to_its_end_then_the_new_one_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_steps(path, range(1, 101))
    tail = EventTail(path)
    assert [e["step"] for e in tail.read_new()] == list(range(1, 101))
    write_steps(path, range(101, 151))  # written after the last read...
    path.rename(rotated(path))  # ...then the log rotated
    write_steps(path, range(151, 201))
    steps = [e["step"] for e in tail.read_new()]
    steps += [e["step"] for e in tail.read_new()]
    assert steps == list(range(101, 201)) and tail.lost == 0


def test_a_log_rotated_twice_between_reads_starts_the_new_one_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_steps(path, range(1, 11))
    tail = EventTail(path)
    tail.read_new()
    path.rename(rotated(path))
    write_steps(path, range(11, 21))
    path.replace(rotated(path))  # the first old file is gone
    write_steps(path, range(21, 31))
    assert [e["step"] for e in tail.read_new()] == list(range(21, 31)) and tail.lost == 1


def test_a_log_truncated_in_place_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_steps(path, range(1, 51))
    tail = EventTail(path)
    tail.read_new()
    with open(path, "r+b") as fh:
        fh.truncate(0)
    write_steps(path, range(51, 61))
    assert [e["step"] for e in tail.read_new()] == list(range(51, 61))


def test_the_window_starts_at_a_whole_line_and_skips_nothing_after_it(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_steps(path, range(1, 1001))
    total = [e["step"] for e in read_all(path)]
    for window in (1, 100, 4096, 50_000, 10 << 20):
        got = [e["step"] for e in EventTail.from_end(path, window).read_new()]
        assert got == total[len(total) - len(got):]
        assert len(got) >= min(len(total), window // 200)  # ~130 bytes a line here


def test_a_reader_of_one_event_type_skips_the_other_lines_unparsed(tmp_path: Path) -> None:
    """``trainconsole ack`` reads only the alerts of a long log: the same alerts as a full read,
    a message that merely mentions "alert" is not one, and the steps are never decoded."""
    path = tmp_path / "events.jsonl"
    write_steps(path, range(1, 2001), alert_every=500)
    with EventLog(path) as log:
        log.emit("log", job_id="j0001", message='the word "alert" in a message')
    every = list(read_all(path))
    alerts = [e for e in every if e["type"] == "alert"]
    assert len(every) == 2000 + 4 + 1 and len(alerts) == 4
    tail = EventTail(path, only=b'"alert"')
    got = tail.read_new()
    assert got == alerts and tail.skipped == 0
    assert [e for e in read_all(path, only=b'"alert"') if e["type"] == "alert"] == alerts
