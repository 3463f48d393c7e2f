"""The queue: one row per job, keyed by job id. Cells change only when their text changes, rows are
never rebuilt, and a changed cell is the only part of the table sent to the terminal: DataTable's
own ``update_cell`` repaints the whole table, which made a running job's progress cell, changing
every second, about 39% of the console's bytes."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual import events
from textual.coordinate import Coordinate
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

from trainconsole.console.snapshot import JobRow

COLUMNS = (("id", "id"), ("name", "name"), ("prio", "priority"), ("status", "status"),
           ("try", "attempts"), ("progress", "progress"), ("reason", "reason"))
STATUS_STYLE = {"running": "bold green", "queued": "", "held": "yellow", "done": "dim",
                "failed": "bold red", "cancelled": "dim"}
PRIORITY_STYLE = {"high": "bold", "normal": "", "low": "dim"}
SCROLLBAR = 2  # cells a vertical scrollbar takes once more jobs than rows arrive


def cells(job: JobRow, compact: bool = False, reason_width: int = 48) -> tuple[str | Text, ...]:
    """One row. ``compact`` (under 100 columns) trims the name and progress so the reason,
    what an operator reads first for a waiting job, still fits in 80 columns; ``reason_width``
    is the room left for it, so a long one ends in "…" rather than at the terminal's edge."""
    reason = job.reason
    if not reason and job.status == "failed":
        reason = f"{job.error_class}: {job.error}" if job.error_class else job.error
    if reason.startswith(f"{job.status}: "):  # the status column already says it
        reason = reason[len(job.status) + 2:]
    return (
        job.id,
        Text(_clip(job.name, 20 if compact else 32), no_wrap=True),
        Text(job.priority, style=PRIORITY_STYLE.get(job.priority, "")),
        Text(job.status, style=STATUS_STYLE.get(job.status, "")),
        str(job.attempts),
        job.progress_short if compact else job.progress,
        Text(_clip(reason.replace("\n", " "), reason_width), no_wrap=True),
    )


def _plain(cell: str | Text) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def _width(cell: str | Text) -> int:
    return cell.cell_len if isinstance(cell, Text) else Text(cell).cell_len


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class QueueTable(DataTable[str | Text]):
    """Jobs in id order (arrival order), so rows never jump about under the cursor."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)  # type: ignore[arg-type]
        self.filter_text = ""
        self._shown: dict[str, tuple[str | Text, ...]] = {}
        self.on_user_move: Callable[[], None] | None = None
        self.compact = False
        self._restore: str | None = None
        self._jobs: tuple[JobRow, ...] = ()
        self._room = 0
        self._full: dict[str, tuple[JobRow, bool, tuple[str | Text, ...], tuple[int, ...]]] = {}
        self._made: dict[str, tuple[JobRow, int]] = {}  # what each shown row was made from
        self._applied: tuple[object, ...] = ()

    def set_compact(self, compact: bool) -> None:
        """Column widths only grow as cells change: a new width rebuilds the rows once."""
        if compact == self.compact:
            return
        self.compact = compact
        if self._shown:
            self._restore = self.selected_id
            self.clear()
            for column in self.columns.values():
                column.content_width = column.label.cell_len
            self._shown = {}
        self._full = {}
        self._made = {}

    # The operator moving the cursor (keys or mouse) stops the cursor following the running job.
    def _user_moved(self) -> None:
        if self.on_user_move is not None:
            self.on_user_move()

    def action_cursor_up(self) -> None:
        self._user_moved()
        super().action_cursor_up()

    def action_cursor_down(self) -> None:
        self._user_moved()
        super().action_cursor_down()

    def action_page_up(self) -> None:
        self._user_moved()
        super().action_page_up()

    def action_page_down(self) -> None:
        self._user_moved()
        super().action_page_down()

    def action_scroll_top(self) -> None:
        self._user_moved()
        super().action_scroll_top()

    def action_scroll_bottom(self) -> None:
        self._user_moved()
        super().action_scroll_bottom()

    async def _on_click(self, event: events.Click) -> None:
        self._user_moved()
        await super()._on_click(event)

    def on_mount(self) -> None:
        for label, key in COLUMNS:
            self.add_column(label, key=key)

    def reason_room(self, widths: list[tuple[int, ...]]) -> int:
        """Cells left for the reason, the last column, after the others (as wide as they are or
        as the rows of ``widths`` will make them: column widths only grow) and a scrollbar."""
        if self.size.width == 0:  # not laid out yet
            return 48
        used = 0
        for index, column in enumerate(self.columns.values()):
            if column.key.value == "reason":
                continue
            widest = max((row[index] for row in widths), default=0)
            used += max(column.content_width, widest) + 2 * self.cell_padding
        scrollbar = SCROLLBAR if len(widths) + 1 > self.size.height else 0  # +1: the header
        return max(8, self.size.width - used - self.cell_padding - scrollbar)

    def on_resize(self) -> None:
        if self._jobs:
            self.apply(self._jobs)  # cells change only if the reason's room did

    def matches(self, job: JobRow) -> bool:
        if not self.filter_text:
            return True
        needle = self.filter_text.lower()
        return any(needle in part.lower() for part in (job.id, job.name, job.status, job.priority,
                                                        job.reason))

    def _cells(self, job: JobRow) -> tuple[tuple[str | Text, ...], tuple[int, ...]]:
        """A row's cells before the reason is clipped, and their widths; built again only when
        the job changed."""
        cached = self._full.get(job.id)
        if cached is not None and cached[0] == job and cached[1] == self.compact:
            return cached[2], cached[3]
        row = cells(job, self.compact, reason_width=1 << 16)
        widths = tuple(_width(cell) for cell in row)
        self._full[job.id] = (job, self.compact, row, widths)
        return row, widths

    def apply(self, jobs: tuple[JobRow, ...]) -> bool:
        """Bring the table to ``jobs``; True when anything changed."""
        state = (jobs, self.filter_text, self.compact, self.size)
        if state == self._applied and self._restore is None:
            return False  # a quiet poll: nothing to compare
        self._applied = state
        self._jobs = jobs
        # Built whole first: their widths decide the room left for the reason, then clipped to it.
        full = {job.id: self._cells(job) for job in jobs if self.matches(job)}
        for gone in [k for k in self._full if k not in full]:
            del self._full[gone]
        self._room = self.reason_room([widths for _, widths in full.values()])
        changed = False
        for job_id in [k for k in self._shown if k not in full]:
            self.remove_row(job_id)
            del self._shown[job_id]
            changed = True
        out_of_order = False
        for job_id, (full_row, _) in full.items():
            # A row already shown for the same job and room needs nothing compared.
            made = (self._full[job_id][0], self._room)
            if job_id in self._shown and self._made.get(job_id) == made:
                continue
            self._made[job_id] = made
            row = (*full_row[:-1], Text(_clip(_plain(full_row[-1]), self._room), no_wrap=True))
            old = self._shown.get(job_id)
            if old is None:
                # Rows come back after a filter is cleared: appended, then put back in id order.
                out_of_order = out_of_order or any(k > job_id for k in self._shown)
                self.add_row(*row, key=job_id)
                changed = True
            else:
                for (_, col), new, before in zip(COLUMNS, row, old, strict=True):
                    if new != before:
                        self._set_cell(job_id, col, new)
                        changed = True
            self._shown[job_id] = row
        if out_of_order:
            self.sort("id")
        if self._restore is not None and self._restore in self._shown:
            self.move_cursor(row=self.get_row_index(self._restore), animate=False)
        self._restore = None
        return changed

    def _set_cell(self, job_id: str, col: str, value: str | Text) -> None:
        column = self.columns[ColumnKey(col)]
        if _width(value) > column.content_width:
            # The column widens: every row moves, so the whole table is redrawn (and laid out).
            self.update_cell(job_id, col, value, update_width=True)
            return
        # What update_cell stores, without its refresh of the whole table: only this cell is
        # marked dirty, so only its cells are sent to the terminal.
        row_key = RowKey(job_id)
        self._data[row_key][column.key] = value
        self._update_count += 1  # the render caches are keyed by it
        self.refresh_coordinate(Coordinate(self.get_row_index(row_key), self.get_column_index(column.key)))

    def shows(self, job_id: str | None) -> bool:
        return job_id is not None and job_id in self._shown

    @property
    def selected_id(self) -> str | None:
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:  # noqa: BLE001 - an empty or shrinking table has no selection
            return None
        return key.value
