"""SVG snapshots of the console at 80x24 and 120x40, from scripted data with fixed times (no
clock is read while rendering). Regenerate after an intended change with
``pytest tests/console/test_snapshots.py --snapshot-update`` and look at the SVGs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from textual.pilot import Pilot

from tests.console.fakes import ScriptedClient
from trainconsole.console.app import TrainConsole


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def first_frame(pilot: Pilot[None]) -> None:
    app = pilot.app
    assert isinstance(app, TrainConsole)
    await app.first_frame.wait()
    await pilot.pause()


def make(**kwargs: Any) -> TrainConsole:
    readonly = kwargs.pop("readonly", False)
    return TrainConsole(ScriptedClient(**kwargs), poll_interval=60, readonly=readonly,
                        watch_terminal=False)


@pytest.mark.edge(26)
def test_80x24_no_gpu(snap_compare: Any) -> None:
    assert snap_compare(make(), terminal_size=(80, 24), run_before=first_frame)


@pytest.mark.edge(27)
def test_120x40_two_gpus(snap_compare: Any) -> None:
    assert snap_compare(make(gpus=2), terminal_size=(120, 40), run_before=first_frame)


def test_80x24_readonly_footer(snap_compare: Any) -> None:
    assert snap_compare(make(readonly=True), terminal_size=(80, 24), run_before=first_frame)


def test_120x40_cancel_confirmation(snap_compare: Any) -> None:
    async def ask(pilot: Pilot[None]) -> None:
        await first_frame(pilot)
        await pilot.press("j", "j", "c")
        await pilot.pause()

    assert snap_compare(make(), terminal_size=(120, 40), run_before=ask)


def test_80x24_lineage_view(snap_compare: Any) -> None:
    async def lineages(pilot: Pilot[None]) -> None:
        await first_frame(pilot)
        await pilot.press("L")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(make(), terminal_size=(80, 24), run_before=lineages)


def test_80x24_export_dialog(snap_compare: Any) -> None:
    async def export(pilot: Pilot[None]) -> None:
        await first_frame(pilot)
        await pilot.press("k", "e")  # j0001, done, with an adapter
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        from textual.widgets import Input

        pilot.app.screen.query_one(Input).cursor_blink = False  # a blinking cursor is drawn at random
        await pilot.pause()

    assert snap_compare(make(), terminal_size=(80, 24), run_before=export)
