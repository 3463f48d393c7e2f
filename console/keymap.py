"""The console's keys, as data: the footer, the `?` screen, the command palette and the read-only
filter all read this one table.

Habits from k9s and pueue: `?` help, `/` filter, `enter` detail, `l` logs, `ctrl+p` palette.
Destructive actions sit on plain letters and ask first (default No); none is on a ctrl-chord that
vim or tmux users press to move around.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    keys: str  # Textual key names, comma-separated
    action: str
    description: str
    mutating: bool = False  # hidden and refused in --readonly
    show: bool = True  # in the footer (everything is in `?` and the palette)
    shown_as: str = ""  # the key as the help screen prints it


KEYMAP: tuple[Key, ...] = (
    Key("question_mark", "help", "help", shown_as="?"),
    Key("q", "quit", "quit"),
    Key("enter", "detail", "detail"),
    Key("l", "detail", "log", show=False),
    Key("plus,equals_sign", "priority_up", "prio+", mutating=True, shown_as="+"),
    Key("minus", "priority_down", "prio-", mutating=True, shown_as="-"),
    Key("t", "priority_top", "prio top", mutating=True, show=False),
    Key("h", "hold", "hold", mutating=True),
    Key("r", "retry", "retry", mutating=True),
    Key("R", "retry_all", "retry all failed", mutating=True, show=False),
    Key("c", "cancel", "cancel", mutating=True),
    Key("p", "pause", "pause", mutating=True),
    Key("S", "stop_engine", "stop engine", mutating=True, show=False),
    Key("slash", "filter", "filter", shown_as="/"),
    Key("a", "acknowledge", "ack alert", show=False),
    Key("A", "acknowledge_all", "ack all alerts", show=False),
    Key("y", "log_y", "log-y", show=False),
    Key("f", "follow", "follow running job", show=False),
    Key("j", "cursor_down", "down", show=False),
    Key("k", "cursor_up", "up", show=False),
)

MUTATING_ACTIONS = frozenset(k.action for k in KEYMAP if k.mutating)
# Actions that make sense only for a selected job in a given state.
JOB_STATES: dict[str, tuple[str, ...]] = {
    "priority_up": ("queued", "held"),
    "priority_down": ("queued", "held"),
    "priority_top": ("queued", "held"),
    "hold": ("queued", "held"),
    "retry": ("failed", "cancelled"),
    "cancel": ("queued", "held", "running"),
    "detail": ("queued", "held", "running", "done", "failed", "cancelled"),
}


def bindings() -> list[Binding | tuple[str, str] | tuple[str, str, str]]:
    return [Binding(k.keys, k.action, k.description, show=k.show,
                    key_display=k.shown_as or None) for k in KEYMAP]


def help_rows(readonly: bool) -> list[tuple[str, str, bool]]:
    """(key as shown, what it does, mutating) for the help screen, one row per action."""
    rows: list[tuple[str, str, bool]] = []
    seen: set[tuple[str, str]] = set()
    for k in KEYMAP:
        if readonly and k.mutating:
            continue
        shown = k.shown_as or k.keys.split(",")[0]
        if (k.action, k.description) in seen:
            continue
        seen.add((k.action, k.description))
        rows.append((shown, k.description, k.mutating))
    rows.append(("ctrl+p", "command palette", False))
    rows.append(("escape", "clear filter / close", False))
    return rows
