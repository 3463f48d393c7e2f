"""Every key action, pressed through Textual's Pilot on the real app with a scripted client:
the client (standing in for the store) changes as asked, destructive keys ask first and default
to No, keys that do not apply are dimmed, and a read-only console refuses every mutation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from textual.pilot import Pilot
from textual.widgets import Log

from tests.console.fakes import ScriptedClient
from trainconsole.console.app import TrainConsole
from trainconsole.console.widgets.alerts import AlertList
from trainconsole.console.widgets.confirm import ConfirmDialog
from trainconsole.console.widgets.help_screen import HelpScreen
from trainconsole.console.widgets.job_detail import JobDetailScreen
from trainconsole.console.widgets.loss_plot import LossPlot
from trainconsole.console.widgets.queue_table import QueueTable


@asynccontextmanager
async def console(client: ScriptedClient | None = None, readonly: bool = False,
                  size: tuple[int, int] = (120, 40)) -> AsyncIterator[tuple[TrainConsole, Pilot[None], ScriptedClient]]:
    client = client or ScriptedClient()
    app = TrainConsole(client, poll_interval=0.25, readonly=readonly, watch_terminal=False)
    async with app.run_test(size=size) as pilot:
        await app.first_frame.wait()
        await pilot.pause()
        yield app, pilot, client


async def select(app: TrainConsole, pilot: Pilot[None], job_id: str) -> None:
    app.follow = False  # as when the operator moves the cursor
    table = app.query_one(QueueTable)
    table.move_cursor(row=table.get_row_index(job_id))
    await pilot.pause()
    assert table.selected_id == job_id


async def settle(app: TrainConsole, pilot: Pilot[None]) -> None:
    await app.workers.wait_for_complete()
    await pilot.pause()


async def until(pilot: Pilot[None], condition: Callable[[], bool], limit: float = 20.0) -> None:
    """Wait for the app to show something (a poll to land); generous, for a loaded CI machine."""
    waited = 0.0
    while not condition():
        assert waited < limit, "the console never reached the expected state"
        await pilot.pause(0.05)
        waited += 0.05


async def test_priority_keys_change_the_selected_jobs_priority() -> None:
    async with console() as (app, pilot, client):
        await select(app, pilot, "j0003")
        await pilot.press("plus")
        await settle(app, pilot)
        assert client.jobs["j0003"].priority == "high"
        await pilot.press("minus")
        await settle(app, pilot)
        await pilot.press("minus")
        await settle(app, pilot)
        assert client.jobs["j0003"].priority == "low"
        await pilot.press("t")
        await settle(app, pilot)
        assert client.jobs["j0003"].priority == "high"
        assert client.calls == [("set_priority", "j0003", "high"), ("set_priority", "j0003", "normal"),
                                ("set_priority", "j0003", "low"), ("set_priority", "j0003", "high")]


async def test_hold_then_release() -> None:
    async with console() as (app, pilot, client):
        await select(app, pilot, "j0003")
        await pilot.press("h")
        await settle(app, pilot)
        assert client.jobs["j0003"].status == "held"
        # The next poll shows it held, so `h` now releases.
        await until(pilot, lambda: app.snapshot.job("j0003").status == "held")  # type: ignore[union-attr]
        await pilot.press("h")
        await settle(app, pilot)
        assert client.jobs["j0003"].status == "queued"
        assert ("release", "j0003") in client.calls


async def test_retry_one_and_retry_all_failed() -> None:
    async with console() as (app, pilot, client):
        await select(app, pilot, "j0005")
        await pilot.press("r")
        await settle(app, pilot)
        assert client.jobs["j0005"].status == "queued"
    client = ScriptedClient()
    async with console(client) as (app, pilot, client):
        await pilot.press("R")
        await settle(app, pilot)
        assert ("retry_all_failed",) in client.calls
        assert client.jobs["j0005"].status == "queued"


async def test_keys_that_do_not_apply_are_dimmed_and_do_nothing() -> None:
    async with console() as (app, pilot, client):
        await select(app, pilot, "j0001")  # done: no priority, hold, retry or cancel
        for action in ("priority_up", "hold", "retry", "cancel"):
            assert app.check_action(action, ()) is None, action  # None: shown dimmed
        await pilot.press("plus", "h", "r", "c")
        await settle(app, pilot)
        assert client.calls == []
        assert not isinstance(app.screen, ConfirmDialog)


async def test_cancel_asks_and_defaults_to_no() -> None:
    async with console() as (app, pilot, client):
        await select(app, pilot, "j0003")
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("enter")  # the focused button is No
        await settle(app, pilot)
        assert client.jobs["j0003"].status == "queued"
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("escape")
        await settle(app, pilot)
        assert client.calls == []
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("y")
        await settle(app, pilot)
        assert client.jobs["j0003"].status == "cancelled"


async def test_pause_and_resume_the_queue() -> None:
    async with console() as (app, pilot, client):
        await pilot.press("p")
        await settle(app, pilot)
        assert client.paused is True
        await until(pilot, lambda: app.snapshot.paused)  # the screen shows it paused: `p` resumes
        await pilot.press("p")
        await settle(app, pilot)
        assert client.paused is False
        assert client.calls == [("set_paused", True), ("set_paused", False)]


async def test_stop_engine_asks_first() -> None:
    async with console() as (app, pilot, client):
        await pilot.press("S")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        await settle(app, pilot)
        assert not client.stop_posted
        await pilot.press("S")
        await pilot.pause()
        await pilot.press("y")
        await settle(app, pilot)
        assert client.stop_posted


async def test_stop_is_dimmed_when_no_engine_runs() -> None:
    async with console(ScriptedClient(engine="not running")) as (app, pilot, client):
        assert app.check_action("stop_engine", ()) is None
        await pilot.press("S")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmDialog)


async def test_filter_narrows_the_table_and_escape_clears_it() -> None:
    async with console() as (app, pilot, client):
        table = app.query_one(QueueTable)
        await pilot.press("slash")
        await pilot.press(*"broken")
        await pilot.pause()
        assert table.row_count == 1 and table.selected_id == "j0005"
        await pilot.press("enter")
        await pilot.pause()
        assert table.has_focus and table.row_count == 1
        await pilot.press("escape")
        await pilot.pause()
        assert table.row_count == 5


async def test_acknowledge_alerts() -> None:
    async with console() as (app, pilot, client):
        await pilot.press("a")
        await settle(app, pilot)
        assert client.acked == {"a1"}  # the top one: an unacknowledged critical stays on top
        await until(pilot, lambda: [a.acked for a in app.query_one(AlertList).alerts] == [False, True])
        await pilot.press("A")
        await settle(app, pilot)
        assert client.acked == {"a1", "a2"}


async def test_log_y_toggle_and_help_and_detail_screens() -> None:
    async with console() as (app, pilot, client):
        plot = app.query_one(LossPlot)
        await pilot.press("y")
        assert plot.log_y is True
        await pilot.press("y")
        assert plot.log_y is False
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause()
        await select(app, pilot, "j0002")
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, JobDetailScreen) and app.screen.job.id == "j0002"
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("l")
        await pilot.pause()
        assert isinstance(app.screen, JobDetailScreen)
        await pilot.press("q")  # q leaves the detail screen, not the console
        await pilot.pause()
        assert not isinstance(app.screen, JobDetailScreen) and app.is_running


async def test_vim_keys_move_the_cursor_and_stop_following() -> None:
    async with console() as (app, pilot, client):
        table = app.query_one(QueueTable)
        assert table.selected_id == "j0002" and app.follow  # starts on the running job
        await pilot.press("j", "j")
        assert table.selected_id == "j0004" and not app.follow
        await pilot.pause(0.4)  # a poll does not pull the cursor back
        assert table.selected_id == "j0004"
        await pilot.press("k")
        assert table.selected_id == "j0003"
        await pilot.press("F")
        await pilot.pause()
        assert table.selected_id == "j0002" and app.follow


async def test_f_follows_the_selected_jobs_log_reading_only_what_is_new() -> None:
    async with console() as (app, pilot, client):
        await select(app, pilot, "j0003")
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen))
        screen = app.screen
        assert isinstance(screen, JobDetailScreen)
        log = screen.query_one(Log)
        await until(pilot, lambda: log.line_count >= 5)
        with client.lock:
            client.log_lines.append("12:00:09 step 9/400 loss 1.9")
        await until(pilot, lambda: log.line_count >= 6)
        assert log.lines[-1] == "12:00:09 step 9/400 loss 1.9" and log.line_count == 6
        reads = [c for c in client.calls if c[0] == "follow_log"]
        assert reads[0] == ("follow_log", "j0003", None) and all(c[2] in (5, 6) for c in reads[1:])
        assert log.scroll_offset.y == log.max_scroll_y  # pinned to the end
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, JobDetailScreen)


async def test_readonly_hides_and_refuses_every_mutating_key() -> None:
    async with console(readonly=True) as (app, pilot, client):
        await select(app, pilot, "j0003")
        for action in ("priority_up", "priority_down", "priority_top", "hold", "retry", "retry_all",
                       "cancel", "pause", "stop_engine"):
            assert app.check_action(action, ()) is False, action  # False: hidden from the footer
        await pilot.press("plus", "minus", "t", "h", "c", "p", "S", "R")
        await select(app, pilot, "j0005")
        await pilot.press("r")
        await settle(app, pilot)
        assert client.calls == []
        assert not isinstance(app.screen, ConfirmDialog)
        assert app.check_action("detail", ()) is True  # looking is allowed


async def test_quit_ends_the_console_only() -> None:
    async with console() as (app, pilot, client):
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running
        assert client.calls == []  # nothing was asked of the engine


async def test_palette_lists_the_actions_allowed_now() -> None:
    async with console(readonly=True) as (app, pilot, client):
        titles = [cmd.title for cmd in app.get_system_commands(app.screen)]
        assert "Filter" in titles and "Help" in titles
        assert "Cancel" not in titles and "Pause" not in titles


async def test_a_failing_client_is_shown_not_fatal() -> None:
    class Broken(ScriptedClient):
        def snapshot(self, focus: str | None, width: int):  # type: ignore[no-untyped-def]
            raise OSError("disk gone")

    app = TrainConsole(Broken(), poll_interval=0.25, watch_terminal=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.first_frame.wait()
        await pilot.pause()
        assert "disk gone" in app.snapshot.problem
        assert app.is_running


async def test_palette_runs_an_action() -> None:
    async with console() as (app, pilot, client):
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"pause")
        from textual.widgets import OptionList

        await until(pilot, lambda: app.screen.query_one(OptionList).option_count > 0)
        await pilot.press("enter")
        await until(pilot, lambda: client.calls == [("set_paused", True)])


async def test_help_lists_every_key_and_hides_mutations_when_readonly() -> None:
    from trainconsole.console.keymap import help_rows

    shown = {row[1] for row in help_rows(readonly=False)}
    assert any("cancel" in text for text in shown) and any("quit" in text for text in shown)
    readonly = {row[1] for row in help_rows(readonly=True)}
    assert not any("cancel" in text or "pause" in text for text in readonly)
    assert any("filter" in text for text in readonly)


async def test_clearing_a_filter_restores_id_order() -> None:
    async with console() as (app, pilot, client):
        table = app.query_one(QueueTable)
        await pilot.press("slash", *"j0003", "escape")
        await pilot.pause()
        order = [table.coordinate_to_cell_key((row, 0)).row_key.value for row in range(table.row_count)]
        assert order == ["j0001", "j0002", "j0003", "j0004", "j0005"]


async def test_a_new_critical_alert_pops_up_once_and_old_ones_do_not() -> None:
    from tests.console.fakes import T0
    from trainconsole.console.snapshot import AlertRow

    async with console() as (app, pilot, client):
        await pilot.pause(0.3)
        assert len(app._notifications) == 0  # the critical alert from before we opened is not news
        with client.lock:
            client.alerts.insert(0, AlertRow("a3", 28, "critical", "j0002", T0, "GPU fell off the bus"))
            client.alerts.insert(0, AlertRow("a4", 28, "critical", "j0002", T0 + 1, "GPU fell off the bus"))
        await until(pilot, lambda: len(app.snapshot.alerts) == 4)
        await pilot.pause()
        shown = [n.message for n in app._notifications]
        assert len(shown) == 1 and "case 28" in shown[0] and "GPU fell off the bus" in shown[0]

