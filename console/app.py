"""The console: queue, resource gauges, loss plot, alerts and the engine's state on one screen.

The data source is injected (``TrainConsole(client)``), so tests drive the real UI with scripted
data. A thread worker builds an immutable Snapshot and posts it; the app applies it in one batch
and only then schedules the next poll, so a slow store or disk can delay the screen but never
pile polls up. Widgets change only what changed: the terminal link may be a slow SSH session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.containers import Container
from textual.css.query import NoMatches
from textual.events import Resize
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input

from trainconsole.console import keymap
from trainconsole.console.actions import ConsoleActions
from trainconsole.console.client_api import ConsoleClient
from trainconsole.console.snapshot import Snapshot
from trainconsole.console.widgets.alerts import AlertList
from trainconsole.console.widgets.engine_state import EngineState
from trainconsole.console.widgets.footer import KeyFooter
from trainconsole.console.widgets.gauges import Gauges
from trainconsole.console.widgets.job_detail import JobDetailScreen
from trainconsole.console.widgets.loss_plot import LossPlot
from trainconsole.console.widgets.queue_table import QueueTable

NARROW_BELOW = 100
SHORT_BELOW = 22  # rows: under this the plot and alerts shrink so the queue keeps some rows
MIN_POLL_S = 0.25  # as nvitop: faster refreshes cost CPU and terminal bytes for nothing
TTY_CHECK_S = 2.0
HANGUP_GRACE_S = 5.0


def _exit_after(seconds: float) -> None:
    time.sleep(seconds)
    os._exit(0)


class SnapshotReady(Message):
    def __init__(self, snapshot: Snapshot | None, error: str = "") -> None:
        super().__init__()
        self.snapshot = snapshot
        self.error = error


class TrainConsole(ConsoleActions):
    CSS_PATH = "app.tcss"
    TITLE = "trainconsole"
    BINDINGS = keymap.bindings()
    ENABLE_COMMAND_PALETTE = True

    def __init__(self, client: ConsoleClient, poll_interval: float = 1.0, readonly: bool = False,
                 *, watch_terminal: bool = True, notice: str = "") -> None:
        super().__init__()
        self.notice = notice  # shown once on the screen (e.g. why the engine did not start)
        self.client = client
        self.poll_interval = max(MIN_POLL_S, float(poll_interval))
        self.readonly = readonly or bool(getattr(client, "readonly", False))
        self.watch_terminal = watch_terminal
        self.snapshot = Snapshot()
        self.first_frame = asyncio.Event()
        self._polling = False
        self._poll_again = False
        self._poll_timer: Timer | None = None
        self._binding_state: tuple[Any, ...] = ()
        self._seen_alerts: set[str] | None = None
        self._toasted_from: tuple[object, ...] | None = None
        self._toasted: set[tuple[str | None, int | None]] = set()
        self._ppid = os.getppid()
        self.follow = True  # the cursor follows the running job until the operator moves it
        self._hung_up = False
        self._grid_rows = ""

    # --- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield EngineState(id="state")
        with Container(id="main"):
            yield QueueTable(id="queue")
            yield LossPlot(id="loss")
            yield Gauges(id="gauges")
            yield AlertList(id="alerts")
        yield Input(placeholder="filter jobs (enter keeps it, escape clears)", id="filter")
        yield KeyFooter()

    def on_mount(self) -> None:
        self._main(QueueTable).border_title = "queue"
        self._main(Gauges).border_title = "resources"
        self._main(LossPlot).border_title = "loss"
        self._main(AlertList).border_title = "alerts"
        self._main(Input).display = False
        self._set_narrow(self.size.width, self.size.height)
        table = self._main(QueueTable)
        table.focus()
        table.on_user_move = self._stop_following
        self._start_poll()
        if self.notice:
            self.notify(self.notice, severity="error", timeout=30)
        if self.watch_terminal:
            self._install_hangup()
            self.set_interval(TTY_CHECK_S, self._check_terminal)

    def on_resize(self, event: Resize) -> None:
        self._set_narrow(event.size.width, event.size.height)

    def _set_narrow(self, width: int, height: int = 40) -> None:
        narrow = width < NARROW_BELOW
        self._dashboard.set_class(narrow, "narrow")
        self._dashboard.set_class(height < SHORT_BELOW, "short")
        self._fit_rows(height)
        self._main(AlertList).show_header = not narrow
        # Spaced out, the footer's keys run past 80 columns: "pause" was cut, "filter" hidden.
        self._main(Footer).compact = narrow
        table = self._main(QueueTable)
        if narrow != table.compact:
            table.set_compact(narrow)
            table.apply(self.snapshot.jobs)

    def _fit_rows(self, height: int | None = None) -> None:
        """The queue's row is as tall as its jobs need, up to its share; the plot gets the rest.
        (One job used to hold 14 empty rows at 120x40 while the plot had as many.) The grid
        changes only when the number of rows does: a layout pass, not one per refresh."""
        screen = self._dashboard
        rows_of_main = (height if height is not None else self.size.height) - 2  # status, footer
        need = max(5, self._main(QueueTable).row_count + 3)  # a header and the border
        if screen.has_class("short") or screen.has_class("narrow"):
            plot, alerts = (6, 4) if screen.has_class("short") else (8, 5)
            rows = f"{min(need, max(5, rows_of_main - plot - alerts))} 1fr {alerts}"
        else:
            rows = f"{min(need, max(5, 2 * rows_of_main // 5))} 2fr 1fr"
        if rows != self._grid_rows:
            self._grid_rows = rows
            screen.query_one("#main").styles.grid_rows = rows

    # --- terminal lifecycle ----------------------------------------------------------------

    def _install_hangup(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._hangup)
        except (NotImplementedError, RuntimeError, ValueError):
            pass

    def _hangup(self) -> None:
        if self._hung_up:
            return
        self._hung_up = True
        # Restoring a terminal that is gone can block in the driver (a write or an input read on
        # a hung-up tty); nothing is left to restore, so a clean exit gets a few seconds, then the
        # process ends regardless rather than linger on a dead session.
        threading.Thread(target=_exit_after, args=(HANGUP_GRACE_S,), daemon=True).start()
        self.exit(return_code=0)

    def _check_terminal(self) -> None:
        """A dropped SSH session can leave no SIGHUP behind; exit rather than spin on a dead tty."""
        gone = os.getppid() != self._ppid
        try:
            stream = sys.__stdout__
            if stream is None or not os.isatty(stream.fileno()):
                gone = True
            else:
                # A hung-up tty still answers isatty; poll() reports the hang-up.
                probe = select.poll()
                probe.register(stream.fileno(), select.POLLHUP)
                gone = gone or any(ev & (select.POLLHUP | select.POLLNVAL) for _, ev in probe.poll(0))
        except (OSError, ValueError):
            gone = True
        if gone:
            self._hangup()

    # --- polling ---------------------------------------------------------------------------

    def _start_poll(self) -> None:
        if not self.screen_stack:
            return
        if self._polling:
            self._poll_again = True
            return
        self._polling = True
        table = self._main(QueueTable)
        plot = self._main(LossPlot)
        self._poll(table.selected_id, max(20, plot.content_size.width - 12))

    @work(thread=True, exit_on_error=False, group="poll")
    def _poll(self, focus: str | None, width: int) -> None:
        try:
            snap = self.client.snapshot(focus, width)
        except Exception as exc:  # noqa: BLE001 - shown on screen; the next poll may succeed
            self.post_message(SnapshotReady(None, f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(SnapshotReady(snap))

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        self._polling = False
        if not self.screen_stack:
            return
        try:
            self._main(QueueTable)
        except NoMatches:
            return  # a poll that finished while the console was closing (its widgets gone)
        if message.snapshot is not None:
            self.apply_snapshot(message.snapshot)
        elif message.error:
            self.apply_snapshot(dataclasses.replace(self.snapshot, problem=message.error))
        self.first_frame.set()
        if self._poll_timer is not None:
            self._poll_timer.stop()
            self._poll_timer = None
        if self._poll_again:  # an action asked for fresh data while this poll ran
            self._poll_again = False
            self.call_later(self._start_poll)
        else:
            self._poll_timer = self.set_timer(self.poll_interval, self._start_poll)

    def apply_snapshot(self, snap: Snapshot) -> None:
        first = self._seen_alerts is None
        self.snapshot = snap
        table = self._main(QueueTable)
        with self.batch_update():
            table.apply(snap.jobs)
            self._fit_rows()
            running = next((j.id for j in snap.jobs if j.status == "running"), None)
            if (first or self.follow) and running is not None and table.shows(running) \
                    and table.selected_id != running:
                table.move_cursor(row=table.get_row_index(running), animate=False)
            self._main(Gauges).apply(snap.resources, snap.gpu_detail, snap.disk_labels, snap.cluster)
            self._main(LossPlot).apply(snap.loss)
            alerts = self._main(AlertList)
            alerts.apply(snap.alerts)
            total = snap.alert_counts()[2]
            title = f"alerts ({len(snap.alerts)} newest of {total})" if total > len(snap.alerts) else "alerts"
            if alerts.border_title != title:  # setting it repaints the whole panel, even unchanged
                alerts.border_title = title
            self._main(EngineState).apply(snap, self.readonly, table.filter_text)
        self._toast_new_alerts(snap)
        self._refresh_keys()
        if isinstance(self.screen, JobDetailScreen):
            self.screen.update_job(snap.job(self.screen.job.id))

    def _toast_new_alerts(self, snap: Snapshot) -> None:
        if self._seen_alerts is not None and snap.alerts is self._toasted_from:
            return  # the same alerts as last time: nothing new
        self._toasted_from = snap.alerts
        keys = {a.key for a in snap.alerts}
        if self._seen_alerts is None:  # what was there before we opened is not news
            self._seen_alerts = keys
            return
        for alert in snap.alerts:
            if alert.key not in self._seen_alerts and alert.severity == "critical" and alert.unread:
                # The worker and the daemon may both report one failure: one toast for it.
                if (alert.job_id, alert.case) in self._toasted:
                    continue
                self._toasted.add((alert.job_id, alert.case))
                case = f"case {alert.case}: " if alert.case is not None else ""
                who = alert.job_id or "engine"
                text = alert.message if alert.message.startswith(who) else f"{who}: {alert.message}"
                self.notify(f"{case}{text}", title="critical alert",
                            severity="error", timeout=10)
        self._seen_alerts = keys

    # --- which keys apply ------------------------------------------------------------------

    def _refresh_keys(self) -> None:
        job = self.selected_job
        state = (job.id if job else None, job.status if job else None, self.snapshot.engine.state,
                 any(j.status == "failed" for j in self.snapshot.jobs), self.snapshot.paused)
        if state != self._binding_state:
            self._binding_state = state
            self.refresh_bindings()

    @on(DataTable.RowHighlighted, "#queue")
    def _row_moved(self) -> None:
        if not self.screen_stack:  # a cursor move still queued while the console closes
            return
        self._refresh_keys()
        # The plot follows the cursor; fetch its job's curve now rather than in a second.
        if self.snapshot.loss is None or self.snapshot.loss.job_id != self._main(QueueTable).selected_id:
            self._start_poll()

    @on(DataTable.RowSelected, "#queue")
    def _row_chosen(self) -> None:
        # The table takes `enter` for itself; selecting a row is the same request.
        self.action_detail()

    @on(DataTable.RowSelected, "#alerts")
    def _alert_chosen(self) -> None:
        # The panel ends a long message in "…": enter on it shows the whole text.
        alerts = self._main(AlertList)
        alert = next((a for a in alerts.alerts if a.key == alerts.selected_key), None)
        if alert is not None:
            case = f"case {alert.case}, " if alert.case is not None else ""
            self.notify(alert.message, title=f"{case}{alert.severity}, {alert.job_id or 'engine'}",
                        severity="error" if alert.severity == "critical" else "warning", timeout=20)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in keymap.MUTATING_ACTIONS and self.readonly:
            return False
        if not self.screen_stack or self.screen is not self.screen_stack[0]:
            return action in ("quit", "command_palette")
        return self._applies(action)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        seen: set[str] = set()
        for key in keymap.KEYMAP:
            if key.action in seen or key.action in ("quit", "cursor_up", "cursor_down"):
                continue
            seen.add(key.action)
            # The palette is the top screen while it asks: judge against the dashboard.
            if self._applies(key.action):
                shown = key.shown_as or key.keys.split(",")[0]
                yield SystemCommand(key.description.capitalize(), f"{key.long} (key {shown})",
                                    partial(self.run_action, key.action))
        yield from super().get_system_commands(screen)
