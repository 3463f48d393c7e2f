"""What the console's keys do. Every change goes through the injected client (the store), in a
thread worker, and is followed by a fresh poll; destructive ones ask first. Which keys apply to
the selected job is decided here too (``_applies``), for the footer, the palette and the keys."""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from textual import on, work
from textual.app import App
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Input

from trainconsole.console import keymap
from trainconsole.console.client_api import PRIORITIES, ConsoleClient
from trainconsole.console.snapshot import JobRow, Snapshot
from trainconsole.console.widgets.alerts import AlertList
from trainconsole.console.widgets.confirm import ConfirmDialog
from trainconsole.console.widgets.engine_state import EngineState
from trainconsole.console.widgets.help_screen import HelpScreen
from trainconsole.console.widgets.job_detail import JobDetailScreen
from trainconsole.console.widgets.loss_plot import LossPlot
from trainconsole.console.widgets.queue_table import QueueTable

if TYPE_CHECKING:
    from trainconsole.console.exporting import ExportResult
    from trainconsole.console.widgets.export_dialog import ExportRequest
    from trainconsole.engine.adapters import Adapter

W = TypeVar("W", bound=Widget)


class ActionDone(Message):
    def __init__(self, text: str, ok: bool) -> None:
        super().__init__()
        self.text = text
        self.ok = ok


class ExportAsked(Message):
    """What the adapters folder says of the job `e` was pressed on: its adapter and a proposed
    folder, or why there is nothing to export."""

    def __init__(self, job: JobRow, adapter: Adapter | None, destination: Path | None, problem: str) -> None:
        super().__init__()
        self.job = job
        self.adapter = adapter
        self.destination = destination
        self.problem = problem


class ExportDone(Message):
    def __init__(self, result: ExportResult) -> None:
        super().__init__()
        self.result = result


class ConsoleActions(App[None]):
    """The key actions of ``TrainConsole``, which supplies the state below and the polling."""

    client: ConsoleClient
    snapshot: Snapshot
    readonly: bool
    follow: bool
    poll_interval: float

    def __init__(self) -> None:
        super().__init__()
        self._act_lock = threading.Lock()
        self._pending: deque[tuple[str, str, tuple[Any, ...]]] = deque()
        self._acting = False
        self._widgets: dict[type[Widget], Widget] = {}

    def _start_poll(self) -> None:
        raise NotImplementedError

    def _refresh_keys(self) -> None:
        raise NotImplementedError

    def _fit_rows(self, height: int | None = None) -> None:
        raise NotImplementedError

    def _main(self, kind: type[W]) -> W:
        """A widget of the dashboard, whichever screen is on top (a dialog, the help). Found once:
        a DOM query per call was a tenth of the console's idle CPU (dozens of calls a refresh)."""
        found = self._widgets.get(kind)
        if found is None or not found.is_attached:
            found = self._widgets[kind] = self._dashboard.query_one(kind)
        return found  # type: ignore[return-value]

    @property
    def _dashboard(self) -> Screen[Any]:
        return self.screen_stack[0] if self.screen_stack else self.screen

    @property
    def selected_job(self) -> JobRow | None:
        return self.snapshot.job(self._main(QueueTable).selected_id)

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

    def _act(self, label: str, method: str, *args: Any) -> None:
        """Queue a change for the store. One thread applies them in the order the keys were
        pressed: `p p` must pause then resume, never the other way round."""
        with self._act_lock:
            self._pending.append((label, method, args))
            start = not self._acting
            self._acting = True
        if start:
            self._apply_pending()

    @work(thread=True, exit_on_error=False, group="act")
    def _apply_pending(self) -> None:
        while True:
            with self._act_lock:
                if not self._pending:
                    self._acting = False
                    return
                label, method, args = self._pending.popleft()
            try:
                result = getattr(self.client, method)(*args)
            except Exception as exc:  # noqa: BLE001 - the store says why (e.g. job not in that state)
                self.post_message(ActionDone(str(exc) or f"{label} failed", ok=False))
                continue
            if method == "retry_all_failed":
                label = f"retried {result} failed job{'s' if result != 1 else ''}"
            self.post_message(ActionDone(label, ok=True))

    def on_action_done(self, message: ActionDone) -> None:
        self.notify(message.text, severity="information" if message.ok else "error",
                    timeout=3 if message.ok else 8)
        self._start_poll()

    def _assume(self, job_id: str | None = None, /, **changes: Any) -> None:
        """Take an asked change as done until the next poll says otherwise, so a key pressed
        twice before that poll acts on the new state (p p pauses and resumes; + + goes two
        levels) instead of repeating the first request."""
        if job_id is None:
            self.snapshot = dataclasses.replace(self.snapshot, **changes)
        else:
            jobs = tuple(dataclasses.replace(j, **changes) if j.id == job_id else j
                         for j in self.snapshot.jobs)
            self.snapshot = dataclasses.replace(self.snapshot, jobs=jobs)
        self._refresh_keys()

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
        self._assume(job.id, priority=level)
        self._act(f"{job.id} priority {level}", "set_priority", job.id, level)

    def action_priority_top(self) -> None:
        job = self._job_action("priority_top")
        if job is not None:
            self._assume(job.id, priority="high")
            self._act(f"{job.id} priority high", "set_priority", job.id, "high")

    def action_hold(self) -> None:
        job = self._job_action("hold")
        if job is None:
            return
        if job.status == "held":
            self._assume(job.id, status="queued")
            self._act(f"{job.id} released", "release", job.id)
        else:
            self._assume(job.id, status="held")
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
        self._assume(paused=paused)
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

    def action_follow_log(self) -> None:
        job = self._job_action("follow_log")
        if job is not None:
            self.push_screen(JobDetailScreen(job, self.client.job_log, self.poll_interval,
                                             follow=self.client.follow_log))

    def action_lineages(self) -> None:
        from trainconsole.console.widgets.lineage_view import LineageScreen

        self.push_screen(LineageScreen(self.client.lineages))

    def action_export(self) -> None:
        job = self._job_action("export")
        if job is not None:
            self._find_adapter(job)

    @work(thread=True, exit_on_error=False, group="export")
    def _find_adapter(self, job: JobRow) -> None:
        try:
            adapter = self.client.job_adapter(job.id)
            destination = self.client.export_destination(adapter) if adapter is not None else None
        except Exception as exc:  # noqa: BLE001 - an unreadable adapters folder is a line
            self.post_message(ExportAsked(job, None, None, f"cannot read the adapters: {exc}"))
            return
        problem = "" if adapter is not None else (
            f"{job.id} has no published adapter (a job publishes one when it finishes)")
        self.post_message(ExportAsked(job, adapter, destination, problem))

    def on_export_asked(self, message: ExportAsked) -> None:
        from trainconsole.console.widgets.export_dialog import ExportDialog

        adapter, destination = message.adapter, message.destination
        if adapter is None or destination is None:
            self.notify(message.problem, severity="warning", timeout=5)
            return

        def answered(request: ExportRequest | None) -> None:
            if request is not None:
                what = "merging" if request.merge else "exporting"
                self.notify(f"{what} {adapter.name} to {request.out} …", timeout=3)
                self._export(adapter.name, request)

        self.push_screen(ExportDialog(message.job.id, adapter.name, adapter.lineage, destination), answered)

    def _export(self, adapter: str, request: ExportRequest) -> None:
        # A plain daemon thread, not a worker: quitting must not wait minutes for a merge (the
        # app's executor is joined on exit). The export process goes on and finishes alone.
        threading.Thread(target=self._run_export, args=(adapter, request), name="export", daemon=True).start()

    def _run_export(self, adapter: str, request: ExportRequest) -> None:
        from trainconsole.console.exporting import ExportResult

        try:
            result = self.client.export(adapter, request.out, request.merge)
        except Exception as exc:  # noqa: BLE001 - shown as the notice; the console goes on
            result = ExportResult(False, f"export of {adapter} failed: {exc}")
        if self.is_running:
            self.post_message(ExportDone(result))

    def on_export_done(self, message: ExportDone) -> None:
        result = message.result
        self.notify(result.line, title="export" if result.ok else "export failed",
                    severity="information" if result.ok else "error", timeout=10 if result.ok else 20)

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
        self._fit_rows()
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
            key = next((a.key for a in alerts.alerts if a.unread), None)  # the top one shown
        if key is None:
            self.notify("no unacknowledged alert", timeout=2)
            return
        self.client.acknowledge([key])
        self._start_poll()

    def action_acknowledge_all(self) -> None:
        # Every alert read, also those past the rows the panel holds (the header counts them).
        if self.snapshot.alert_counts()[0]:
            self.client.acknowledge_all()
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
