"""The console: queue, resource gauges, loss plot, alerts and the engine's state on one screen.

The data source is injected (``TrainConsole(client)``), so tests drive the real UI with scripted
data. A thread worker builds an immutable Snapshot and posts it; the app applies it in one batch
and only then schedules the next poll, so a slow store or disk can delay the screen but never
pile polls up. Widgets change only what changed: the terminal link may be a slow SSH session.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterable
from functools import partial
from typing import Any, TypeVar

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Container
from textual.events import Resize
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Input

from console import keymap
from console.client import PRIORITIES, ConsoleClient
from console.snapshot import JobRow, Snapshot
from console.widgets.alerts import AlertList
from console.widgets.confirm import ConfirmDialog
from console.widgets.engine_state import EngineState
from console.widgets.gauges import Gauges
from console.widgets.help_screen import HelpScreen
from console.widgets.job_detail import JobDetailScreen
from console.widgets.loss_plot import LossPlot
from console.widgets.queue_table import QueueTable

W = TypeVar("W", bound=Widget)
NARROW_BELOW = 100
MIN_POLL_S = 0.25  # as nvitop: faster refreshes cost CPU and terminal bytes for nothing
TTY_CHECK_S = 2.0


class SnapshotReady(Message):
    def __init__(self, snapshot: Snapshot | None, error: str = "") -> None:
        super().__init__()
        self.snapshot = snapshot
        self.error = error


class ActionDone(Message):
    def __init__(self, text: str, ok: bool) -> None:
        super().__init__()
        self.text = text
        self.ok = ok


class TrainConsole(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "trainconsole"
    BINDINGS = keymap.bindings()
    ENABLE_COMMAND_PALETTE = True

    def __init__(self, client: ConsoleClient, poll_interval: float = 1.0, readonly: bool = False,
                 *, watch_terminal: bool = True) -> None:
        super().__init__()
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
        self._toasted: set[tuple[str | None, int | None]] = set()
        self._ppid = os.getppid()
        self.follow = True  # the cursor follows the running job until the operator moves it

    # --- layout ----------------------------------------------------------------------------

    def _main(self, kind: type[W]) -> W:
        """A widget of the dashboard, whichever screen is on top (a dialog, the help)."""
        return self._dashboard.query_one(kind)

    @property
    def _dashboard(self) -> Screen[Any]:
        return self.screen_stack[0] if self.screen_stack else self.screen

    def compose(self) -> ComposeResult:
        yield EngineState(id="state")
        with Container(id="main"):
            yield QueueTable(id="queue")
            yield LossPlot(id="loss")
            yield Gauges(id="gauges")
            yield AlertList(id="alerts")
        yield Input(placeholder="filter jobs (enter keeps it, escape clears)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self._main(QueueTable).border_title = "queue"
        self._main(Gauges).border_title = "resources"
        self._main(LossPlot).border_title = "loss"
        self._main(AlertList).border_title = "alerts"
        self._main(Input).display = False
        self._set_narrow(self.size.width)
        table = self._main(QueueTable)
        table.focus()
        table.on_user_move = self._stop_following
        self._start_poll()
        if self.watch_terminal:
            self._install_hangup()
            self.set_interval(TTY_CHECK_S, self._check_terminal)

    def on_resize(self, event: Resize) -> None:
        self._set_narrow(event.size.width)

    def _set_narrow(self, width: int) -> None:
        narrow = width < NARROW_BELOW
        self._dashboard.set_class(narrow, "narrow")
        self._main(AlertList).show_header = not narrow

    # --- terminal lifecycle ----------------------------------------------------------------

    def _install_hangup(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._hangup)
        except (NotImplementedError, RuntimeError, ValueError):
            pass

    def _hangup(self) -> None:
        self.exit(return_code=0, message="terminal closed")

    def _check_terminal(self) -> None:
        """A dropped SSH session can leave no SIGHUP behind; exit rather than spin on a dead tty."""
        gone = os.getppid() != self._ppid
        try:
            stream = sys.__stdout__
            if stream is None or not os.isatty(stream.fileno()):
                gone = True
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
        if not self.screen_stack:  # a poll that finished while the console was closing
            return
        if message.snapshot is not None:
            self.apply_snapshot(message.snapshot)
        elif message.error:
            self.apply_snapshot(Snapshot(**{**self.snapshot.__dict__, "problem": message.error}))
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
            running = next((j.id for j in snap.jobs if j.status == "running"), None)
            if (first or self.follow) and running is not None and table.shows(running) \
                    and table.selected_id != running:
                table.move_cursor(row=table.get_row_index(running), animate=False)
            self._main(Gauges).apply(snap.resources, snap.gpu_detail, snap.disk_labels)
            self._main(LossPlot).apply(snap.loss)
            self._main(AlertList).apply(snap.alerts)
            self._main(EngineState).apply(snap, self.readonly, table.filter_text)
        self._toast_new_alerts(snap)
        self._refresh_keys()
        if isinstance(self.screen, JobDetailScreen):
            self.screen.update_job(snap.job(self.screen.job.id))

    def _toast_new_alerts(self, snap: Snapshot) -> None:
        keys = {a.key for a in snap.alerts}
        if self._seen_alerts is None:  # what was there before we opened is not news
            self._seen_alerts = keys
            return
        for alert in snap.alerts:
            if alert.key not in self._seen_alerts and alert.severity == "critical" and not alert.acked:
                # The worker and the daemon may both report one failure: one toast for it.
                if (alert.job_id, alert.case) in self._toasted:
                    continue
                self._toasted.add((alert.job_id, alert.case))
                case = f"case {alert.case}: " if alert.case is not None else ""
                self.notify(f"{alert.job_id or 'engine'}: {case}{alert.message}", title="critical alert",
                            severity="error", timeout=10)
        self._seen_alerts = keys

    # --- which keys apply ------------------------------------------------------------------

    @property
    def selected_job(self) -> JobRow | None:
        return self.snapshot.job(self._main(QueueTable).selected_id)

    def _refresh_keys(self) -> None:
        job = self.selected_job
        state = (job.id if job else None, job.status if job else None, self.snapshot.engine.state,
                 any(j.status == "failed" for j in self.snapshot.jobs), self.snapshot.paused)
        if state != self._binding_state:
            self._binding_state = state
            self.refresh_bindings()

    @on(DataTable.RowHighlighted, "#queue")
    def _row_moved(self) -> None:
        self._refresh_keys()
        # The plot follows the cursor; fetch its job's curve now rather than in a second.
        if self.snapshot.loss is None or self.snapshot.loss.job_id != self._main(QueueTable).selected_id:
            self._start_poll()

    @on(DataTable.RowSelected, "#queue")
    def _row_chosen(self) -> None:
        # The table takes `enter` for itself; selecting a row is the same request.
        self.action_detail()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in keymap.MUTATING_ACTIONS and self.readonly:
            return False
        if not self.screen_stack or self.screen is not self.screen_stack[0]:
            return action in ("quit", "command_palette")
        return self._applies(action)

    def _applies(self, action: str) -> bool | None:
        """True, None (does not apply to the selection now: dimmed) or False (read-only)."""
        if action in keymap.MUTATING_ACTIONS and self.readonly:
            return False
        if action in keymap.JOB_STATES:
            job = self.selected_job
            return True if job is not None and job.status in keymap.JOB_STATES[action] else None
        if action == "retry_all":
            return True if any(j.status == "failed" for j in self.snapshot.jobs) else None
        if action == "stop_engine":
            return True if self.snapshot.engine.state in ("running", "paused") else None
        return True

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

    # --- actions ---------------------------------------------------------------------------

    @work(thread=True, exit_on_error=False, group="act")
    def _act(self, label: str, method: str, *args: Any) -> None:
        try:
            result = getattr(self.client, method)(*args)
        except Exception as exc:  # noqa: BLE001 - the store says why (e.g. job not in that state)
            self.post_message(ActionDone(str(exc) or f"{label} failed", ok=False))
            return
        if method == "retry_all_failed":
            label = f"retried {result} failed job{'s' if result != 1 else ''}"
        self.post_message(ActionDone(label, ok=True))

    def on_action_done(self, message: ActionDone) -> None:
        self.notify(message.text, severity="information" if message.ok else "error",
                    timeout=3 if message.ok else 8)
        self._start_poll()

    def _job_action(self, action: str) -> JobRow | None:
        job = self.selected_job
        if job is None or self._applies(action) is not True:
            self.bell()
            return None
        return job

    def action_priority_up(self) -> None:
        self._shift_priority("priority_up", +1)

    def action_priority_down(self) -> None:
        self._shift_priority("priority_down", -1)

    def _shift_priority(self, action: str, step: int) -> None:
        job = self._job_action(action)
        if job is None:
            return
        index = PRIORITIES.index(job.priority) if job.priority in PRIORITIES else 1
        level = PRIORITIES[max(0, min(len(PRIORITIES) - 1, index + step))]
        if level == job.priority:
            self.notify(f"{job.id} is already {level} priority", timeout=2)
            return
        self._act(f"{job.id} priority {level}", "set_priority", job.id, level)

    def action_priority_top(self) -> None:
        job = self._job_action("priority_top")
        if job is not None:
            self._act(f"{job.id} priority high", "set_priority", job.id, "high")

    def action_hold(self) -> None:
        job = self._job_action("hold")
        if job is None:
            return
        if job.status == "held":
            self._act(f"{job.id} released", "release", job.id)
        else:
            self._act(f"{job.id} held", "hold", job.id)

    def action_retry(self) -> None:
        job = self._job_action("retry")
        if job is not None:
            self._act(f"{job.id} queued for retry", "retry", job.id)

    def action_retry_all(self) -> None:
        if self._applies("retry_all") is not True:
            self.bell()
            return
        self._act("retry all failed", "retry_all_failed")

    def action_cancel(self) -> None:
        job = self._job_action("cancel")
        if job is None:
            return
        running = " It is running: it stops at its next checkpoint." if job.status == "running" else ""

        def answered(yes: bool | None) -> None:
            if yes:
                self._act(f"{job.id} cancelled", "cancel", job.id)

        self.push_screen(ConfirmDialog(f"Cancel {job.id} ({job.name})?{running}"), answered)

    def action_pause(self) -> None:
        if self.readonly:
            return
        paused = not self.snapshot.paused
        self._act("queue paused: the running job finishes, no new one starts" if paused
                  else "queue resumed", "set_paused", paused)

    def action_stop_engine(self) -> None:
        if self._applies("stop_engine") is not True:
            self.bell()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._act("engine stopping: the running job checkpoints first", "stop_engine")

        self.push_screen(ConfirmDialog("Stop the engine? The running job checkpoints and is requeued."),
                         answered)

    def action_detail(self) -> None:
        job = self._job_action("detail")
        if job is not None:
            self.push_screen(JobDetailScreen(job, self.client.job_log, self.poll_interval))

    def action_filter(self) -> None:
        box = self._main(Input)
        box.display = True
        box.value = self._main(QueueTable).filter_text
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        table = self._main(QueueTable)
        table.filter_text = event.value.strip()
        table.apply(self.snapshot.jobs)
        self._main(EngineState).apply(self.snapshot, self.readonly, table.filter_text)
        self._refresh_keys()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        box = self._main(Input)
        box.display = False
        self._main(QueueTable).focus()

    def key_escape(self) -> None:
        box = self._main(Input)
        if box.display or self._main(QueueTable).filter_text:
            box.value = ""
            box.display = False
            self._main(QueueTable).focus()

    def action_acknowledge(self) -> None:
        alerts = self._main(AlertList)
        key = alerts.selected_key if alerts.has_focus else None
        if key is None:
            key = next((a.key for a in self.snapshot.alerts if not a.acked), None)
        if key is None:
            self.notify("no unacknowledged alert", timeout=2)
            return
        self.client.acknowledge([key])
        self._start_poll()

    def action_acknowledge_all(self) -> None:
        keys = [a.key for a in self.snapshot.alerts if not a.acked]
        if keys:
            self.client.acknowledge(keys)
            self._start_poll()

    def action_log_y(self) -> None:
        plot = self._main(LossPlot)
        plot.apply(plot.view, log_y=not plot.log_y)

    def action_cursor_down(self) -> None:
        self._main(QueueTable).action_cursor_down()

    def action_cursor_up(self) -> None:
        self._main(QueueTable).action_cursor_up()

    def _stop_following(self) -> None:
        self.follow = False

    def action_follow(self) -> None:
        self.follow = True
        running = next((j.id for j in self.snapshot.jobs if j.status == "running"), None)
        table = self._main(QueueTable)
        if running is not None and table.shows(running) and table.selected_id != running:
            table.move_cursor(row=table.get_row_index(running), animate=False)
        self.notify("following the running job", timeout=2)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.readonly))

    async def action_quit(self) -> None:
        # Only the console ends: the engine runs detached and keeps training.
        self.exit()
