"""The data gate: nothing reaches a GPU until its file has been read, line by line, and every problem
in it has a line number, a reason and a case number.

``iter_examples`` streams the valid examples of a chat-format JSON-lines file, skipping bad lines;
``validate_file`` reads the whole file (in several processes when it is large) and returns a
``Report`` with a verdict. A rejected file raises nothing: the caller reads the verdict (the worker
turns it into a ``DataError``, a permanent failure). Memory stays bounded for a file of any size:
nothing holds more than a block and one capped line. The record format lives in
engine/data/records.py, the reading in engine/data/scan.py."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from trainconsole.engine.config import Config
from trainconsole.engine.config.schema import DataConfig
from trainconsole.engine.data.records import REASONS, Example, Message, RecordError
from trainconsole.engine.data.scan import (
    COMPRESSED,
    Progress,
    Tally,
    TokenCounter,
    iter_records,
    scan,
    scan_parallel,
)
from trainconsole.engine.errors import DataError
from trainconsole.engine.names import display

__all__ = ["DataWarning", "Example", "Limits", "Message", "Problem", "REASONS", "Report", "TokenCounter",
           "TokenStats", "iter_examples", "iter_problems", "validate_file"]

# The ``code`` of a rejected file's report, one word per way a file is refused as a whole.
VERDICT_CODES: Final = ("empty_file", "json_array", "pretty_printed", "utf16_file", "compressed_file",
                        "no_valid_example", "all_dropped", "too_many_invalid", "cr_line_endings")

# Below this, forking workers costs more than it saves.
PARALLEL_MIN_BYTES: Final = 32 << 20


@dataclass(frozen=True)
class Limits:
    """The settings the gate reads, from ``cfg.data`` and ``cfg.training`` (defaults as config.toml)."""

    max_line_bytes: int = 16 << 20
    max_invalid_fraction: float = 0.1
    long_examples: str = "truncate"
    max_problems: int = 50
    batch_size: int = 4
    max_length: int = 1024

    @classmethod
    def of(cls, cfg: Settings) -> Limits:
        """From a whole Config, its ``data`` section alone (training's settings then default), a
        Limits, or None (defaults)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, Limits):
            return cfg
        data = cfg.data if isinstance(cfg, Config) else cfg
        base = cls()
        training = cfg.training if isinstance(cfg, Config) else base
        return cls(max_line_bytes=data.max_line_bytes, max_invalid_fraction=data.max_invalid_fraction,
                   long_examples=data.long_examples, max_problems=data.max_problems,
                   batch_size=training.batch_size, max_length=training.max_length)


Settings = Config | DataConfig | Limits | None
"""What the gate's functions take for their settings (see ``Limits.of``)."""


@dataclass(frozen=True)
class Problem:
    line: int
    case: int
    reason: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "case": self.case, "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class TokenStats:
    examples: int
    min: int
    mean: float
    max: int
    max_length: int
    over_max_length: int

    def to_json(self) -> dict[str, Any]:
        return {"examples": self.examples, "min": self.min, "mean": round(self.mean, 2),
                "max": self.max, "max_length": self.max_length,
                "over_max_length": self.over_max_length}


@dataclass(frozen=True)
class DataWarning:
    """Something about an accepted file an operator should know (few examples, long examples)."""

    case: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "message": self.message}


@dataclass(frozen=True)
class Report:
    path: Path
    verdict: str  # "accepted" | "rejected"
    reason: str  # why rejected ("" when accepted)
    code: str  # the rejection in one word (VERDICT_CODES), "" when accepted
    case: int | None  # the memo case behind a rejection
    size: int
    lines: int
    examples: int  # non-blank lines, valid or not
    valid: int
    invalid: int
    truncated: int = 0
    dropped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    tokens: TokenStats | None = None
    warnings: tuple[DataWarning, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.verdict == "accepted"

    def to_json(self) -> dict[str, Any]:
        """One entry of ``validate --json`` (schema 1)."""
        return {
            "path": str(self.path), "verdict": self.verdict, "reason": self.reason, "code": self.code,
            "case": self.case,
            "examples": self.examples, "valid": self.valid, "invalid": self.invalid,
            "truncated": self.truncated, "dropped": self.dropped,
            "tokens": self.tokens.to_json() if self.tokens else {},
            "problems": [p.to_json() for p in self.problems],
            "reasons": dict(sorted(self.reasons.items())),
            "warnings": [w.to_json() for w in self.warnings],
            "bytes": self.size, "lines": self.lines,
        }

    def render(self) -> str:
        """The human-readable report, a few lines."""
        head = f"{display(str(self.path))}: {self.verdict}"  # a newline in a name would split the line
        if self.accepted:
            skipped = f" ({self.invalid} invalid skipped)" if self.invalid else ""
            head += f": {self.valid} example(s){skipped}"
        else:
            head += f" (case {self.case}): {self.reason}"
        out = [head]
        if self.tokens and self.tokens.examples:
            t = self.tokens
            out.append(f"  tokens per example: min {t.min}, mean {t.mean:.1f}, max {t.max} "
                       f"(training.max_length {t.max_length}: {t.over_max_length} over)")
        out += [f"  warning (case {w.case}): {w.message}" for w in self.warnings]
        out += [f"  line {p.line} (case {p.case}, {p.reason}): {p.message}" for p in self.problems]
        hidden = self.invalid - len(self.problems)
        if hidden > 0:
            out.append(f"  ... and {hidden} more invalid line(s)")
        return "\n".join(out)


def iter_examples(path: Path, data_cfg: Settings = None) -> Iterator[Example]:
    """The valid examples of ``path`` in file order, bad lines skipped (``validate_file`` counts them)."""
    limits = Limits.of(data_cfg)
    for item in iter_records(Path(path), limits.max_line_bytes):
        if isinstance(item, Example):
            yield item


def iter_problems(path: Path, data_cfg: Settings = None) -> Iterator[tuple[int, RecordError]]:
    """Every bad line of ``path`` as (line, why)."""
    limits = Limits.of(data_cfg)
    for item in iter_records(Path(path), limits.max_line_bytes):
        if not isinstance(item, Example):
            yield item


def _regular_size(path: Path) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise DataError(f"{path}: {kind}; give a .jsonl file")
    return st.st_size


def default_workers(size: int) -> int:
    if size < PARALLEL_MIN_BYTES:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, size // (PARALLEL_MIN_BYTES // 2)))


def validate_file(path: Path, cfg: Settings = None, *, tokenizer: TokenCounter | None = None,
                  workers: int | None = None, progress: Progress | None = None) -> Report:
    """Read all of ``path`` and judge it. ``tokenizer`` maps examples to token counts (chat
    template applied); without it the report has no token statistics. ``workers``: processes
    (default: every core for a large file). Raises DataError only when the path is not a readable
    regular file."""
    path = Path(path)
    limits = Limits.of(cfg)
    size = _regular_size(path)
    n = default_workers(size) if workers is None else max(1, workers)
    try:
        if n > 1:
            tally = scan_parallel(path, size, n, limits.max_line_bytes, limits.max_problems,
                                  tokenizer, limits.max_length, progress)
        else:
            # To the end, whatever stat said: some readable files (in /proc) report size 0.
            tally = scan(path, 0, 1 << 62, limits.max_line_bytes, limits.max_problems, tokenizer,
                         limits.max_length, progress)
    except OSError as exc:
        raise DataError(f"{path}: read failed ({exc.strerror or exc})") from None
    return _judge(path, size, tally, limits)


def _most_common(tally: Tally) -> str:
    return max(sorted(tally.reasons), key=lambda r: tally.reasons[r])


def _judge(path: Path, size: int, tally: Tally, limits: Limits) -> Report:
    examples = tally.valid + tally.invalid
    warnings: list[DataWarning] = []
    reason = code = ""
    case: int | None = None
    tokens: TokenStats | None = None
    truncated = dropped = 0
    t = tally.tokens
    if t is not None and t.examples:
        tokens = TokenStats(t.examples, t.shortest, t.total / t.examples, t.longest, t.max_length, t.over)
        if limits.long_examples == "drop":
            dropped = t.over
        else:
            truncated = t.over
        done = "dropped" if limits.long_examples == "drop" else "truncated"
        if t.over:
            warnings.append(DataWarning(3, f"{t.over} example(s) longer than training.max_length = "
                                     f"{t.max_length} tokens (longest {t.longest}): {done} "
                                     f"(data.long_examples = {limits.long_examples!r})"))
        if t.shortest > t.max_length:
            warnings.append(DataWarning(33, f"training.max_length = {t.max_length} is below the shortest "
                                     f"example ({t.shortest} tokens): every example is {done}"))
    if examples == 0:
        case, code = 1, "empty_file"
        reason = ("no examples: the file is empty" if size == 0
                  else "no examples: the file holds only blank lines")
    elif tally.valid == 0 and tally.start == "array":
        case, code = 4, "json_array"
        reason = ("the file is one JSON array, not JSON lines: write one object per line "
                  f"(for example: jq -c '.[]' {path.name} > fixed.jsonl)")
        tally.problems = tally.problems[:1]  # the rest are the array's lines, not news
    elif tally.valid == 0 and tally.start == "pretty":
        case, code = 4, "pretty_printed"
        reason = ("the records span several lines (pretty-printed JSON): write each record on one line "
                  f"(for example: jq -c . {path.name} > fixed.jsonl)")
        tally.problems = tally.problems[:1]
    elif tally.valid == 0 and (tally.start == "cr" or "cr_line_endings" in tally.reasons):
        case, code = 4, "cr_line_endings"
        reason = ("the file uses CR line endings (classic Mac), so its records run together on one line: "
                  f"convert them to LF (for example: tr '\\r' '\\n' < {path.name} > fixed.jsonl)")
    elif tally.valid == 0 and tally.start in COMPRESSED.values():
        case, code = 9, "compressed_file"
        reason = (f"the file is {tally.start}-compressed, not JSON lines; decompress it first "
                  "(e.g. gunzip, unzip, zstd -d)")
        tally.problems = tally.problems[:1]
    elif tally.valid == 0 and tally.start == "utf16":
        case, code = 9, "utf16_file"
        reason = "the file is UTF-16 text; save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"
        tally.problems = tally.problems[:1]
    elif tally.valid == 0:
        common = _most_common(tally)
        case, code = REASONS[common][0], "no_valid_example"
        reason = (f"no usable example: all {examples} record(s) are invalid (most often: "
                  f"{REASONS[common][1]}, {tally.reasons[common]}x)")
    elif dropped and dropped >= tally.valid:
        case, code = 33, "all_dropped"
        reason = (f"no usable example: every example is longer than training.max_length = "
                  f"{limits.max_length} tokens and data.long_examples = 'drop'")
    elif tally.invalid / examples > limits.max_invalid_fraction:
        common = _most_common(tally)
        case, code = REASONS[common][0], "too_many_invalid"
        reason = (f"{tally.invalid} of {examples} records invalid ({tally.invalid / examples:.1%}), "
                  f"above data.max_invalid_fraction = {limits.max_invalid_fraction:g} (most often: "
                  f"{REASONS[common][1]}, {tally.reasons[common]}x)")
    if tally.valid and not reason and tally.valid < limits.batch_size:
        warnings.append(DataWarning(2, f"only {tally.valid} example(s), fewer than training.batch_size = "
                                 f"{limits.batch_size}: each step sees them all"))
    problems = tuple(Problem(line, REASONS[r][0], r, detail) for line, r, detail in tally.problems)
    return Report(
        path=path, verdict="rejected" if reason else "accepted", reason=reason, code=code, case=case,
        size=size,
        lines=tally.lines, examples=examples, valid=tally.valid, invalid=tally.invalid,
        truncated=truncated, dropped=dropped, reasons=dict(tally.reasons), problems=problems,
        tokens=tokens, warnings=tuple(warnings))
