"""What one JSON line must look like to be a training example, and why a line that is not one was
refused. Every refusal has a stable reason code, the memo's case number, and a sentence naming
the offending message or byte, so an operator can fix the line without opening a debugger.

The scanner (engine/data_scan.py) only calls into here for records that missed its fast path, so
the checks can afford to be thorough and the messages specific."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any, Final

import orjson

# reason code -> (memo case, what it means). The codes are part of `validate --json`: keep them.
REASONS: Final[dict[str, tuple[int, str]]] = {
    "empty_file": (1, "the file has no examples"),
    "json_array": (4, "the file is one JSON array, not JSON lines"),
    "malformed_json": (4, "the line is not valid JSON"),
    "cr_line_endings": (4, "records separated by a bare CR (classic Mac line endings)"),
    "nan_infinity": (4, "NaN or Infinity is not JSON"),
    "not_object": (4, "the line is not a JSON object"),
    "bad_message": (4, "a message is not an object with a role and content"),
    "bad_weight": (4, "a message weight is not 0 or 1"),
    "missing_messages": (5, "no 'messages' (or 'conversations') field"),
    "empty_messages": (6, "'messages' is empty"),
    "nothing_to_learn": (6, "every assistant turn is empty or has weight 0"),
    "unknown_role": (7, "a message has a role outside system/user/assistant/tool"),
    "no_assistant": (7, "no assistant turn"),
    "bad_content": (8, "a message's content is not a string or text parts"),
    "non_text_part": (8, "a content part is not text"),
    "invalid_utf8": (9, "bytes that are not UTF-8"),
    "nul_byte": (9, "a NUL byte"),
    "lone_surrogate": (9, "a lone UTF-16 surrogate escape"),
    "number_too_large": (77, "a number too large to convert"),
    "too_deep": (79, "nesting too deep"),
    "line_too_long": (80, "a line longer than data.max_line_bytes"),
}

ROLE_ALIASES: Final[dict[str, str]] = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}
_ALLOWED_TEXT = "system, user, assistant, tool (aliases: human, gpt, bot, model)"

# orjson's own nesting limit; stdlib json recurses in C and stops near the interpreter's limit.
MAX_DEPTH: Final = 1024
# Python refuses int(str) past 4300 digits (CVE-2020-10735); we refuse well before.
_MAX_INT_DIGITS: Final = 4000


class RecordError(Exception):
    """One refused record: a reason code from REASONS and a sentence about this line."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    @property
    def case(self) -> int:
        return REASONS[self.reason][0]


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # system | user | assistant | tool
    content: str
    weight: int = 1  # 0: shown to the model but not trained on


@dataclass(frozen=True, slots=True)
class Example:
    line: int  # 1-based line number in the file
    messages: list[Message]


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: object, limit: int = 40) -> str:
    """A bounded quote of a value: never the repr of a whole (possibly huge or deep) container."""
    if isinstance(value, str):
        text = repr(value[:limit])
    elif isinstance(value, dict | list):
        return f"{_kind(value)} of {len(value)}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _content(raw: object, where: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        texts: list[str] = []
        for j, part in enumerate(raw, 1):
            if not isinstance(part, dict):
                raise RecordError("bad_content", f"{where}: content part {j} is {_kind(part)}, "
                                  "expected an object like {\"type\": \"text\", \"text\": \"...\"}")
            ptype = part.get("type", "text" if "text" in part else None)
            if ptype != "text":
                raise RecordError("non_text_part", f"{where}: content part {j} has type "
                                  f"{_short(ptype)}; only text parts can be trained on")
            text = part.get("text")
            if not isinstance(text, str):
                raise RecordError("bad_content", f"{where}: content part {j} text is {_kind(text)}, "
                                  "expected a string")
            texts.append(text)
        return "".join(texts)
    raise RecordError("bad_content", f"{where}: content is {_kind(raw)} ({_short(raw)}), "
                      "expected a string or a list of text parts")


def _message(raw: object, index: int) -> Message:
    where = f"message {index}"
    if not isinstance(raw, dict):
        raise RecordError("bad_message", f"{where} is {_kind(raw)}, expected an object with "
                          "'role' and 'content'")
    role_raw = raw.get("role", raw.get("from"))
    if role_raw is None:
        raise RecordError("bad_message", f"{where} has no 'role' (or 'from')")
    if not isinstance(role_raw, str):
        raise RecordError("unknown_role", f"{where} role is {_kind(role_raw)}; allowed: {_ALLOWED_TEXT}")
    role = ROLE_ALIASES.get(role_raw) or ROLE_ALIASES.get(role_raw.strip().lower())
    if role is None:
        raise RecordError("unknown_role", f"{where} has role {_short(role_raw)}; allowed: {_ALLOWED_TEXT}")
    if "content" in raw:
        content = _content(raw["content"], where)
    elif "value" in raw:
        content = _content(raw["value"], where)
    else:
        raise RecordError("bad_content", f"{where} ({role}) has no 'content' (or 'value')")
    weight = raw.get("weight", 1)
    if type(weight) is not int or weight not in (0, 1):
        if not (type(weight) is float and weight in (0.0, 1.0)):
            raise RecordError("bad_weight", f"{where} weight is {_short(weight)}, expected 0 or 1")
        weight = int(weight)
    return Message(role, content, weight)


def parse_record(record: object) -> list[Message]:
    """The messages of one parsed JSON line, or RecordError saying why it is not an example."""
    if not isinstance(record, dict):
        hint = ": write one object per line" if isinstance(record, list) else ""
        raise RecordError("not_object", f"the line is {_kind(record)}, expected a JSON object "
                          f"with 'messages'{hint}")
    if "messages" in record:
        raw = record["messages"]
        field = "messages"
    elif "conversations" in record:
        raw = record["conversations"]
        field = "conversations"
    else:
        keys = ", ".join(_short(k, 24) for k in list(record)[:5]) or "none"
        raise RecordError("missing_messages", f"no 'messages' field (keys: {keys})")
    if not isinstance(raw, list):
        raise RecordError("missing_messages", f"'{field}' is {_kind(raw)}, expected a list of messages")
    if not raw:
        raise RecordError("empty_messages", f"'{field}' is an empty list")
    messages = [_message(m, i) for i, m in enumerate(raw, 1)]
    assistant = [m for m in messages if m.role == "assistant"]
    if not assistant:
        roles = ", ".join(sorted({m.role for m in messages}))
        raise RecordError("no_assistant", f"no assistant turn to learn from (roles: {roles})")
    if not any(m.weight and m.content.strip() for m in assistant):
        raise RecordError("nothing_to_learn", "every assistant turn is empty or has weight 0")
    return messages


# A \u escape for a high surrogate not followed by a low one, or a low one without a high one
# before it. Only run on lines orjson already refused, so a rare false match costs nothing.
_LONE_HIGH = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})")
_LONE_LOW = re.compile(rb"(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


class _Flags:
    def __init__(self) -> None:
        self.constant: str | None = None
        self.big_number: str | None = None

    def parse_constant(self, name: str) -> float:
        self.constant = self.constant or name
        return 0.0

    def parse_int(self, text: str) -> int:
        if len(text) > _MAX_INT_DIGITS:
            self.big_number = self.big_number or f"an integer of {len(text)} digits"
            return 0
        return int(text)

    def parse_float(self, text: str) -> float:
        value = float(text)
        if value in (float("inf"), float("-inf")):
            self.big_number = self.big_number or f"{text[:30]} (beyond a 64-bit float)"
        return value


def _depth(line: bytes) -> int:
    """Deepest bracket nesting outside strings (only for lines already refused)."""
    depth = deepest = 0
    in_str = escaped = False
    for byte in line:
        if in_str:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_str = False
        elif byte == 0x22:
            in_str = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _cr_records(text: str) -> int:
    """How many records a line holds when its bare CRs are read as line ends: 0 unless there are
    several and the first is JSON by itself. A CR is JSON whitespace, so such a line parses up to
    the second record and then fails with "Extra data", which says nothing of the cause."""
    pieces = [piece for piece in text.split("\r") if piece.strip()]
    if len(pieces) < 2:
        return 0
    try:
        orjson.loads(pieces[0])
    except orjson.JSONDecodeError:
        return 0
    return len(pieces)


def diagnose(line: bytes) -> RecordError:
    """Why orjson refused this line, told by checks on the bytes rather than by its message text."""
    nul = line.find(b"\x00")
    if nul >= 0:
        return RecordError("nul_byte", f"NUL byte at byte {nul + 1}: the file may be binary or "
                           "UTF-16; save it as UTF-8 JSON lines")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RecordError("invalid_utf8", f"invalid UTF-8 at byte {exc.start + 1} "
                           f"({line[exc.start:exc.start + 4]!r}): save the file as UTF-8")
    lone = _LONE_HIGH.search(line) or _LONE_LOW.search(line)
    if lone:
        return RecordError("lone_surrogate", f"lone surrogate escape {lone.group().decode()} at byte "
                           f"{lone.start() + 1}: it encodes no character")
    # The byte walk is Python-speed: only take it when there are enough brackets to matter.
    if line.count(b"[") + line.count(b"{") > MAX_DEPTH and _depth(line) > MAX_DEPTH:
        return RecordError("too_deep", f"nesting deeper than {MAX_DEPTH} levels")
    if text.startswith("\ufeff"):  # tolerated at the start of the file only
        return RecordError("malformed_json", "the line starts with a UTF-8 byte order mark, as when files "
                           "saved with one are joined with cat; remove it")
    flags = _Flags()
    try:
        json.loads(text, parse_constant=flags.parse_constant, parse_int=flags.parse_int,
                   parse_float=flags.parse_float)
    except RecursionError:
        return RecordError("too_deep", "nesting too deep to parse")
    except json.JSONDecodeError as exc:
        if flags.constant:
            return RecordError("nan_infinity", f"{flags.constant} is not valid JSON (use null or a string)")
        records = _cr_records(text)
        if records:
            return RecordError("cr_line_endings", f"{records} records on one line, separated by bare CRs: "
                               "the file uses CR line endings (classic Mac); convert them to LF "
                               "(for example: tr '\\r' '\\n' < in.jsonl > fixed.jsonl)")
        return RecordError("malformed_json", f"invalid JSON: {exc.msg} at column {exc.colno}")
    except ValueError as exc:  # a hook's int() past the interpreter's digit limit
        return RecordError("number_too_large", f"a number too large to convert ({exc})")
    if flags.constant:
        return RecordError("nan_infinity", f"{flags.constant} is not valid JSON (use null or a string)")
    if flags.big_number:
        return RecordError("number_too_large", f"a number too large to convert: {flags.big_number}")
    return RecordError("malformed_json", "invalid JSON")


def describe(reason: str) -> str:
    return REASONS[reason][1]


def case_of(reason: str) -> int:
    return REASONS[reason][0]


# ---------------------------------------------------------------- the fast path

def fast_messages(record: Any) -> list[Any] | None:
    """The message list when the record has the common valid shape, else None (slow path)."""
    if type(record) is not dict:
        return None
    msgs = record.get("messages")
    if type(msgs) is not list or not msgs:
        return None
    learn = False
    for m in msgs:
        if type(m) is not dict or len(m) != 2:
            return None
        c = m.get("content")
        if type(c) is not str:
            return None
        r = m.get("role")
        if r == "assistant":
            if c and not c.isspace():
                learn = True
        elif r != "user" and r != "system":
            return None
    return msgs if learn else None


_FAST_ROLES = frozenset(("system", "user", "assistant"))
_STR = frozenset((str,))
_TWO = frozenset((2,))
_ASSISTANT = {"assistant"}
_messages_of = itemgetter("messages")
_role_of = itemgetter("role")
_content_of = itemgetter("content")
_last = itemgetter(-1)


def all_common(lines: list[bytes]) -> bool:
    """True when every line of a block is a valid record of the usual shape: messages of exactly
    role and content, roles system/user/assistant, string contents, ending with a non-blank
    assistant turn. Checked with map() over the whole block so the work per record stays in C;
    a block with anything else (a bad line, a blank, a weight, ShareGPT keys) takes the per-line
    path, which reaches the same verdicts one record at a time."""
    # No type() pass over records or messages is needed: orjson gives only dict, list, str,
    # numbers, bools and None, and indexing any of them but a dict with a string raises TypeError
    # (a non-list "messages" fails in chain() or in the role lookup the same way).
    try:
        lists = list(map(_messages_of, map(orjson.loads, lines)))
        if not all(lists):
            return False
        flat = list(chain.from_iterable(lists))
        if not _FAST_ROLES.issuperset(map(_role_of, flat)) or not _TWO.issuperset(map(len, flat)):
            return False
        if not _STR.issuperset(map(type, map(_content_of, flat))):
            return False
        last = list(map(_last, lists))
        if set(map(_role_of, last)) != _ASSISTANT:
            return False
        finals = list(map(_content_of, last))
        return all(finals) and not any(map(str.isspace, finals))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
