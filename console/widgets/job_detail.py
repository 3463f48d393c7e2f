"""A job's details and its log (report, alerts, steps), on `enter` or `l`; escape goes back.
The log is re-read once a second while open; reading happens off the UI thread.

On `f` the same screen follows the log as ``trainconsole logs -f`` does: the last events first,
then only the lines written since (an offset kept between reads), the view pinned to the end.
Every attempt of a job (retries, restarts) appends to the one log, so following goes through
them; it stops when the operator leaves."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Log, Static

from trainconsole.console.snapshot import JobRow
from trainconsole.console.widgets.footer import KeyFooter


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
    if job.slurm_id is not None:
        lines.append(f"slurm job {job.slurm_id}" + (f" on {job.node}" if job.node else " (not placed yet)"))
    if job.error:
        lines.append(f"[red]last error ({job.error_class or '?'}): {job.error}[/red]")
    return "\n".join(lines)


class JobDetailScreen(Screen[None]):
    BINDINGS = [Binding("escape,q", "back", "back"), Binding("g", "top", "top", show=False),
                Binding("G", "bottom", "end", show=False)]

    def __init__(self, job: JobRow, read_log: Callable[[str], list[str]], poll_interval: float, *,
                 follow: Callable[[str, int | None], tuple[list[str], int]] | None = None) -> None:
        super().__init__()
        self.job = job
        self.read_log = read_log
        self.follow = follow
        self.poll_interval = poll_interval
        self._count = -1
        self._offset: int | None = None

    def _head(self) -> str:
        following = "\n[b]following the log[/b] (escape stops)" if self.follow is not None else ""
        return describe(self.job) + following

    def compose(self) -> ComposeResult:
        yield Static(self._head(), id="detail-head", markup=True)
        yield Log(id="detail-log", highlight=False, max_lines=5000)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="detail")
    def load(self) -> None:
        if self.follow is not None:
            try:
                new, self._offset = self.follow(self.job.id, self._offset)
            except Exception as exc:  # noqa: BLE001 - an unreadable log is a line, not a crash
                new = [f"could not read the log: {exc}"]
            self.app.call_from_thread(self._append, new)
            return
        try:
            lines = self.read_log(self.job.id)
        except Exception as exc:  # noqa: BLE001 - an unreadable log is a line, not a crash
            lines = [f"could not read the log: {exc}"]
        self.app.call_from_thread(self._show, lines)

    def _append(self, new: list[str]) -> None:
        log = self.query_one(Log)
        if self._count < 0 and not new:
            log.write_line("(no events yet)")
        if new:
            log.write_lines(new)
        self._count = max(0, self._count) + len(new)
        log.scroll_end(animate=False)
        if self.is_attached:
            self.set_timer(self.poll_interval, self.load)

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
            self.query_one("#detail-head", Static).update(self._head())

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_top(self) -> None:
        self.query_one(Log).scroll_home(animate=False)

    def action_bottom(self) -> None:
        self.query_one(Log).scroll_end(animate=False)
