"""A job's details and its log (report, alerts, steps), on `enter` or `l`; escape goes back.
The log is re-read once a second while open; reading happens off the UI thread."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Log, Static

from trainconsole.console.snapshot import JobRow


def describe(job: JobRow) -> str:
    def stamp(t: float | None) -> str:
        return "-" if t is None else time.strftime("%m-%d %H:%M:%S", time.localtime(t))

    lines = [
        f"[b]{job.id}[/b]  {job.name}",
        f"status {job.status}   priority {job.priority}   attempts {job.attempts}   progress {job.progress}",
        f"created {stamp(job.created_at)}   started {stamp(job.started_at)}   finished {stamp(job.finished_at)}",
    ]
    if job.reason:
        lines.append(f"reason: {job.reason}")
    if job.error:
        lines.append(f"[red]last error ({job.error_class or '?'}): {job.error}[/red]")
    return "\n".join(lines)


class JobDetailScreen(Screen[None]):
    BINDINGS = [Binding("escape,q", "back", "back"), Binding("g", "top", "top", show=False),
                Binding("G", "bottom", "end", show=False)]

    def __init__(self, job: JobRow, read_log: Callable[[str], list[str]], poll_interval: float) -> None:
        super().__init__()
        self.job = job
        self.read_log = read_log
        self.poll_interval = poll_interval
        self._count = -1

    def compose(self) -> ComposeResult:
        yield Static(describe(self.job), id="detail-head", markup=True)
        yield Log(id="detail-log", highlight=False, max_lines=5000)
        yield Footer()

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="detail")
    def load(self) -> None:
        try:
            lines = self.read_log(self.job.id)
        except Exception as exc:  # noqa: BLE001 - an unreadable log is a line, not a crash
            lines = [f"could not read the log: {exc}"]
        self.app.call_from_thread(self._show, lines)

    def _show(self, lines: list[str]) -> None:
        log = self.query_one(Log)
        if len(lines) != self._count:
            if self._count <= 0 or len(lines) < self._count:
                log.clear()
                log.write_lines(lines or ["(no events yet)"])
            else:
                log.write_lines(lines[self._count:])
            self._count = len(lines)
        if self.is_attached:
            self.set_timer(self.poll_interval, self.load)

    def update_job(self, job: JobRow | None) -> None:
        if job is not None and job != self.job:
            self.job = job
            self.query_one("#detail-head", Static).update(describe(job))

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_top(self) -> None:
        self.query_one(Log).scroll_home(animate=False)

    def action_bottom(self) -> None:
        self.query_one(Log).scroll_end(animate=False)
