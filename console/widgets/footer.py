"""The key footer, without Textual's restyling of every key twice each time it is rebuilt.

Textual's ``FooterKey`` starts compact and is then bound to the footer's (not compact at 100
columns and more): each key added and removed its ``-compact`` class on mount, two style passes
over the key and its children, about forty per rebuild. The footer is rebuilt whenever the keys
that apply change (the first snapshot, a cursor on another job), so at start-up this was the
largest single cost between the imports and the first frame. Here each key starts with the
footer's own setting, so mounting it changes nothing.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterKey


class KeyFooter(Footer):
    def compose(self) -> ComposeResult:
        compact = self.compact
        for widget in super().compose():
            # The palette's key is not bound to the footer: it stays compact, as Textual draws it.
            if isinstance(widget, FooterKey) and not widget.has_class("-command-palette"):
                widget.set_reactive(FooterKey.compact, compact)
                widget.set_class(compact, "-compact", update=False)
            yield widget
