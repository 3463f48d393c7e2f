"""What a new user sees at 80x24, read back from the rendered lines: nothing that matters may be
cut off by the terminal's edge (regressions found by using the console in a real 80x24 tmux)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widget import Widget

from tests.console.fakes import T0, ScriptedClient
from trainconsole.console.app import TrainConsole
from trainconsole.console.client import WorkspaceClient
from trainconsole.console.snapshot import AlertRow, Snapshot
from trainconsole.console.widgets.alerts import AlertList
from trainconsole.console.widgets.engine_state import EngineState
from trainconsole.console.widgets.queue_table import QueueTable
from trainconsole.engine.config import load_config
from trainconsole.engine.events import EventLog
from trainconsole.engine.store import Store


@asynccontextmanager
async def narrow(client: ScriptedClient | None = None, readonly: bool = False,
                 size: tuple[int, int] = (80, 24)) -> AsyncIterator[tuple[TrainConsole, Pilot[None]]]:
    app = TrainConsole(client or ScriptedClient(), poll_interval=60, readonly=readonly,
                       watch_terminal=False)
    async with app.run_test(size=size) as pilot:
        await app.first_frame.wait()
        await pilot.pause()
        yield app, pilot


def lines(widget: Widget) -> list[str]:
    return [widget.render_line(y).text for y in range(widget.size.height)]


async def test_status_line_keeps_alerts_and_readonly_at_80_columns() -> None:
    async with narrow(readonly=True) as (app, _):
        text = lines(app.query_one(EngineState))[0]
        assert "2 alerts" in text and "read-only" in text
        assert len(text.rstrip()) <= 80


LONG_REASON = ("data: rejected: no usable example: all 6 record(s) are invalid "
               "(most often: the line is not valid JSON, 2x)")


def long_client() -> ScriptedClient:
    client = ScriptedClient()
    client.jobs["j0005"] = dataclasses.replace(client.jobs["j0005"], error=LONG_REASON[6:])
    client.alerts.insert(0, AlertRow("a9", 4, "critical", "j0005", T0,
                                     "job failed (data): " + LONG_REASON[6:]))
    return client


@pytest.mark.edge(4)
@pytest.mark.parametrize("size", [(80, 24), (120, 40), (100, 30)])
async def test_long_reasons_and_alerts_end_in_an_ellipsis_inside_the_panel(size: tuple[int, int]) -> None:
    async with narrow(long_client(), size=size) as (app, pilot):
        table, alerts = app.query_one(QueueTable), app.query_one(AlertList)
        await pilot.pause()
        for widget, marker in ((table, "j0005"), (alerts, "#4 ")):
            row = next(line for line in lines(widget) if marker in line)
            assert row.rstrip().endswith("…"), row
            assert len(row) <= widget.size.width


async def test_a_resize_refits_the_reason_and_the_alerts() -> None:
    async with narrow(long_client(), size=(120, 40)) as (app, pilot):
        await pilot.resize_terminal(90, 30)
        await pilot.pause()
        await pilot.pause()
        for widget, marker in ((app.query_one(QueueTable), "j0005"), (app.query_one(AlertList), "#4 ")):
            row = next(line for line in lines(widget) if marker in line)
            assert row.rstrip().endswith("…"), row


@pytest.mark.edge(4)
def test_the_engine_copy_of_a_file_is_left_out_of_reasons_alerts_and_the_log(workspace: Path) -> None:
    cfg = load_config(workspace / "config.toml")
    layout = cfg.layout()
    layout.ensure()
    src = layout.tmp / "03-broken.jsonl"
    src.write_bytes(b"{oops\n")
    with Store.open(layout) as store:
        job = store.add_job("03-broken.jsonl", src, hashlib.sha256(b"{oops\n").hexdigest(), 6, "normal")
        assert job is not None
        store.start(job.id, os.getpid(), None)
        copy = f"{layout.jobs}/{job.id}--03-broken.jsonl"
        store.fail_attempt(job.id, "data", f"{copy}: rejected: no usable example")
    EventLog(layout.job_events(job.id)).alert(4, f"job failed (data): {copy}: rejected: no usable example",
                                              job_id=job.id, severity="critical")
    client = WorkspaceClient(cfg)
    try:
        snap = client.snapshot(job.id, 40)
        row = snap.job(job.id)
        assert row is not None and row.error == "rejected: no usable example"
        assert snap.alerts[0].message == "job failed (data): rejected: no usable example"
        assert not any("--03-broken" in line for line in client.job_log(job.id))
    finally:
        client.close()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_every_footer_key_fits_beside_the_palette_key(size: tuple[int, int]) -> None:
    from textual.widgets._footer import FooterKey

    async with narrow(size=size) as (app, pilot):
        await pilot.pause()
        keys = list(app.screen.query(FooterKey))
        palette = next(k for k in keys if k.has_class("-command-palette"))
        shown = [k for k in keys if k is not palette]
        assert {k.description for k in shown} >= {"help", "quit", "hold", "retry", "cancel", "pause",
                                                  "filter"}
        assert all(k.region.width > 0 for k in shown)
        assert max(k.region.right for k in shown) <= palette.region.x


@pytest.mark.edge(4, 69)
async def test_a_critical_alert_stays_in_sight_above_newer_warnings_until_acknowledged() -> None:
    client = ScriptedClient()
    for step in (15, 30, 45, 60):  # a guard that warns at every evaluation
        client.alerts.insert(0, AlertRow(f"acc{step}", 69, "warning", "j0002", T0 + step,
                                         f"held-out accuracy 0% at step {step}"))
    async with narrow(client) as (app, pilot):
        alerts = app.query_one(AlertList)
        shown = [line for line in lines(alerts) if line.strip()]
        assert "#4" in shown[0] and "critical" in shown[0]
        await pilot.press("a")  # acknowledges the one on top, and it takes its place by time
        await pilot.pause(0.3)
        for _ in range(40):
            if alerts.alerts[0].key != "a1":
                break
            await pilot.pause(0.05)
        assert [a.key for a in alerts.alerts] == ["acc60", "acc45", "acc30", "acc15", "a2", "a1"]
        assert alerts.alerts[-1].acked


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_a_confirmation_question_wraps_inside_its_box(size: tuple[int, int]) -> None:
    from textual.widgets import Label

    async with narrow(size=size) as (app, pilot):
        await pilot.press("S")
        await pilot.pause()
        question = app.screen.query_one("#confirm-question", Label)
        text = " ".join(line.strip() for line in lines(question))
        assert text.endswith("The running job checkpoints and is requeued."), text
        box = app.screen.query_one("#confirm-box")
        assert question.region.right <= box.content_region.right  # not cut by the box
        await pilot.press("escape")


async def test_new_alerts_show_at_the_top_while_the_alerts_panel_is_not_in_use() -> None:
    """The cursor sat on the first alert ever seen and the panel scrolled to keep it in view, so
    every newer alert (the broken file's, in the demo) slid out of the three visible rows."""
    client = ScriptedClient()
    critical = client.alerts.pop()  # at first only the warning (as the demo's NVML one)
    async with narrow(client, size=(100, 30)) as (app, pilot):
        alerts = app.query_one(AlertList)
        for n in range(6):
            with client.lock:
                client.alerts.insert(0, AlertRow(f"w{n}", 69, "warning", "j0002", T0 + n,
                                                 f"warning number {n}"))
                if n == 2:
                    client.alerts.insert(0, critical)
            app._start_poll()
            for _ in range(40):
                if alerts.row_count == len(client.alerts):
                    break
                await pilot.pause(0.05)
        await pilot.pause()
        shown = [line for line in lines(alerts) if line.strip()]
        assert "#4" in shown[1] and "warning number 5" in shown[2], shown  # shown[0]: the header


def test_a_stopped_engine_says_how_to_start_it_within_80_columns(workspace: Path) -> None:
    from trainconsole.console.widgets.engine_state import render_state

    cfg = load_config(workspace / "config.toml")
    layout = cfg.layout()
    layout.ensure()
    layout.pidfile.write_text('{"pid": 999999, "start_time": 1.0, "started_at": "then"}')
    for readonly, wanted in ((False, "reopen the console to start it"), (True, "stale pid file")):
        client = WorkspaceClient(cfg, readonly=readonly)
        try:
            engine = client.snapshot(None, 40).engine
        finally:
            client.close()
        assert engine.state == "stopped" and wanted in engine.detail
        line = render_state(Snapshot(engine=engine), readonly, "").plain
        assert len(line) <= 78 or readonly  # the 80-column status line, less its padding
    layout.pidfile.unlink()
    client = WorkspaceClient(cfg)
    try:
        assert client.snapshot(None, 40).engine.detail == "reopen the console to start it"
    finally:
        client.close()


@pytest.mark.edge(27)
@pytest.mark.parametrize("gpus", [1, 2])
async def test_ram_and_disk_stay_in_sight_with_gpus_at_80x24(gpus: int) -> None:
    from trainconsole.console.widgets.gauges import Gauges

    async with narrow(ScriptedClient(gpus=gpus)) as (app, pilot):
        gauges = app.query_one(Gauges)
        await pilot.pause()
        text = gauges.text
        assert len(text.splitlines()) <= gauges.content_size.height, text
        assert "RAM" in text and "disk queue" in text and f"GPU{gpus - 1}" in text
        assert "87%" in text  # GPU0's utilisation, one line or three


async def test_the_read_only_help_does_not_speak_of_keys_it_hides() -> None:
    from textual.widgets import Static

    async with narrow(readonly=True) as (app, pilot):
        await pilot.press("question_mark")
        await pilot.pause()
        note = str(app.screen.query_one("#help-note", Static).render())
        assert "read-only" in note and "retry" not in note


class SlowPolls(ScriptedClient):
    """Polls wait at a gate the test holds shut; changes go through at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def snapshot(self, focus: str | None, width: int) -> Snapshot:
        self.gate.wait(30)
        return super().snapshot(focus, width)


async def test_a_key_pressed_twice_before_the_next_poll_acts_twice() -> None:
    """`p p` pauses then resumes, `h h` holds then releases, `+ +` raises two levels: each press
    acts on the state the previous one asked for, not on the last poll's."""
    client = SlowPolls()
    async with narrow(client) as (app, pilot):
        app.follow = False
        table = app.query_one(QueueTable)
        table.move_cursor(row=table.get_row_index("j0004"))  # held, low priority
        await pilot.pause()
        client.gate.clear()  # as on a loaded machine: no poll lands between the presses
        await pilot.press("p", "p", "h", "h", "plus", "plus")
        client.gate.set()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert [c for c in client.calls if c[0] == "set_paused"] == [("set_paused", True),
                                                                    ("set_paused", False)]
        assert ("release", "j0004") in client.calls and ("hold", "j0004") in client.calls
        assert [c for c in client.calls if c[0] == "set_priority"] == [
            ("set_priority", "j0004", "normal"), ("set_priority", "j0004", "high")]
        assert not client.paused and client.jobs["j0004"].priority == "high"


async def test_enter_on_an_alert_shows_its_whole_message() -> None:
    async with narrow(long_client()) as (app, pilot):
        app.query_one(AlertList).focus()
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        shown = [n.message for n in app._notifications]
        assert any(m == "job failed (data): " + LONG_REASON[6:] for m in shown), shown
        assert app.screen is app.screen_stack[0]  # no job detail opened over it
