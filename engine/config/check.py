"""Checking a config document against the schema, collecting every problem rather than the first.

Torch-free and side-effect free: it reads nothing but the text it is given (and, for a
``base_model`` written as a path, whether that path exists)."""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from trainconsole.engine.config.parse import Problem, beyond_64_bits, decode, line_of, one_line, parse
from trainconsole.engine.config.schema import BUILTIN_MODELS, KEYS, SECTIONS, Key, allowed_text

__all__ = ["BadValue", "Problem", "check_base_model", "check_value", "looks_like_path", "one_line", "show", "type_name",
           "validate_document"]

# ---------------------------------------------------------------- values

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
    _cross_checks(out, add, root)
    return out, problems


def _cross_checks(out: dict[str, dict[str, Any]], add: Any, root: Path) -> None:
    def get(section: str, name: str) -> Any:
        return out.get(section, {}).get(name, KEYS[section][name].default)

    if get("training", "epochs") == 0 and get("training", "max_steps") == 0:
        where = "max_steps" if "max_steps" in out.get("training", {}) else "epochs"
        add("training.epochs and training.max_steps are both 0, so nothing would be trained; set "
            "epochs >= 1, or max_steps >= 1", "training", where)
    if get("queue", "backoff_max_s") < get("queue", "backoff_s"):
        add(f"queue.backoff_max_s = {show(get('queue', 'backoff_max_s'))} is below queue.backoff_s = "
            f"{show(get('queue', 'backoff_s'))}; the longest retry delay must be at least the first",
            "queue", "backoff_max_s")
    warmup = get("training", "warmup_steps")
    if warmup >= 1 and warmup != int(warmup):
        add(f"training.warmup_steps = {show(warmup)} must be a whole number of steps from 1 on (below 1 "
            "it is a share of all steps)", "training", "warmup_steps")
    _check_paths(out, add, root)
    _check_launcher(out, add)
    _check_files(out, add, root)
    if get("model", "load_in_4bit"):
        why = _no_4bit(get("hardware", "device"))
        if why:
            add(f"model.load_in_4bit = true {why}", "model", "load_in_4bit")


def _check_files(out: dict[str, dict[str, Any]], add: Any, root: Path) -> None:
    from trainconsole.engine.config import templates

    template = out.get("data", {}).get("chat_template", "")
    why = templates.problem(template, root) if template else None
    if why:
        add(f"data.chat_template = {show(template)} {why}", "data", "chat_template")
    eval_file = out.get("data", {}).get("eval_file", "")
    if eval_file:
        where = Path(os.path.normpath(root / Path(eval_file).expanduser()))
        if not where.is_file():
            add(f"data.eval_file = {show(eval_file)} names no such file ({where}); give a .jsonl file of "
                'held-out examples, or "" to hold out training.eval_fraction of each file', "data", "eval_file")


def _no_4bit(device: str) -> str | None:
    """Why 4-bit loading cannot work on this machine, or None. bitsandbytes' 4-bit kernels are CUDA's."""
    import importlib.util

    from trainconsole.engine.sysmon import Sysmon

    if device == "cpu":
        return 'needs a CUDA GPU, and hardware.device = "cpu"; set load_in_4bit = false to train on the CPU'
    mon = Sysmon()
    sample = mon.sample()
    if sample.gpu_state != "ok" or not sample.gpus:
        return (f"needs a CUDA GPU and none is visible ({mon.gpu_detail or sample.gpu_state}); set "
                "load_in_4bit = false to train in full precision")
    if importlib.util.find_spec("bitsandbytes") is None:
        return "needs bitsandbytes, which is not installed: pip install 'trainconsole[qlora]'"
    return None


def _check_paths(out: dict[str, dict[str, Any]], add: Any, root: Path) -> None:
    seen: dict[Path, str] = {}
    for name in KEYS["paths"]:
        if name not in out.get("paths", {}) and name != "queue":
            continue  # defaults are distinct, and an absent folder is created at start
        value = out.get("paths", {}).get(name, KEYS["paths"][name].default)
        where = Path(os.path.normpath(root / Path(value).expanduser()))
        why = _folder_problem(where)
        if why:
            add(f"paths.{name} = {show(value)} {why}", "paths", name)
        if name == "cache":
            continue  # the cache may share a folder with anything
        if where in seen:
            add(f"paths.{name} = {show(value)} is the same folder as paths.{seen[where]}; each needs "
                "its own", "paths", name)
        seen[where] = name


def _folder_problem(where: Path) -> str | None:
    """Why ``where`` cannot be (or become) a folder we use, or None. stat only, never raises."""
    try:
        if where.is_dir():
            return None
        if where.exists():
            return f"names a file ({where}); it must be a folder"
        # Created at start; under a file that fails later, far from the config.
        blocker = next((p for p in where.parents if p.exists()), None)
    except OSError as exc:  # a parent without search permission: Path.exists raises, not False
        return f"cannot be checked ({where}): {exc.strerror or exc}"
    if blocker is not None and not blocker.is_dir():
        return f"cannot be created: {blocker} is a file, not a folder"
    return None


# sbatch options the Slurm launcher sets itself: given again in extra_args they would break how the
# daemon follows the job (its log, its name, the warning signal, no requeue by Slurm behind our back).
OWN_SBATCH_OPTIONS = ("--parsable", "--job-name", "-J", "--output", "-o", "--error", "-e", "--open-mode",
                      "--signal", "--requeue", "--no-requeue", "--chdir", "-D", "--wrap", "--export",
                      "--array", "-a", "--wait", "-W", "--hold", "-H")


def _check_launcher(out: dict[str, dict[str, Any]], add: Any) -> None:
    def get(name: str) -> Any:
        return out.get("launcher", {}).get(name, KEYS["launcher"][name].default)

    if get("kind") == "local" and get("max_parallel") > 1:
        add(f"launcher.max_parallel = {show(get('max_parallel'))} needs launcher.kind = \"slurm\"; the "
            "local launcher runs one job at a time", "launcher", "max_parallel")
    for arg in get("extra_args"):
        name = arg.split("=", 1)[0]
        if name in OWN_SBATCH_OPTIONS or (len(name) > 2 and name[:2] in OWN_SBATCH_OPTIONS
                                           and not name.startswith("--")):
            add(f"launcher.extra_args: {show(arg)} is set by the engine itself (it follows each job "
                "by its name, log and signal); remove it", "launcher", "extra_args")
