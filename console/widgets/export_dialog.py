"""`e`: where to export the selected job's adapter. The folder is proposed (the workspace's
``exports/<lineage>-<job>``) and editable; a checkbox asks for the merged model instead of the
adapter alone. Enter or the Export button answers (folder, merge); escape answers None."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label


@dataclass(frozen=True)
class ExportRequest:
    out: Path
    merge: bool


class ExportDialog(ModalScreen[ExportRequest | None]):
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, job_id: str, adapter: str, lineage: str, destination: Path) -> None:
        super().__init__()
        self.job_id = job_id
        self.adapter = adapter
        self.lineage = lineage
        self.destination = destination

    def compose(self) -> ComposeResult:
        with Vertical(id="export-box"):
            yield Label(f"Export {self.job_id}'s adapter {self.adapter} (lineage {self.lineage}) to a new folder:",
                        id="export-question")
            yield Input(str(self.destination), id="export-out")
            yield Checkbox("merge into the base model (Hugging Face format; torch, minutes)", id="export-merge")
            yield Label("", id="export-problem")
            with Horizontal(id="export-buttons"):
                yield Button("Cancel", id="export-cancel")
                yield Button("Export", id="export-go", variant="primary")

    def on_mount(self) -> None:
        box = self.query_one("#export-out", Input)
        box.focus()
        box.cursor_position = len(box.value)

    def _answer(self) -> None:
        text = self.query_one("#export-out", Input).value.strip()
        if not text:
            self.query_one("#export-problem", Label).update("[red]give a folder to create[/red]")
            return
        self.dismiss(ExportRequest(Path(text).expanduser(), self.query_one("#export-merge", Checkbox).value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._answer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export-go":
            self._answer()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
