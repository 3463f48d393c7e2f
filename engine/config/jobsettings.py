"""Per-job settings: what a job trains with, fixed when it is queued.

A job's settings are the per-job sections of the config (``PER_JOB``: model, lora, training, data,
guards) as they were when the job was added, with the operator's overrides on top: ``--set
KEY=VALUE`` (typed by the schema, as in the console's editor), ``--settings FILE`` and a sidecar
``NAME.toml`` beside ``NAME.jsonl`` in the inbox (TOML with those sections). The result is checked
as a whole, cross-checks included, then stored with the job, so a later edit of config.toml
changes no queued job; a retry keeps them. Engine-wide sections (queue, hardware, report, paths,
launcher) are refused with the key named: they belong to the engine, not to one job.

``with_settings(cfg, settings)`` is the config a job runs with (its settings over the engine's
config.toml); the worker and the daemon's per-job decisions (OOM ladder, watchdog) use it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import tomlkit

from trainconsole.engine.config.check import (
    BadValue,
    check_base_model,
    check_value,
    looks_like_path,
    show,
    validate_document,
)
from trainconsole.engine.config.edit import lookup_key, parse_value
from trainconsole.engine.config.load import Config, read_config_file
from trainconsole.engine.config.parse import decode, parse
from trainconsole.engine.config.schema import KEYS, SECTIONS
from trainconsole.engine.errors import ConfigError

PER_JOB: Final = ("model", "lora", "training", "data", "guards")
Settings = dict[str, dict[str, Any]]


def _engine_wide(dotted: str, where: str) -> ConfigError:
    section = dotted.split(".", 1)[0]
    return ConfigError(f"{where}{dotted}: [{section}] is an engine setting, not a per-job one; change it in "
                       f"config.toml (per-job sections: {', '.join(PER_JOB)})", case=32)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line: the key checked to be per-job, the value typed."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: write KEY=VALUE, e.g. training.learning_rate=1e-4")
    found = lookup_key(key)  # unknown key: UsageError naming it, with a suggestion
    if found.section not in PER_JOB:
        raise _engine_wide(found.dotted, "--set ")
    try:
        return found.dotted, parse_value(found.dotted, raw)
    except ConfigError as exc:
        raise ConfigError(f"--set {exc.message}", case=exc.case) from None


def read_overlay(path: Path) -> Settings:
    """A TOML file of per-job sections (``--settings`` or an inbox sidecar), values checked one
    by one, a relative ``model.base_model`` taken relative to the file's folder."""
    shown = str(path)
    text, problems = decode(read_config_file(path))
    doc: Any = None
    if text is not None and not problems:
        doc, problems = parse(text)
    if problems:
        raise ConfigError(problems[0].render(shown), case=problems[0].case)
    if not isinstance(doc, dict):
        raise ConfigError(f"{shown}: not a TOML table", case=32)
    out: Settings = {}
    for section, table in doc.items():
        if section not in SECTIONS:
            raise ConfigError(f"{shown}: unknown section [{section}]; per-job sections: {', '.join(PER_JOB)}",
                              case=32)
        if not isinstance(table, dict):
            raise ConfigError(f"{shown}: {section} must be a section ([{section}] and its keys)", case=32)
        for name, value in table.items():
            dotted = f"{section}.{name}"
            if section not in PER_JOB:
                raise _engine_wide(dotted, f"{shown}: ")
            key = KEYS[section].get(name)
            if key is None:
                lookup_key(dotted)  # raises, naming the key and a close match
                raise ConfigError(f"{shown}: unknown key {dotted}")
            try:
                checked = check_value(key, value)
                if dotted == "model.base_model" and looks_like_path(checked):
                    checked = check_base_model(checked, path.absolute().parent)
            except BadValue as bad:
                raise ConfigError(f"{shown}: {dotted} = {show(value)} {bad.message}", case=bad.case) from None
            out.setdefault(section, {})[name] = checked
    return out


def assignments(pairs: Iterable[tuple[str, Any]], *, cwd: Path | None = None) -> Settings:
    """``--set`` pairs as an overlay (a relative base_model path is relative to ``cwd``)."""
    out: Settings = {}
    for dotted, value in pairs:
        section, name = dotted.split(".", 1)
        if dotted == "model.base_model" and isinstance(value, str) and looks_like_path(value):
            try:
                value = check_base_model(value, cwd or Path.cwd())
            except BadValue as bad:
                raise ConfigError(f"--set {dotted} = {show(value)} {bad.message}", case=bad.case) from None
        out.setdefault(section, {})[name] = value
    return out


def base_settings(cfg: Config) -> Settings:
    """The per-job sections of config.toml as they are now."""
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in PER_JOB}


def resolve(cfg: Config, overlays: Iterable[Settings]) -> Settings:
    """config.toml's per-job sections with each overlay applied in turn, checked as a whole
    (cross-checks such as epochs and max_steps both 0 included). Raises ``ConfigError`` naming
    the key; returns plain data ready to store."""
    merged = base_settings(cfg)
    for overlay in overlays:
        for section, values in overlay.items():
            merged.setdefault(section, {}).update(values)
    values, problems = validate_document(tomlkit.dumps(merged), root=cfg.root)
    if problems:
        raise ConfigError("; ".join(p.render("") for p in problems), case=problems[0].case)
    return {name: {**base_settings(cfg)[name], **values.get(name, {})} for name in PER_JOB}


def with_settings(cfg: Config, settings: Mapping[str, Mapping[str, Any]] | None) -> Config:
    """The config a job runs with: its stored settings over the engine's config. Keys a newer or
    older schema does not know are ignored; keys the settings lack keep config.toml's value."""
    if not settings:
        return cfg
    sections = {}
    for name in PER_JOB:
        stored = settings.get(name)
        if not isinstance(stored, Mapping):
            continue
        known = {k: (list(v) if isinstance(v, list | tuple) else v) for k, v in stored.items() if k in KEYS[name]}
        sections[name] = dataclasses.replace(getattr(cfg, name), **known)
    return dataclasses.replace(cfg, **sections)


def differences(cfg: Config, settings: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``section.key -> value`` where a job's settings differ from config.toml now (for people)."""
    now = base_settings(cfg)
    out: dict[str, Any] = {}
    for section, values in settings.items():
        for key, value in values.items():
            if now.get(section, {}).get(key) != value:
                out[f"{section}.{key}"] = value
    return out


def overlay_file_for(data_file: Path) -> Path:
    """The inbox sidecar of a data file: ``NAME.toml`` beside ``NAME.jsonl``."""
    return data_file.with_name(os.path.splitext(data_file.name)[0] + ".toml")
