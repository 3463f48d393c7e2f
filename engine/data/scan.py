"""Reading a JSON-lines file fast and in bounded memory: big blocks split on b"\\n" only, a cap on
one line's size, a fast path for the common valid record, and the same scan run over byte ranges
in several processes when the file is large.

Why not ``for line in file``: it would hold a gigabyte line in memory, and ``str.splitlines``
would also break records on U+2028 and friends, which are legal inside JSON strings. Why not
``json.loads`` per line: at a few microseconds per record the standard library is the
bottleneck; orjson is several times faster, and the record checks (engine/data_records.py) have
a fast path for records of the usual shape that keeps the work per record in C."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from trainconsole.engine.data.records import (
    Example,
    Message,
    RecordError,
    all_common,
    diagnose,
    fast_messages,
    parse_record,
)

BLOCK = 1 << 16  # small enough that a block's parsed records are still in cache when checked
BOM = b"\xef\xbb\xbf"
TOKEN_BATCH = 256

# Token counts per example, in the order given (the configured model's chat template applied).
TokenCounter = Callable[[Sequence[Example]], Sequence[int]]
Progress = Callable[[int], None]


@dataclass
class TokenTally:
    max_length: int
    examples: int = 0
    total: int = 0
    shortest: int = 0
    longest: int = 0
    over: int = 0

    def add(self, counts: Sequence[int]) -> None:
        for n in counts:
            if self.examples == 0 or n < self.shortest:
                self.shortest = n
            if n > self.longest:
                self.longest = n
            if n > self.max_length:
                self.over += 1
            self.total += n
            self.examples += 1

    def merge(self, other: TokenTally) -> None:
        if other.examples == 0:
            return
        if self.examples == 0 or other.shortest < self.shortest:
            self.shortest = other.shortest
        self.longest = max(self.longest, other.longest)
        self.over += other.over
        self.total += other.total
        self.examples += other.examples


@dataclass
class Tally:
    """What one scan of a byte range found; ranges merge in file order into the file's tally."""

    max_problems: int
    lines: int = 0
    valid: int = 0
    invalid: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    problems: list[tuple[int, str, str]] = field(default_factory=list)  # (line, reason, detail)
    start: str = ""  # what the file opens with (see _file_start; range 0 only)
    tokens: TokenTally | None = None

    def bad(self, line: int, reason: str, detail: str) -> None:
        self.invalid += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.problems) < self.max_problems:
            self.problems.append((line, reason, detail))

    def merge(self, other: Tally) -> None:
        """Append a later range's tally; its line numbers start after ours."""
        offset = self.lines
        room = self.max_problems - len(self.problems)
        self.problems += [(line + offset, r, d) for line, r, d in other.problems[:max(room, 0)]]
        self.lines += other.lines
        self.valid += other.valid
        self.invalid += other.invalid
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        if other.tokens is not None:
            if self.tokens is None:
                self.tokens = TokenTally(other.tokens.max_length)
            self.tokens.merge(other.tokens)


def blocks(f: BinaryIO, start: int, end: int, cap: int,
           progress: Progress | None = None) -> Iterator[tuple[list[bytes], list[int]]]:
    """Lines of ``f[start:end]`` a block at a time, as (lines, indexes of over-long lines).

    An over-long line is replaced by b"" in ``lines`` and its index listed; it is read through in
    blocks and never held, so a gigabyte line costs one block of memory."""
    f.seek(start)
    pos = start
    pending: list[bytes] = []  # pieces of a line not yet ended (joined once, so a long line is linear)
    pending_len = 0
    skipping = False
    read = f.read
    while pos < end:
        block = read(min(BLOCK, end - pos))
        if not block:
            break
        first = pos == 0
        pos += len(block)
        if progress is not None:
            progress(len(block))
        if first and block.startswith(BOM):
            block = block[len(BOM):]
        if skipping:
            j = block.find(b"\n")
            if j < 0:
                continue
            skipping = False
            yield [b""], [0]
            block = block[j + 1:]
        lines = block.split(b"\n")
        tail = lines.pop()  # the unfinished last line (b"" when the block ends with a newline)
        if lines:
            may_be_long = pending_len + len(block) > cap
            if pending:
                pending.append(lines[0])
                lines[0] = b"".join(pending)
                pending, pending_len = [], 0
            long: list[int] = []
            if may_be_long:
                long = [i for i, line in enumerate(lines) if len(line) > cap]
                for i in long:
                    lines[i] = b""
            yield lines, long
        if tail:
            pending.append(tail)
            pending_len += len(tail)
            if pending_len > cap:
                skipping, pending, pending_len = True, [], 0
    if skipping:
        yield [b""], [0]
    elif pending:
        yield [b"".join(pending)], []


# Magic numbers of the archives a data file most often arrives in by mistake.
COMPRESSED = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2",
              b"\xfd7zXZ\x00": "xz"}


def _file_start(f: BinaryIO) -> str:
    """"array" when the file opens with ``[`` (one JSON array), "pretty" when with ``{`` alone on
    its line, "cr" when its lines end in CR alone, "utf16" for a UTF-16 byte order mark, "gzip"
    (etc.) for a compressed file, else ""."""
    f.seek(0)
    head = f.read(4096)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf16"
    for magic, kind in COMPRESSED.items():
        if head.startswith(magic):
            return kind
    if head.startswith(BOM):
        head = head[len(BOM):]
    head = head.lstrip()
    if head[:1] == b"[":
        return "array"
    if b"\r" in head and b"\n" not in head:  # classic Mac line endings: the file is one long line
        return "cr"
    if head.split(b"\n", 1)[0].strip() == b"{":  # an object opened alone on its line: pretty-printed
        return "pretty"
    return ""


def scan(path: Path, start: int, end: int, cap: int, max_problems: int,
         counter: TokenCounter | None = None, max_length: int = 0,
         progress: Progress | None = None) -> Tally:
    """Check every line of ``path[start:end]``; with ``counter``, also count tokens."""
    # A block's parsed records are alive together, which would set off the cyclic collector every
    # few hundred records; they hold no cycles, so it has nothing to find and only costs time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _scan(path, start, end, cap, max_problems, counter, max_length, progress)
    finally:
        if enabled:
            gc.enable()


def _scan(path: Path, start: int, end: int, cap: int, max_problems: int,
          counter: TokenCounter | None, max_length: int, progress: Progress | None) -> Tally:
    tally = Tally(max_problems)
    if counter is not None:
        tally.tokens = TokenTally(max_length)
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    fast = fast_messages
    batch: list[Example] = []
    lineno = 0
    valid = 0
    with open(path, "rb") as f:
        if start == 0:
            tally.start = _file_start(f)
        for lines, long in blocks(f, start, end, cap, progress):
            if counter is None and not long and all_common(lines):
                lineno += len(lines)
                valid += len(lines)
                continue
            too_long = {lineno + i + 1 for i in long}
            for line in lines:
                lineno += 1
                if not line:
                    if lineno in too_long:  # an over-long line arrives as b"", told apart here
                        tally.bad(lineno, "line_too_long", f"the line is longer than data.max_line_bytes "
                                  f"({cap} bytes); skipped unread")
                    continue
                try:
                    record = loads(line)
                except decode_error:
                    if not line.strip():
                        continue
                    err = diagnose(line)
                    tally.bad(lineno, err.reason, err.detail)
                    continue
                msgs = fast(record)
                if msgs is not None:
                    valid += 1
                    if counter is not None:
                        batch.append(Example(lineno, [Message(m["role"], m["content"]) for m in msgs]))
                    continue
                try:
                    parsed = parse_record(record)
                except RecordError as err:
                    tally.bad(lineno, err.reason, err.detail)
                    continue
                valid += 1
                if counter is not None:
                    batch.append(Example(lineno, parsed))
            if counter is not None and len(batch) >= TOKEN_BATCH and tally.tokens is not None:
                tally.tokens.add(counter(batch))
                batch = []
    if counter is not None and batch and tally.tokens is not None:
        tally.tokens.add(counter(batch))
    tally.lines = lineno
    tally.valid = valid
    return tally


def iter_records(path: Path, cap: int) -> Iterator[Example | tuple[int, RecordError]]:
    """Every non-blank line in order: an Example, or (line, why it is not one)."""
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    lineno = 0
    with open(path, "rb") as f:
        for lines, long in blocks(f, 0, 1 << 62, cap):
            long_set = set(long)
            for i, line in enumerate(lines):
                lineno += 1
                if i in long_set:
                    yield lineno, RecordError("line_too_long", "the line is longer than "
                                              f"data.max_line_bytes ({cap} bytes)")
                    continue
                if not line:
                    continue
                try:
                    record = loads(line)
                except decode_error:
                    if line.strip():
                        yield lineno, diagnose(line)
                    continue
                msgs = fast_messages(record)
                if msgs is not None:
                    yield Example(lineno, [Message(m["role"], m["content"]) for m in msgs])
                    continue
                try:
                    yield Example(lineno, parse_record(record))
                except RecordError as err:
                    yield lineno, err


def split_ranges(path: Path, size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` byte ranges of about equal size, each starting at a line start."""
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            target = max(size * k // parts, cuts[-1])
            f.seek(target)
            pos = target
            while True:
                block = f.read(BLOCK)
                if not block:
                    pos = size
                    break
                j = block.find(b"\n")
                if j >= 0:
                    pos += j + 1
                    break
                pos += len(block)
            if cuts[-1] < pos < size:
                cuts.append(pos)
    cuts.append(size)
    return list(zip(cuts[:-1], cuts[1:], strict=False))


RANGES_PER_WORKER = 4
MIN_RANGE = 8 << 20

# What a forked worker needs; set in the parent just before forking, so nothing is pickled
# (a tokenizer object need not be picklable).
_JOB: dict[str, Any] = {}


def _work(bounds: tuple[int, int]) -> Tally:
    job = _JOB
    shared = job["shared"]
    unsent = 0

    def progress(n: int) -> None:
        nonlocal unsent
        unsent += n
        if unsent >= 4 << 20:  # the shared counter's lock, taken every few MB rather than per block
            with shared.get_lock():
                shared.value += unsent
            unsent = 0

    tally = scan(job["path"], bounds[0], bounds[1], job["cap"], job["max_problems"], job["counter"],
                 job["max_length"], progress)
    with shared.get_lock():
        shared.value += unsent
    return tally


def scan_parallel(path: Path, size: int, workers: int, cap: int, max_problems: int,
                  counter: TokenCounter | None = None, max_length: int = 0,
                  progress: Progress | None = None) -> Tally:
    """The same tally as ``scan(path, 0, size, ...)``, from ``workers`` processes."""
    # A few ranges per worker, handed out as workers free up: a core slowed by other work then
    # takes fewer of them instead of holding up the whole file.
    n_ranges = max(workers, min(workers * RANGES_PER_WORKER, size // MIN_RANGE))
    ranges = split_ranges(path, size, n_ranges)
    if len(ranges) < 2:
        return scan(path, 0, size, cap, max_problems, counter, max_length, progress)
    import multiprocessing  # only here: most validations are one process
    from concurrent.futures import ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    if "fork" not in multiprocessing.get_all_start_methods():
        return scan(path, 0, size, cap, max_problems, counter, max_length, progress)
    ctx = multiprocessing.get_context("fork")
    shared = ctx.Value("q", 0)
    _JOB.update(path=path, cap=cap, max_problems=max_problems, counter=counter,
                max_length=max_length, shared=shared)
    try:
        # An executor, not a Pool: a worker killed from outside (the OOM killer) breaks it with an
        # error, where a Pool would wait forever for the lost range.
        with ProcessPoolExecutor(min(workers, len(ranges)), mp_context=ctx) as pool:
            futures = [pool.submit(_work, bounds) for bounds in ranges]
            seen = 0
            while True:
                _done, running = wait(futures, timeout=0.2)
                if progress is not None:
                    now = int(shared.value)
                    progress(now - seen)
                    seen = now
                if not running:
                    break
            parts = [f.result() for f in futures]
    except BrokenProcessPool:
        # Start over in this process: slower, and the answer is the same.
        return scan(path, 0, size, cap, max_problems, counter, max_length, progress)
    finally:
        _JOB.clear()
    total = parts[0]
    for part in parts[1:]:
        total.merge(part)
    return total
