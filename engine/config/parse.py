"""Config text to a TOML document, and where in the text things are: every failure to read the
file becomes a ``Problem`` with a line and column, never an exception from the parser."""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import tomllib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One finding: ``line`` (1-based) and ``column`` where known, the dotted ``key`` where one applies."""

    message: str
    key: str | None = None
    line: int | None = None
    column: int | None = None
    case: int | None = None

    def render(self, file: str) -> str:
        if not file:  # a value typed by an operator, not read from a file
            return one_line(self.message)
        where = file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {one_line(self.message)}"

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "key": self.key, "line": self.line, "column": self.column,
                "case": self.case}


def one_line(text: str) -> str:
    """Escape anything a terminal would break a line on or not show (keys and values are user text)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


# ---------------------------------------------------------------- text -> document

def decode(data: bytes | str) -> tuple[str | None, list[Problem]]:
    if isinstance(data, str):
        return data.removeprefix("\ufeff"), []
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None, [Problem("is saved as UTF-16; save it as UTF-8", line=1, column=1, case=32)]
    data = data.removeprefix(b"\xef\xbb\xbf")  # editors on Windows add it; harmless, so accepted
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, [Problem(f"is not valid UTF-8 (byte 0x{data[exc.start]:02x}); save it as UTF-8",
                              line=line, column=col, case=32)]


_LOCATION = re.compile(r"\s+at line \d+ col \d+$")


def parse(text: str) -> tuple[Any, list[Problem]]:
    # tomllib (the standard library's reader) reads a config in a few milliseconds; tomlkit, which
    # keeps comments and layout for editing, takes about a tenth of a second to import and parse,
    # a cost every console start paid. A file tomllib refuses goes to tomlkit for the message.
    try:
        return tomllib.loads(text), []
    except Exception:  # noqa: BLE001 - refused or crashed: the line and column come from tomlkit
        pass
    import tomlkit
    import tomlkit.exceptions

    try:
        doc = tomlkit.parse(text)
        return doc.unwrap(), []
    except tomlkit.exceptions.ParseError as exc:
        message = _LOCATION.sub("", str(exc)).rstrip(".")
        if "'\\x00'" in message:  # tomlkit's way of saying the text ended inside a value
            lines = text.splitlines() or [""]
            return None, [Problem("invalid TOML: the file ends inside a value (an unclosed [, { or quote?)",
                                  line=len(lines), column=len(lines[-1]) + 1, case=32)]
        if "\\u000a" in message:
            message = "a string is not closed on the line where it starts (a missing quote?)"
        if "already exists" in message:
            message += " (a key or a section may appear only once)"
        # tomlkit counts columns from 0; editors and compilers count from 1.
        return None, [Problem(f"invalid TOML: {message}", line=exc.line, column=exc.col + 1, case=32)]
    except tomlkit.exceptions.KeyAlreadyPresent as exc:
        return None, [Problem(f"invalid TOML: {_dup_message(str(exc))}", line=_dup_line(text, str(exc)),
                              case=32)]
    except RecursionError:
        return None, [Problem("invalid TOML: nested too deeply", case=32)]
    except Exception as exc:  # noqa: BLE001 - any parser failure is the file's problem, not a crash
        return None, [Problem(f"invalid TOML: {exc}", case=32)]


INT64 = (-(2**63), 2**63 - 1)


def beyond_64_bits(data: Any, lines: list[str]) -> dict[str, Problem]:
    """TOML 1.0: an integer that cannot be kept losslessly in 64 bits is an error. tomlkit keeps
    Python's big ints, so ``batch_size = 2**70`` would reach range checks (and torch) as a number
    no other TOML reader accepts. Keyed by the dotted key."""
    found: dict[str, Problem] = {}

    def walk(value: Any, path: list[str]) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, [*path, str(key)])
        elif isinstance(value, list):
            for item in value:
                walk(item, path)
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
            dotted = ".".join(path)
            section, _, key = dotted.rpartition(".")
            line = line_of(lines, section, key) if section else line_of(lines, key)
            found.setdefault(dotted, Problem(
                f"{dotted} = {value} does not fit in 64 bits (TOML integers are {INT64[0]} to "
                f"{INT64[1]}); use a smaller number", key=dotted, line=line, case=32))

    walk(data, [])
    return found


def _dup_message(text: str) -> str:
    return text.rstrip(".") + " (a key or a section may appear only once)"


def _dup_line(text: str, message: str) -> int | None:
    m = re.search(r'"([^"]*)"', message)
    if not m:
        return None
    name = m.group(1)
    seen: dict[tuple[str | None, str], int] = {}
    header: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        h = _HEADER.match(line)
        if h:
            header = h.group(1).strip()
            if (None, header) in seen and header == name:
                return number
            seen[(None, header)] = number
            continue
        k = _KEY.match(line)
        if k and k.group(1).strip("\"' ") == name:
            if (header, name) in seen:
                return number
            seen[(header, name)] = number
    return None


# ---------------------------------------------------------------- finding a key's line

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")


def line_of(lines: list[str], section: str, key: str | None = None) -> int | None:
    """The first line that defines ``section`` (or ``section.key``): a header, a dotted key or a key."""
    target = section if key is None else f"{section}.{key}"

    def hit(name: str) -> bool:
        return name == target or name.startswith(target + ".")

    header: str | None = None
    for number, line in enumerate(lines, 1):
        h = _HEADER.match(line)
        if h:
            header = _dotted(h.group(1))
            if hit(header):
                return number
            continue
        k = _KEY.match(line)
        if k:
            name = _dotted(k.group(1))
            if hit(name if header is None else f"{header}.{name}"):
                return number
    return None


def _dotted(raw: str) -> str:
    return re.sub(r"\s*\.\s*", ".", raw.strip()).replace('"', "").replace("'", "")


def show(value: Any) -> str:
    """A value as it would be written in TOML, shortened for a message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value.bit_length() < 200 else "(a very large integer)"
    if isinstance(value, float):
        return {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan" if value != value else repr(value))
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict):
        return "(a table)"
    elif isinstance(value, list):
        text = "[" + ", ".join(show(v) for v in value[:8]) + (", ..." if len(value) > 8 else "") + "]"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number" if math.isfinite(value) else "an infinite or NaN number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, _dt.date | _dt.time):
        return "a date/time"
    return type(value).__name__
