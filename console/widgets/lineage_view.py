"""`L`: the lineages and their adapters (job, step, eval loss, parent), the newest of each marked,
as ``trainconsole adapters`` lists them. Read off the UI thread through the client (the adapters
folder, torch-free); escape closes. Sized for 80x24: one line per adapter, scrolling when long."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from trainconsole.engine.adapters import Lineage


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _parent(parent: str | None) -> str:
    """The parent adapter by its folder name (lineage.json may hold a path), "-" for the base."""
    if not parent:
        return "- (base)"
    return parent.rstrip("/").rsplit("/", 1)[-1]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def lineage_text(groups: list[Lineage], width: int = 72) -> Text:
    """One block per lineage: a heading (base model, count, newest), then its adapters oldest
    first, the one its pointer names marked with * (what the lineage's next job continues).
    Columns line up across lineages; the parent, last, is clipped to ``width``."""
    if not groups:
        return Text("no adapters yet: a job publishes one when it finishes", style="dim")
    every = [a for g in groups for a in g.adapters]
    name_w = min(24, max(7, *(len(a.name) for a in every)))
    job_w = min(12, max(3, *(len(a.job_id) for a in every)))
    head = f"  {'adapter':<{name_w}}  {'job':<{job_w}}  {'step':>7}  {'eval loss':>9}  parent"
    parent_w = max(8, width - len(head) + len("parent"))
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append(head + "\n", style="bold")
    for i, group in enumerate(groups):
        count = f"{len(group.adapters)} adapter{'s' if len(group.adapters) != 1 else ''}"
        newest = group.latest.name if group.latest is not None else "none"
        if i:
            out.append("\n")
        title = f"lineage {group.name}"
        about = f"base {group.base_model or '?'}, {count}, newest {newest}"
        out.append(_clip(title, width), style="bold cyan")
        # A long name (a sweep's lineage names its values) puts the rest on a line of its own.
        out.append((f"  {about}" if len(title) + 2 + len(about) <= width
                    else "\n  " + _clip(about, width - 2)) + "\n", style="dim")
        for adapter in group.adapters:
            latest = group.latest is not None and adapter.name == group.latest.name
            step = "-" if adapter.step is None else str(adapter.step)
            out.append("* " if latest else "  ", style="bold green")
            out.append(f"{_clip(adapter.name, name_w):<{name_w}}", style="bold" if latest else "")
            out.append(f"  {_clip(adapter.job_id, job_w):<{job_w}}  {step:>7}  {_loss(adapter.eval_loss):>9}"
                       f"  {_clip(_parent(adapter.parent), parent_w)}\n")
    out.rstrip()
    return out


class LineageScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,L", "close", "close")]

    def __init__(self, read: Callable[[], list[Lineage]]) -> None:
        super().__init__()
        self.read = read

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="lineage-box"):
            yield Static("[b]lineages and adapters[/b]  [dim]* newest: what its next job continues[/dim]",
                         id="lineage-title")
            yield Static("reading the adapters folder …", id="lineage-body")

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="lineages")
    def load(self) -> None:
        try:
            body = lineage_text(self.read())
        except Exception as exc:  # noqa: BLE001 - an unreadable folder is a line, not a crash
            body = Text(f"could not read the adapters: {exc}", style="red")
        self.app.call_from_thread(self._show, body)

    def _show(self, body: Text) -> None:
        if self.is_attached:
            self.query_one("#lineage-body", Static).update(body)

    def action_close(self) -> None:
        self.dismiss(None)
