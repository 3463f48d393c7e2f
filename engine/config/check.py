"""Checking a config document against the schema, collecting every problem rather than the first.

Torch-free and side-effect free: it reads nothing but the text it is given (and, for a
``base_model`` written as a path, whether that path exists)."""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any

from trainconsole.engine.config.crosscheck import cross_checks
from trainconsole.engine.config.parse import (
    Problem,
    beyond_64_bits,
    decode,
    line_of,
    one_line,
    parse,
    show,
    type_name,
)
from trainconsole.engine.config.schema import BUILTIN_MODELS, KEYS, SECTIONS, Key, allowed_text

__all__ = ["BadValue", "Problem", "check_base_model", "check_value", "looks_like_path", "one_line", "show", "type_name",
           "validate_document"]

# ---------------------------------------------------------------- values

class BadValue(Exception):
    """A value that breaks its key's rule; the caller adds the file, line and key."""

    def __init__(self, message: str, case: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.case = case


def _quoted_hint(value: Any, kind: str) -> str:
    if isinstance(value, str):
        low = value.strip().lower()
        if kind == "bool" and low in ("true", "false"):
            return f" (write {low} without quotes)"
        try:
            float(value)
        except ValueError:
            return ""
        return f" (write {value.strip()} without quotes)"
    return ""


def _number(key: Key, value: Any) -> int | float:
    kind, s = key.kind, key.spec
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadValue(f"must be {allowed_text(key)}, not {type_name(value)}{_quoted_hint(value, kind)}")
    if kind == "int" and isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            raise BadValue(f"must be {allowed_text(key)}, not {type_name(value)} (write {int(value)})")
        raise BadValue(f"must be {allowed_text(key)}, not {type_name(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadValue(f"must be a finite number: {allowed_text(key)}")
    too_low = s.lo is not None and (value <= s.lo if s.lo_open else value < s.lo)
    too_high = s.hi is not None and value > s.hi
    if too_low or too_high:
        raise BadValue(f"is out of range: must be {allowed_text(key)}", s.case_low if too_low else s.case_high)
    if kind == "float":
        try:
            return float(value) + 0.0  # + 0.0 turns -0.0 into 0.0
        except OverflowError:
            raise BadValue(f"is too large: must be {allowed_text(key)}") from None
    return value


def _string(key: Key, value: Any) -> str:
    if not isinstance(value, str):
        raise BadValue(f"must be {allowed_text(key)}, not {type_name(value)}")
    if "\x00" in value:
        raise BadValue("must not contain a NUL character")
    choices = key.spec.choices
    if choices and value not in choices:
        close = difflib.get_close_matches(value.lower(), choices, n=1, cutoff=0.5)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        raise BadValue(f"must be {allowed_text(key)}{hint}")
    if key.spec.nonempty and not value.strip():
        raise BadValue(f"must be {allowed_text(key)}, not empty")
    if key.spec.pattern and value and not re.fullmatch(key.spec.pattern, value):
        raise BadValue(f"must be empty or {key.spec.note}")
    return value


def check_value(key: Key, value: Any) -> Any:
    kind = key.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise BadValue(f"must be true or false, not {type_name(value)}{_quoted_hint(value, kind)}")
        return value
    if kind in ("int", "float"):
        return _number(key, value)
    if kind == "str":
        return _string(key, value)
    if kind == "modules":
        if isinstance(value, str):
            if value != "all-linear":
                raise BadValue(f"must be {allowed_text(key)}" + (f' (write ["{value}"] for one module)'
                                                                 if value.strip() else ""))
            return value
        if isinstance(value, list) and "all-linear" in value:
            # peft takes "all-linear" only as a plain string; in a list it is looked for as a module
            # name, and the job would fail after loading the model.
            raise BadValue('lists "all-linear": write target_modules = "all-linear" (a string, not a list)')
        kind = "list[str]"
    if kind == "list[str]":
        if not isinstance(value, list):
            raise BadValue(f"must be {allowed_text(key)}, not {type_name(value)}"
                       + (f' (write ["{value}"])' if isinstance(value, str) else ""))
        if key.spec.nonempty and not value:
            raise BadValue(f"must be {allowed_text(key)}, not empty")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item or "\x00" in item:
                raise BadValue(f"item {i} ({show(item)}) must be a non-empty string, not {type_name(item)}"
                           if not isinstance(item, str) else f"item {i} must be a non-empty string")
            if key.spec.choices and item not in key.spec.choices:
                close = difflib.get_close_matches(item.lower(), key.spec.choices, n=1, cutoff=0.5)
                hint = f'; did you mean "{close[0]}"?' if close else ""
                raise BadValue(f"item {i} ({show(item)}) is not allowed: must be {allowed_text(key)}{hint}")
        if key.spec.choices and len(set(value)) != len(value):
            raise BadValue(f"names an item twice: must be {allowed_text(key)}")
        return list(value)
    # gpus: "all" or GPU indices
    if isinstance(value, str):
        if value != "all":
            hint = '; did you mean "all"?' if value.strip().lower() == "all" else ""
            raise BadValue(f"must be {allowed_text(key)}{hint}")
        return value
    if not isinstance(value, list) or not value:
        raise BadValue(f"must be {allowed_text(key)}, not "
                   + ("an empty list (for no GPU set hardware.device = \"cpu\")" if value == []
                      else type_name(value)))
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < 4096:
            raise BadValue(f"must be {allowed_text(key)}; {show(item)} is not a GPU index")
    if len(set(value)) != len(value):
        raise BadValue("lists a GPU twice")
    return list(value)


_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


def looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~", ".\\", "..\\")) or value in (".", "..")


def check_base_model(value: str, root: Path) -> str:
    if looks_like_path(value):
        where = Path(os.path.normpath(root / Path(value).expanduser()))
        try:
            where.stat()
        except (FileNotFoundError, NotADirectoryError):
            pass  # the message below
        except OSError as exc:  # Path.exists raises this one rather than answer False
            raise BadValue(f"cannot be read ({where}): {exc.strerror or exc}", case=11) from None
        if not where.exists():
            raise BadValue(f"names no such folder ({where}); give an existing folder, a model id, or "
                       f'"{BUILTIN_MODELS[0]}"', case=11)
        if not where.is_dir():
            raise BadValue(f"names a file ({where}); give the model's folder (the one holding config.json)",
                       case=11)
        return str(where)
    if value.startswith("builtin:"):
        if value not in BUILTIN_MODELS:
            close = difflib.get_close_matches(value, BUILTIN_MODELS, n=1, cutoff=0.5)
            hint = f'did you mean "{close[0]}"?' if close else "the built-in models: " + ", ".join(
                f'"{m}"' for m in BUILTIN_MODELS)
            raise BadValue(f"is not a built-in model; {hint}", case=39)
        return value
    if not _MODEL_ID.match(value):
        raise BadValue('is neither "builtin:...", a folder (absolute, ./, ../ or ~) nor a model id such '
                   'as "org/name"', case=39)
    return value


# ---------------------------------------------------------------- the document

def _suggest(name: str, options: list[str]) -> str | None:
    close = difflib.get_close_matches(name.lower().replace("-", "_"), options, n=1, cutoff=0.6)
    return close[0] if close else None


def _home_of(name: str) -> str | None:
    homes = [s for s, keys in KEYS.items() if name in keys]
    return homes[0] if homes else None


def validate_document(data: bytes | str, *, root: Path) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """Check config text; return the checked values per section (defaults omitted) and every problem."""
    text, problems = decode(data)
    if text is None:
        return {}, problems
    doc, problems = parse(text)
    if problems:
        return {}, problems
    lines = text.splitlines()
    out: dict[str, dict[str, Any]] = {}
    sections = list(SECTIONS)
    too_big = beyond_64_bits(doc, lines)  # an error in its own right (TOML 1.0), not a range

    def add(message: str, section: str, key: str | None = None, case: int | None = None) -> None:
        dotted = section if key is None else f"{section}.{key}"
        # a key inside an inline table has no line of its own: point at its section's line
        line = line_of(lines, section, key) or line_of(lines, section)
        problems.append(Problem(message, key=dotted, line=line, case=case))

    if not isinstance(doc, dict):
        return {}, [Problem("is not a TOML table", case=32)]
    for section, table in doc.items():
        if section not in SECTIONS:
            home = _home_of(section)
            if home and not isinstance(table, dict):
                add(f"{section} is not inside a section; put it under [{home}]", section)
            else:
                close = _suggest(section, sections)
                hint = f"did you mean [{close}]?" if close else "sections: " + ", ".join(sections)
                what = f"section [{section}]" if isinstance(table, dict) else f"key {section} outside any section"
                add(f"unknown {what}; {hint}", section)
            continue
        if isinstance(table, list) and table and all(isinstance(t, dict) for t in table):
            add(f"[[{section}]] is an array of tables; write [{section}] once", section)
            continue
        if not isinstance(table, dict):
            add(f"{section} = {show(table)}: {section} must be a section ([{section}] followed by its "
                f"keys), not {type_name(table)}", section)
            continue
        known = KEYS[section]
        values: dict[str, Any] = {}
        for name, value in table.items():
            key = known.get(name)
            if key is None:
                close = _suggest(name, list(known))
                home = _home_of(name)
                if close:
                    hint = f"did you mean {close}?"
                elif home:
                    hint = f"it belongs in [{home}]"
                else:
                    hint = f"keys of [{section}]: " + ", ".join(known)
                add(f"unknown key {section}.{name}; {hint}", section, name)
                continue
            if key.dotted in too_big:
                problems.append(too_big.pop(key.dotted))
                continue
            try:
                checked = check_value(key, value)
                if key.dotted == "model.base_model":
                    checked = check_base_model(checked, root)
                values[name] = checked
            except BadValue as bad:
                add(f"{key.dotted} = {show(value)} {bad.message}", section, name, bad.case)
        out[section] = values
    problems.extend(too_big.values())  # under a key reported otherwise (unknown, misplaced)
    cross_checks(out, add, root)
    return out, problems
