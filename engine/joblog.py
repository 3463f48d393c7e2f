"""A job's log as people read it: the events of ``runs/<job>/events.jsonl`` as text lines, the
last N of them without reading the whole file, and following the log until the job ends.

Following survives worker restarts by construction: every attempt of a job (a retry, an OOM rung,
a requeue after a kill or an engine restart) appends to the same file, and the follower decides
that the job is over from the store, not from the file or a process. It reads the file once more
after it sees the end, so nothing written before the job's final state is missed. Used by
``trainconsole logs`` and, through the same functions, by the console."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from trainconsole.engine.events import EventTail

FINAL = ("done", "failed", "cancelled")
_BLOCK = 64 << 10


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    return float(value) if isinstance(value, int | float) else None


def format_event(event: dict[str, Any], *, dated: bool = False) -> str:
    """One event as one line of text (a log message may hold newlines: stacks of a hung worker)."""
    t = _num(event.get("t")) or 0.0
    stamp = time.strftime("%Y-%m-%d %H:%M:%S" if dated else "%H:%M:%S", time.localtime(t))
    kind = event.get("type")
    if kind == "step":
        return (f"{stamp} step {event.get('step')}/{event.get('max_steps')} loss {event.get('loss')} "
                f"lr {event.get('lr')} grad {event.get('grad_norm')}")
    if kind == "eval":
        return f"{stamp} eval step {event.get('step')} eval_loss {event.get('eval_loss')}"
    if kind == "alert":
        return (f"{stamp} ALERT {event.get('severity')} case {event.get('case') or '-'}: "
                f"{event.get('message')}")
    if kind == "job":
        return f"{stamp} job {event.get('status')} {event.get('reason') or ''}".rstrip()
    if kind == "log":
        return f"{stamp} {event.get('level', 'info')}: {event.get('message')}"
    return f"{stamp} {kind}"


def _start_of_last(fh: BinaryIO, size: int, lines: int) -> int:
    """Offset of the first of the last ``lines`` complete lines, reading backwards in blocks."""
    pos = size
    seen = 0
    while pos > 0:
        step = min(_BLOCK, pos)
        pos -= step
        fh.seek(pos)
        block = fh.read(step)
        end = len(block)
        while True:
            i = block.rfind(b"\n", 0, end)
            if i < 0:
                break
            if pos + i + 1 < size:  # a newline that ends a line (not the file's last byte)
                seen += 1
                if seen > lines:
                    return pos + i + 1
            end = i
    return 0


def read_last(path: Path, lines: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """The last ``lines`` events of the log (all when None) and the offset to follow it from."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            start = 0 if lines is None else _start_of_last(fh, size, max(0, lines))
    except FileNotFoundError:
        return [], 0
    tail = EventTail(path, offset=start, max_bytes=max(1, size - start) + 1)
    events = tail.read_new() if size > start else []
    if lines is not None and len(events) > lines:  # a garbled line was counted but not kept
        events = events[len(events) - lines:]
    return events, tail.offset if size > start else start


def follow(path: Path, offset: int, status: Callable[[], str | None], *, poll_s: float = 0.25,
           sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, Any]]:
    """New events from ``offset`` on, until ``status()`` says the job is final (or gone)."""
    tail = EventTail(path, offset=offset)
    while True:
        state = status()  # asked before the read: whatever was written before the end is read
        batch = tail.read_new()
        yield from batch
        if batch:
            continue
        if state is None or state in FINAL:
            return
        sleep(poll_s)
