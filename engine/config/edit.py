"""Editing one value of ``config.toml`` in place: tomlkit keeps every comment and the layout, the
edited text is validated whole before it replaces the file, and the replacement is atomic."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from trainconsole.engine import fsio
from trainconsole.engine.config.check import BadValue, Problem, check_value, show
from trainconsole.engine.config.load import (
    Config,
    ConfigProblems,
    load_config,
    parse_config_text,
    read_config_file,
)
from trainconsole.engine.config.schema import KEYS, Key, allowed_text
from trainconsole.engine.errors import ConfigError, UsageError

__all__ = ["lookup_key", "parse_value", "set_value"]


def lookup_key(dotted: str) -> Key:
    """The schema entry of ``section.key`` (type, default, documentation, allowed values)."""
    section, _, name = dotted.partition(".")
    if section not in KEYS or name not in KEYS[section]:
        import difflib

        every = [f"{s}.{k}" for s, keys in KEYS.items() for k in keys]
        close = difflib.get_close_matches(dotted, every, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UsageError(f"unknown config key {dotted!r}{hint}")
    return KEYS[section][name]


def parse_value(dotted: str, text: str) -> Any:
    """A value typed by an operator (console, command line) turned into the key's type and checked.

    Strings need no quotes; numbers, booleans and lists are read as TOML (``1e-4``, ``true``,
    ``["q_proj", "v_proj"]``); a list of strings or GPU indices may also be written ``a, b``."""
    key = lookup_key(dotted)
    raw = text.strip()
    value: Any = raw
    if key.kind == "str" or (key.kind == "gpus" and raw == "all") or (key.kind == "modules" and raw == "all-linear"):
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            value = _toml_literal(raw, dotted)
    elif key.kind in ("list[str]", "gpus", "modules") and not raw.startswith("["):
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        value = parts if key.kind != "gpus" else [_toml_literal(p, dotted) for p in parts]
    else:
        value = _toml_literal(raw, dotted)
    try:
        return check_value(key, value)
    except BadValue as bad:
        raise ConfigProblems("", [Problem(f"{dotted} = {show(value)} {bad.message}", key=dotted,
                                                 case=bad.case)]) from None


def _toml_literal(text: str, dotted: str) -> Any:
    import tomlkit  # imported where edited: reading a config never needs it (see parse.parse)

    try:
        return tomlkit.parse(f"v = {text}\n").unwrap()["v"]
    except Exception:  # noqa: BLE001 - any parser failure means the same to the operator
        raise ConfigProblems("", [Problem(
            f"{dotted} = {text} cannot be read: must be {allowed_text(lookup_key(dotted))}",
            key=dotted)]) from None


def set_value(path: Path | str, dotted_key: str, value: Any) -> Config:
    """Set ``section.key`` to ``value`` in the file, keeping every comment and the layout.

    The edited file is validated as a whole before it replaces the old one (temp file, fsync,
    rename), so a bad value never reaches the disk. Returns the new config."""
    import tomlkit

    path = Path(path).expanduser()
    key = lookup_key(dotted_key)
    section, name = key.section, key.name
    raw = read_config_file(path)
    bom = raw.startswith(b"\xef\xbb\xbf")
    try:
        text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
        doc = tomlkit.parse(text)
    except Exception:  # noqa: BLE001 - unreadable as it stands: report it exactly as loading does
        load_config(path)
        raise ConfigProblems(str(path), [Problem("cannot be edited: it is not valid TOML")]) from None
    table = doc.get(section)
    if table is None:
        table = tomlkit.table()
        doc[section] = table
    if not isinstance(table, dict):
        load_config(path)  # reports "must be a table"
        raise ConfigProblems(str(path), [Problem(f"{section} must be a table", key=section)])
    try:
        table[name] = list(value) if isinstance(value, tuple) else value
    except Exception:  # noqa: BLE001 - tomlkit cannot represent the value (e.g. an object)
        raise ConfigProblems(str(path), [Problem(
            f"{dotted_key} = {value!r}: cannot be written to TOML", key=dotted_key)]) from None
    new_text = tomlkit.dumps(doc)
    if text.count("\r\n") * 2 > text.count("\n"):  # keep a Windows file's line endings throughout
        new_text = re.sub(r"(?<!\r)\n", "\r\n", new_text)
    parse_config_text(new_text, file=str(path), root=path.absolute().parent)
    _atomic_write(path, (b"\xef\xbb\xbf" if bom else b"") + new_text.encode("utf-8"))
    return load_config(path)


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace the file whole or not at all, keeping its mode; an operator's symlinked config stays
    a symlink (the file it points at is what is replaced)."""
    target = path.resolve() if path.is_symlink() else path
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError:
        mode = 0o644
    try:
        fsio.write_bytes(target, data, mode=mode)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot save: {exc.strerror or exc}") from None
