"""The one time format of every ``--json`` output: ISO 8601 with the local UTC offset and
milliseconds, e.g. ``2025-06-01T14:03:07.250+02:00`` (``datetime.fromisoformat`` reads it back;
so do ``date -d`` and JavaScript's ``Date``). docs/contracts.md states it.

Inside the engine times stay wall-clock seconds (the store's columns, the event logs' ``t``): they
are compared and sorted there, and only turned into text at the edge, here."""

from __future__ import annotations

import datetime as _dt


def iso(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 text with the local offset; None stays None."""
    if t is None:
        return None
    try:
        return _dt.datetime.fromtimestamp(float(t)).astimezone().isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):  # a garbled value in a hand-edited file
        return None


def normalize(text: str | None) -> str | None:
    """ISO text written elsewhere (another offset, other precision) in the one format."""
    if not text:
        return None
    try:
        when = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.astimezone()  # a naive time is local, as time.strftime wrote it
    return iso(when.timestamp())
