"""``config.toml``: loaded with tomlkit, checked against ``trainconsole.engine.config.schema``, frozen.

Every problem in a file is reported at once, one line each, naming the file, the line where it
can be found and the key, and saying what is allowed. An empty file is valid: every key has a
default. Relative paths in the file are relative to the file's folder."""

from __future__ import annotations

import json
import os
import select
import shutil
import stat
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainconsole.engine.config.check import Problem, validate_document
from trainconsole.engine.config.schema import (
    KEYS,
    SECTIONS,
    DataConfig,
    GuardsConfig,
    HardwareConfig,
    LauncherConfig,
    LoraConfig,
    ModelConfig,
    PathsConfig,
    QueueConfig,
    ReportConfig,
    RetentionConfig,
    TrainingConfig,
    allowed_text,
)
from trainconsole.engine.errors import ConfigError, UsageError
from trainconsole.engine.layout import Layout

__all__ = [
    "Config", "ConfigError", "ConfigProblems", "ConfigUnreadable", "DataConfig", "GuardsConfig",
    "HardwareConfig", "LauncherConfig", "LoraConfig", "ModelConfig", "PathsConfig", "Problem", "QueueConfig",
    "ReportConfig", "RetentionConfig", "TrainingConfig", "check_warnings", "default_config_text", "load_config", "parse_config_text",
]

MAX_CONFIG_BYTES = 1 << 20  # a config file this large is a mistake (wrong file given)
PIPE_WAIT_S = 5.0  # how long a named pipe given as the config may stay silent


class ConfigProblems(ConfigError):
    """The file was read but is not a valid config; ``problems`` lists every finding."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        case = next((p.case for p in problems if p.case is not None), None)
        super().__init__("\n".join(p.render(file) for p in problems), case=case)


class ConfigUnreadable(ConfigError, UsageError):
    """The path is not a readable file (a folder, no permission): a usage mistake, exit 2."""


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``source`` is the file it came from (absolute after loading)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    guards: GuardsConfig = field(default_factory=GuardsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    source: Path = Path("config.toml")

    @property
    def root(self) -> Path:
        """The config file's folder: relative paths in the file are relative to it."""
        return self.source.absolute().parent

    def resolve(self, value: str) -> Path:
        """A path as written in the file, made absolute (``~`` expanded, relative to ``root``)."""
        return Path(os.path.normpath(self.root / Path(value).expanduser()))

    def layout(self) -> Layout:
        p = self.paths
        return Layout(queue=self.resolve(p.queue), runs=self.resolve(p.runs),
                      adapters=self.resolve(p.adapters), cache=self.resolve(p.cache))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The sections as plain data (for ``--json`` output and the console)."""
        return {name: asdict(getattr(self, name)) for name in SECTIONS}


def read_config_file(path: Path) -> bytes:
    """The file's bytes, bounded; a directory, a missing or unreadable file is a ConfigUnreadable
    naming the path."""
    shown = str(path)
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = None  # the open below says why, precisely
    # Pipes (`--config <(...)`) and /dev/null (all defaults) are read like files; reads are bounded.
    if mode is not None and stat.S_ISDIR(mode):
        raise ConfigUnreadable(
            f"{shown}: is a folder, not a config file (did you mean {path / 'config.toml'}?)")
    try:
        if mode is not None and stat.S_ISFIFO(mode):
            data = _read_pipe(path, shown)
        else:
            with path.open("rb") as fh:
                data = fh.read(MAX_CONFIG_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigProblems(shown, [Problem(
            f"no such config file; create one with `trainconsole init {_init_dir(path)}` "
            "(writes the commented default and the queue folders), or point --config or "
            "$TRAINCONSOLE_CONFIG at an existing one", case=31)]) from None
    except IsADirectoryError:
        raise ConfigUnreadable(
            f"{shown}: is a folder, not a config file (did you mean {path / 'config.toml'}?)") from None
    except PermissionError:
        raise ConfigUnreadable(f"{shown}: permission denied reading the config file") from None
    except OSError as exc:
        raise ConfigUnreadable(f"{shown}: cannot read the config file: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigProblems(shown, [Problem(
            f"is larger than {MAX_CONFIG_BYTES // 1024} KiB; this is not a config file")])
    return data


def _read_pipe(path: Path, shown: str) -> bytes:
    # A named pipe nobody writes to would block a plain open() forever; `<(...)` has a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        deadline = time.monotonic() + PIPE_WAIT_S
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ConfigUnreadable(
                    f"{shown}: is a named pipe that nothing wrote a config to within "
                    f"{PIPE_WAIT_S:g} s; give a regular file")
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _init_dir(path: Path) -> str:
    parent = str(path.parent)
    return parent if parent != "." else "."


def parse_config_text(data: bytes | str, *, file: str = "config.toml",
                      root: Path | None = None) -> Config:
    """Validate config text (``file`` names it in messages, ``root`` anchors relative paths)."""
    source = (root or Path.cwd()) / (Path(file).name or "config.toml")
    values, problems = validate_document(data, root=source.parent)
    if problems:
        raise ConfigProblems(file, problems)
    sections = {name: SECTIONS[name](**values.get(name, {})) for name in SECTIONS}
    return Config(source=source, **sections)


def load_config(path: Path | str) -> Config:
    """Read, validate and freeze a config file. Raises ``ConfigError`` naming file, line and key."""
    path = Path(path).expanduser()
    data = read_config_file(path)
    cfg = parse_config_text(data, file=str(path), root=path.absolute().parent)
    return Config(source=Path(os.path.normpath(path.absolute())),
                  **{name: getattr(cfg, name) for name in SECTIONS})


# ---------------------------------------------------------------- the shipped, commented default

_HEADER = """\
# trainconsole configuration.
#
# Every key is optional: a key left out (or an empty file) takes the default shown here.
# Relative paths are relative to this file's folder; ~ is expanded.
# Check a change with `trainconsole check-config`. The console edits values in place and keeps
# your comments.
"""


def _toml_value(value: Any) -> str:
    """Written by hand, not by tomlkit, so the shipped file cannot drift with tomlkit's formatting."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for every default we ship
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def default_config_text() -> str:
    """The commented default config; the shipped ``config.toml`` is exactly this text."""
    out = _HEADER.splitlines()
    for section, cls in SECTIONS.items():
        out += ["", "", f"[{section}]", f"# {(cls.__doc__ or '').strip()}"]
        for key in KEYS[section].values():
            doc = textwrap.wrap(key.spec.doc, width=96)
            if key.kind not in ("bool", "str") or key.spec.choices:
                doc += textwrap.wrap(f"Allowed: {allowed_text(key)}.", width=96)
            out += ["", *(f"# {line}" for line in doc), f"{key.name} = {_toml_value(key.default)}"]
    return "\n".join(out).rstrip("\n") + "\n"


# ---------------------------------------------------------------- legal but risky

def check_warnings(cfg: Config) -> list[str]:
    """Values that are allowed but likely to hurt (memo cases 34, 36, 37, 38), one line each."""
    t = cfg.training
    where = str(cfg.source)
    notes: list[str] = []
    if t.batch_size > 64:
        notes.append(f"training.batch_size = {t.batch_size} is large and may run a GPU out of memory "
                     "(case 36); the same effective batch with less memory: a smaller batch_size and "
                     "a larger gradient_accumulation")
    elif t.batch_size * t.max_length > 131072:
        notes.append(f"training.batch_size * training.max_length = {t.batch_size * t.max_length} tokens "
                     "per micro-batch may run a GPU out of memory (case 36); lower batch_size and raise "
                     "gradient_accumulation")
    if t.max_length > 8192:
        notes.append(f"training.max_length = {t.max_length} needs a lot of GPU memory per example "
                     "(case 34); most chat data fits in 2048-4096")
    if t.learning_rate > 1e-3:
        notes.append(f"training.learning_rate = {t.learning_rate:g} is high for LoRA and may diverge "
                     "(case 38); 1e-4 to 3e-4 is usual")
    elif t.learning_rate < 1e-5:
        notes.append(f"training.learning_rate = {t.learning_rate:g} is very low; the adapter will "
                     "barely change (case 37); 1e-4 to 3e-4 is usual")
    if 0 < t.max_steps < t.save_steps:
        notes.append(f"training.save_steps = {t.save_steps} is above training.max_steps = "
                     f"{t.max_steps}: no checkpoint before the end, so an interrupted job restarts "
                     "from zero")
    if t.eval_fraction == 0:
        notes.append("training.eval_fraction = 0: nothing is held out, so evaluation, the plateau "
                      "and early-stopping guards cannot judge the run")
    if cfg.guards.alert_command and not _runnable(cfg, cfg.guards.alert_command[0]):
        notes.append(f"guards.alert_command: program {cfg.guards.alert_command[0]!r} is not found (not "
                     "on PATH, or not an executable file), so alerts will only be logged")
    base = Path(cfg.model.base_model)
    try:
        no_config_json = base.is_absolute() and base.is_dir() and not (base / "config.json").is_file()
    except OSError as exc:  # Path.is_file raises (not False) inside a folder we may not search
        no_config_json = False
        notes.append(f"model.base_model = {str(base)!r} cannot be read: {exc.strerror or exc}")
    if no_config_json:
        notes.append(f"model.base_model = {str(base)!r} has no config.json: not a model folder, or an "
                     "incomplete copy (case 12)")
    from trainconsole.engine.reporters import missing_reporters

    notes += missing_reporters(cfg.report.to)
    if cfg.model.trust_remote_code:
        notes.append("model.trust_remote_code = true runs Python code shipped with the model; only "
                     "for models whose author you trust")
    return [f"{where}: {n}" for n in notes]


def _runnable(cfg: Config, program: str) -> bool:
    if os.sep in program or program.startswith("~"):
        # a path to a program is relative to the config folder, like every other path
        where = cfg.resolve(program)
        return where.is_file() and os.access(where, os.X_OK)
    return shutil.which(program) is not None
