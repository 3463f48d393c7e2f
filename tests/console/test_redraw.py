"""What a refresh sends to the terminal: only what changed. Each widget's calls to ``refresh`` are
recorded while the real app runs on scripted data; a call without regions repaints the whole
widget (every cell re-sent), one with regions only those cells."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from textual.geometry import Region
from textual.widget import Widget

from tests.console.fakes import ScriptedClient, jobs, loss_view
from trainconsole.console.app import TrainConsole
from trainconsole.console.widgets.engine_state import EngineState
from trainconsole.console.widgets.loss_plot import LossPlot
from trainconsole.console.widgets.queue_table import QueueTable


def spy(widget: Widget) -> list[tuple[Region, ...]]:
    """Record the regions of each refresh of ``widget`` (an empty tuple: the whole widget)."""
    calls: list[tuple[Region, ...]] = []
    original: Callable[..., Any] = widget.refresh

    def refresh(*regions: Region, **kwargs: Any) -> Any:
        calls.append(regions)
        return original(*regions, **kwargs)

    widget.refresh = refresh  # type: ignore[method-assign]
    return calls


def lines(widget: Widget) -> list[str]:
    return [widget.render_line(y).text for y in range(widget.size.height)]


async def started(app: TrainConsole) -> None:
    await app.first_frame.wait()


async def test_a_progress_cell_changing_repaints_that_cell_only() -> None:
    app = TrainConsole(ScriptedClient(), poll_interval=60, watch_terminal=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await started(app)
        await pilot.pause()
        table = app.query_one(QueueTable)
        calls = spy(table)
        rows = tuple(dataclasses.replace(j, step=121, eta_s=278.0) if j.id == "j0002" else j
                     for j in app.snapshot.jobs)
        assert table.apply(rows)
        assert calls and all(regions for regions in calls), calls  # never the whole table
        y = table.get_row_index("j0002") + 1  # below the header
        assert {(r.y, r.height) for regions in calls for r in regions} == {(y, 1)}
        assert sum(r.width for regions in calls for r in regions) < table.size.width // 2
        await pilot.pause()
        assert any("121/400" in line and "~4m" in line for line in lines(table))
        calls.clear()
        assert not table.apply(rows)  # the same jobs again: nothing compared, nothing sent
        assert calls == []


async def test_the_plot_sends_what_moved_not_the_whole_curve() -> None:
    app = TrainConsole(ScriptedClient(), poll_interval=60, watch_terminal=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await started(app)
        await pilot.pause()
        plot = app.query_one(LossPlot)
        calls = spy(plot)
        before = loss_view("j0002", 60, steps=118)
        plot._drawn_at = 0.0  # past the growth throttle
        plot.apply(before)
        calls.clear()
        plot._drawn_at = 0.0
        plot.apply(loss_view("j0002", 60, steps=119))  # one step more, same axis end (120)
        assert calls and all(regions for regions in calls)
        cells = sum(r.width * r.height for regions in calls for r in regions)
        assert 0 < cells < plot.size.width * plot.size.height // 4


async def test_the_status_line_sends_the_changed_characters() -> None:
    app = TrainConsole(ScriptedClient(), poll_interval=60, watch_terminal=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await started(app)
        await pilot.pause()
        state = app.query_one(EngineState)
        calls = spy(state)
        faster = dataclasses.replace(app.snapshot.engine, step_rate=0.87)  # was 0.98
        state.apply(dataclasses.replace(app.snapshot, engine=faster), False, "")
        assert len(calls) == 1 and len(calls[0]) == 1
        region = calls[0][0]
        assert region.width <= 2 and "0.87 step/s" in lines(state)[0]


async def test_one_job_does_not_hold_a_tall_queue_panel() -> None:
    client = ScriptedClient()
    client.jobs = {j.id: j for j in jobs() if j.id == "j0002"}
    app = TrainConsole(client, poll_interval=60, watch_terminal=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await started(app)
        await pilot.pause()
        queue, plot = app.query_one(QueueTable), app.query_one(LossPlot)
        assert queue.outer_size.height == 5  # the border, the header, one row and a spare
        assert plot.outer_size.height > 20
        client.jobs = {j.id: j for j in jobs()}
        app._start_poll()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert queue.outer_size.height == 8  # five jobs
