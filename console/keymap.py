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
    long: str = ""  # what it does, for the help screen and the palette
    group: str = ""  # keys shown together under this one word in the footer (80 columns are few)


KEYMAP: tuple[Key, ...] = (
    Key("question_mark", "help", "help", shown_as="?", long="every key"),
    Key("q", "quit", "quit", long="quit the console; the engine keeps training"),
    Key("enter", "detail", "detail", long="the selected job's details and log"),
    Key("l", "detail", "log", show=False, long="the selected job's details and log"),
    Key("plus,equals_sign", "priority_up", "prio+", mutating=True, shown_as="+",
        long="raise the selected job's priority", group="prio"),
    Key("minus", "priority_down", "prio-", mutating=True, shown_as="-", long="lower the selected job's priority",
        group="prio"),
    Key("t", "priority_top", "prio top", mutating=True, show=False,
        long="give the selected job high priority"),
    Key("h", "hold", "hold", mutating=True, long="hold the selected queued job, or release a held one"),
    Key("r", "retry", "retry", mutating=True, long="retry the selected failed or cancelled job"),
    Key("R", "retry_all", "retry all failed", mutating=True, show=False, long="retry every failed job"),
    Key("c", "cancel", "cancel", mutating=True, long="cancel the selected job (asks first)"),
    Key("p", "pause", "pause", mutating=True,
        long="pause or resume the queue: the running job finishes, no new one starts"),
    Key("S", "stop_engine", "stop engine", mutating=True, show=False,
        long="stop the engine (asks first; the running job checkpoints and is requeued)"),
    Key("slash", "filter", "filter", shown_as="/", long="filter the queue by id, name, status or reason"),
    Key("a", "acknowledge", "ack alert", show=False, long="acknowledge the selected alert, else the top one"),
    Key("A", "acknowledge_all", "ack all alerts", show=False, long="acknowledge every alert"),
    Key("y", "log_y", "log-y", show=False, long="toggle a log scale on the loss plot"),
    Key("f", "follow_log", "follow log", show=False,
        long="follow the selected job's log as it is written (through retries, until it ends)"),
    Key("F", "follow", "follow running job", show=False, long="move the cursor to the running job and follow it"),
    Key("L", "lineages", "lineages", show=False,
        long="the lineages and their adapters (job, step, eval loss, parent), the newest marked"),
    Key("e", "export", "export adapter", mutating=True, show=False,
        long="export the selected job's adapter, or the base model with it merged, to a new folder"),
    Key("j", "cursor_down", "down", show=False, long="next job"),
    Key("k", "cursor_up", "up", show=False, long="previous job"),
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
    "follow_log": ("queued", "held", "running", "done", "failed", "cancelled"),
    # Any state: a job requeued after it published still has its adapter; one without says so.
    "export": ("queued", "held", "running", "done", "failed", "cancelled"),
}


def bindings() -> list[Binding | tuple[str, str] | tuple[str, str, str]]:
    groups = {name: Binding.Group(name) for name in {k.group for k in KEYMAP if k.group}}
    return [Binding(k.keys, k.action, k.description, show=k.show, key_display=k.shown_as or None,
                    group=groups.get(k.group)) for k in KEYMAP]


def help_rows(readonly: bool) -> list[tuple[str, str, bool]]:
    """(key as shown, what it does, mutating) for the help screen, one row per action."""
    rows: list[tuple[str, str, bool]] = []
    seen: set[str] = set()
    for k in KEYMAP:
        if readonly and k.mutating:
            continue
        shown = k.shown_as or k.keys.split(",")[0]
        if k.action in seen:
            rows[-1] = (f"{rows[-1][0]}, {shown}", rows[-1][1], rows[-1][2])
            continue
        seen.add(k.action)
        rows.append((shown, k.long or k.description, k.mutating))
    rows.append(("ctrl+p", "command palette", False))
    rows.append(("tab", "to the alerts and back (enter on an alert shows it whole)", False))
    rows.append(("escape", "clear filter / close", False))
    return rows
