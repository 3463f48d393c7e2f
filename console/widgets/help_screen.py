"""`?`: every key, from the keymap (mutating ones left out in a read-only console)."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from trainconsole.console.keymap import help_rows


def help_table(readonly: bool) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for key, text, _mutating in help_rows(readonly):
        table.add_row(key, text)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss_help", "close")]

    def __init__(self, readonly: bool) -> None:
        super().__init__()
        self.readonly = readonly

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static("[b]trainconsole keys[/b]" + ("  (read-only)" if self.readonly else ""))
            yield Static(help_table(self.readonly))
            yield Static(f"[dim]q quits the console only: training goes on. {self._note()}[/dim]",
                         id="help-note")

    def _note(self) -> str:
        if self.readonly:
            return "This console is read-only: no key changes the queue or the engine."
        return "Priority, hold and retry apply to the selected job."

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
