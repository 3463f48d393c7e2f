"""What a new user sees at 80x24, read back from the rendered lines: nothing that matters may be
cut off by the terminal's edge (regressions found by using the console in a real 80x24 tmux)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from textual.pilot import Pilot
from textual.widget import Widget

from console.app import TrainConsole
from console.widgets.engine_state import EngineState
from tests.console.fakes import ScriptedClient


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
