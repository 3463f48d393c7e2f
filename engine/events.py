"""The one event schema: JSON lines, appended by the daemon and the worker, tailed by consoles.

Every line is an object with ``v`` (schema version), ``t`` (wall-clock seconds, for display only:
durations are measured with monotonic clocks elsewhere) and ``type``, one of ``EVENT_TYPES``.

- ``job``: ``job_id``, ``status``, optional ``reason``
- ``step``: ``job_id``, ``step``, ``max_steps``, ``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``,
  optional ``epoch``
- ``eval``: ``job_id``, ``step``, ``eval_loss``, optional ``accuracy``, ``think_share``
- ``alert``: ``case`` (1-80 or null), ``severity`` (info|warning|critical), ``message``,
  optional ``job_id``, ``key`` (for de-duplication)
- ``resource``: ``ram_used_mb``, ``ram_total_mb``, ``swap_used_mb``, ``disk_free_mb``, ``gpus``
- ``log``: ``level``, ``message``, optional ``job_id``

Writers append whole lines and flush, but never fsync: fsync belongs to checkpoints, and an
fsync per step costs about a millisecond. A reader skips a torn last line (a crash mid-write)
and resumes from a byte offset, so any number of consoles can tail at once.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

import orjson

SCHEMA_VERSION: Final = 1
EVENT_TYPES: Final = frozenset({"job", "step", "eval", "alert", "resource", "log"})
SEVERITIES: Final = ("info", "warning", "critical")


def _clean(value: Any) -> Any:
    """NaN and inf are not JSON; they become strings so a diverged loss is still shown."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def make_event(type_: str, **fields: Any) -> dict[str, Any]:
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}; expected one of {sorted(EVENT_TYPES)}")
    if type_ == "alert" and fields.get("severity") not in SEVERITIES:
        raise ValueError(f"alert severity must be one of {SEVERITIES}, got {fields.get('severity')!r}")
    event: dict[str, Any] = {"v": SCHEMA_VERSION, "t": round(time.time(), 3), "type": type_}
    event.update(_clean(fields))
    return event


class EventLog:
    """Append-only writer. One ``write`` per event, whole lines, flushed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] | None = None

    def _handle(self) -> IO[bytes]:
        if self._fh is None or self._fh.closed:
            self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held for the log's life
        return self._fh

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = make_event(type_, **fields)
        self._handle().write(orjson.dumps(event) + b"\n")
        return event

    def alert(
        self,
        case: int | None,
        message: str,
        *,
        severity: str | None = None,
        job_id: str | None = None,
        key: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        if severity is None:
            severity = default_severity(case)
        return self.emit(
            "alert", case=case, severity=severity, message=message, job_id=job_id, key=key, **extra
        )

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullEventLog(EventLog):
    """Swallows everything, so call sites never branch on whether logging is on."""

    def __init__(self) -> None:
        self.path = Path(os.devnull)
        self._fh = None

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        return make_event(type_, **fields)


def default_severity(case: int | None) -> str:
    if case is None:
        return "warning"
    from trainconsole.engine import catalog  # late: the catalogue is large and only alerts need it

    entry = catalog.CASES.get(case)
    return entry.severity if entry is not None else "warning"


class EventTail:
    """Reads new complete lines from a byte offset. Torn or garbled lines never raise."""

    def __init__(self, path: Path, offset: int = 0, max_bytes: int = 4 << 20) -> None:
        self.path = path
        self.offset = offset
        self.max_bytes = max_bytes
        self.skipped = 0

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < self.offset:  # truncated or replaced: start over
                    self.offset = 0
                fh.seek(self.offset)
                chunk = fh.read(self.max_bytes)
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []  # only a partial line so far: wait for its newline
        self.offset += end + 1
        events = []
        for line in chunk[: end + 1].split(b"\n"):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                self.skipped += 1
                continue
            if isinstance(obj, dict) and obj.get("type") in EVENT_TYPES:
                events.append(obj)
            else:
                self.skipped += 1
        return events


def read_all(path: Path) -> Iterator[dict[str, Any]]:
    tail = EventTail(path)
    while True:
        batch = tail.read_new()
        if not batch:
            return
        yield from batch
