"""The one event schema: JSON lines, appended by the daemon and the worker, tailed by consoles.

Every line is an object with ``v`` (schema version), ``t`` (wall-clock seconds, for display only:
durations are measured with monotonic clocks elsewhere) and ``type``, one of ``EVENT_TYPES``.

- ``job``: ``job_id``, ``status``, optional ``reason``
- ``step``: ``job_id``, ``step``, ``max_steps``, ``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``,
  optional ``epoch``
- ``eval``: ``job_id``, ``step``, ``eval_loss``, optional ``accuracy``, ``think_share``
- ``alert``: ``case`` (1-80 or null), ``severity`` (info|warning|critical), ``message``,
  optional ``job_id``, ``key`` (names the condition: a repeat with the same key replaces the
  earlier alert in a console), ``resolved`` (true: the condition under this key is over, so the
  alert stands settled rather than unread)
- ``resource``: ``ram_used_mb``, ``ram_total_mb``, ``swap_used_mb``, ``disk_free_mb``, ``gpus``
- ``log``: ``level``, ``message``, optional ``job_id``

Writers append whole lines and flush, but never fsync: fsync belongs to checkpoints, and an
fsync per step costs about a millisecond. A reader skips a torn last line (a crash mid-write)
and resumes from a byte offset, so any number of consoles can tail at once; a reader follows a
rotation of the file (``EventTail``, ``rotated``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

import orjson

from trainconsole.engine import fsio

SCHEMA_VERSION: Final = 1
EVENT_TYPES: Final = frozenset({"job", "step", "eval", "alert", "resource", "log"})
SEVERITIES: Final = ("info", "warning", "critical")
ROTATED_SUFFIX: Final = ".1"
# A log's first bytes, kept with its inode to know it again (an inode freed by a rotation is reused
# by the next new file). 64 bytes ended just before a step event's step number, so two logs begun
# in the same millisecond looked alike; 256 hold the whole first line of nearly every event.
HEAD_BYTES: Final = 256


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
    """Append-only writer. One ``write`` per event, whole lines, flushed.

    ``max_bytes``: once the file reaches it, it is renamed to ``rotated(path)`` (replacing the one
    before) and a new one begun, so a log written for months stays under twice that size. Readers
    follow the rename (``EventTail``). Several processes may append to one log (the engine and
    the command line's store); one that rotates holds an ``flock`` on the file and rotates only
    while the path still names the file it has open, so two never rotate the same file twice; a
    writer whose file was rotated by another reopens the path at its next event.
    """

    def __init__(self, path: Path, max_bytes: int | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] | None = None
        self.rotations = 0

    def _handle(self) -> IO[bytes]:
        if self._fh is None or self._fh.closed:
            self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held for the log's life
        return self._fh

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = make_event(type_, **fields)
        fh = self._handle()
        if self.max_bytes is not None and not self._current(fh):
            self.close()  # another writer rotated it: append to the new file
            fh = self._handle()
        fh.write(orjson.dumps(event) + b"\n")
        if self.max_bytes is not None and fh.tell() >= self.max_bytes:
            self._rotate(fh)
        return event

    def _current(self, fh: IO[bytes]) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        own = os.fstat(fh.fileno())
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def _rotate(self, fh: IO[bytes]) -> None:
        import fcntl

        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            if self._current(fh):
                fsio.move(self.path, rotated(self.path))
                self.rotations += 1
        except OSError:
            return  # a log that cannot rotate (a full disk) keeps growing; the events still count
        finally:
            self.close()  # the lock goes with the descriptor; the next event opens the new file

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


def alert_key(event: dict[str, Any]) -> str:
    """The condition an alert names: its ``key``, or for one written without a key, its own time,
    case, job and words (so it is one row of its own)."""
    key = event.get("key")
    if key:
        return str(key)
    return f"{event.get('t')}|{event.get('case')}|{event.get('job_id')}|{event.get('message', '')}"


def alert_id(key: str) -> str:
    """The short name an operator types for an alert (``trainconsole ack a1b2c3d4``): stable for
    its key, so every console and the command line agree on it."""
    import hashlib

    return "a" + hashlib.blake2s(key.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


def rotated(path: Path) -> Path:
    """Where a rotation moves a log: ``events.jsonl`` becomes ``events.jsonl.1`` and writing goes
    on in a new ``events.jsonl``. ``EventTail`` follows exactly this rename."""
    return path.with_name(path.name + ROTATED_SUFFIX)


class EventTail:
    """Reads new complete lines from a byte offset. Torn or garbled lines never raise.

    No file handle is held between reads (a daemon tails one log per job, thousands over months),
    so a reader knows its file by identity (device, inode) instead:

    - Rotation: when the path names another file than the one being read, the old one is looked
      for under ``rotated(path)``; if it is there (same identity), it is read on from the offset
      to its end, then the new file from 0. So a writer that rotates by renaming ``events.jsonl``
      to ``events.jsonl.1`` and opening a new one loses no event for a reader that keeps polling.
      If the old file is gone too (rotated twice between reads, or deleted), the new file is read
      from 0 and ``lost`` counts it.
    - Truncation in place (copy-and-truncate): a file shorter than the offset is read from 0.
    - ``from_end``: start ``window`` bytes before the end, from the first whole line there, so a
      long log's reader sees its present at once (the console's cold start); ``stop`` bounds a
      reader to the bytes before a given offset and ``align`` starts it at the first whole line
      after its offset (the same log's older part, read later in bites).
    """

    def __init__(self, path: Path, offset: int = 0, max_bytes: int = 4 << 20, *,
                 stop: int | None = None, align: bool = False, only: bytes = b"") -> None:
        self.path = path
        # Lines without these bytes are passed over unparsed: a reader that wants one type of event
        # (``trainconsole ack``: the alerts) crosses a 100k-step log without decoding its steps.
        self.only = only
        self.offset = offset
        self.max_bytes = max_bytes
        self.stop = stop
        self.skipped = 0
        self.lost = 0  # rotations whose old file could not be finished
        self.bytes_read = 0  # bytes taken from disk so far (the console's cost, for tests and bench)
        self.identity: tuple[int, int] | None = None
        self.head = b""  # the file's first bytes, with ``identity`` what says it is the same file
        # ``align``: the offset may fall inside a line, so reading starts after the next newline.
        self._align = align and offset > 0
        self.began_at: int | None = None if self._align else offset  # the first whole line read

    @classmethod
    def from_end(cls, path: Path, window: int, max_bytes: int = 4 << 20) -> EventTail:
        try:
            st = os.stat(path)
        except OSError:
            return cls(path, 0, max_bytes)
        tail = cls(path, max(0, st.st_size - window), max_bytes, align=True)
        tail.identity = (st.st_dev, st.st_ino)  # the first bytes are taken at the first read
        return tail

    @property
    def done(self) -> bool:
        """A bounded reader (``stop``) has read up to its stop, or lost its file."""
        return self.stop is not None and (self.offset >= self.stop or self.lost > 0)

    def _is_ours(self, fh: IO[bytes]) -> bool:
        """Whether an open file is the one being read. An inode number alone can be reused by a
        new file once the old one is deleted, so the file's first bytes must match too."""
        st = os.fstat(fh.fileno())
        if (st.st_dev, st.st_ino) != self.identity:
            return False
        return not self.head or os.pread(fh.fileno(), len(self.head), 0) == self.head

    def _open(self) -> tuple[IO[bytes] | None, bool]:
        """(the file to read, whether it is the rotated-away old one)."""
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed by the caller
        except FileNotFoundError:
            fh = None
        if fh is not None:
            if self.identity is None or self._is_ours(fh):
                if self.identity is None:
                    st = os.fstat(fh.fileno())
                    self.identity, self.head = (st.st_dev, st.st_ino), b""
                return fh, False
        elif self.identity is None:
            return None, False
        try:
            old = open(rotated(self.path), "rb")  # noqa: SIM115 - closed by the caller
            if self._is_ours(old):
                if fh is not None:
                    fh.close()
                return old, True
            old.close()
        except FileNotFoundError:
            pass
        if fh is None:
            return None, False
        # Our file is gone without a trace: what it held after the offset is lost.
        self.lost += 1
        if self.stop is not None:
            fh.close()
            return None, False
        st = os.fstat(fh.fileno())
        self.identity, self.head, self.offset, self._align = (st.st_dev, st.st_ino), b"", 0, False
        return fh, False

    def read_new(self) -> list[dict[str, Any]]:
        if self.done:
            return []
        fh, old = self._open()
        if fh is None:
            return []
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if not old and len(self.head) < HEAD_BYTES:
                self.head = os.pread(fh.fileno(), HEAD_BYTES, 0)
            if size < self.offset:  # truncated in place: start over
                self.offset, self._align = 0, False
                self.began_at = self.began_at if self.began_at is not None else 0
            limit = size if self.stop is None else min(size, self.stop)
            start = self.offset - 1 if self._align else self.offset
            fh.seek(start)
            chunk = fh.read(max(0, min(self.max_bytes, limit - start)))
        self.bytes_read += len(chunk)
        if self._align:
            first = chunk.find(b"\n")
            if first < 0:  # inside one long line still: skip what was read of it
                self.offset = start + len(chunk)
                return []
            self._align = False
            self.offset = self.began_at = start + first + 1
            chunk = chunk[first + 1:]
        end = chunk.rfind(b"\n")
        events = self._parse(chunk[: end + 1]) if end >= 0 else []
        self.offset += end + 1
        if old and self.stop is None and self.offset + (len(chunk) - end - 1) >= size:
            # The rotated file is read to its end (a torn last line there will never be finished):
            # go on with the new file from its start.
            self.identity, self.offset = None, 0
            if not events:
                return self.read_new()
        return events

    def _parse(self, data: bytes) -> list[dict[str, Any]]:
        events = []
        only = self.only
        for line in data.split(b"\n"):
            if not line.strip() or (only and only not in line):
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


def read_all(path: Path, *, only: bytes = b"") -> Iterator[dict[str, Any]]:
    """Every event in the file; with ``only``, just those whose line holds those bytes (the
    caller still checks each event's type: the bytes may also stand in a message)."""
    tail = EventTail(path, only=only)
    while True:
        batch = tail.read_new()
        if not batch:
            return
        yield from batch
