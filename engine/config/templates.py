"""``data.chat_template``: a training chat template in place of the model's own.

Many chat models ship a template without ``{% generation %}`` markers whose output is not
prefix-stable (Qwen3 drops earlier reasoning, Llama 3 stamps a date), so assistant tokens cannot be
told apart. TRL maintains training versions of those templates (``trl/chat_templates/
NAME_training.jinja``, the files ``trl.chat_template_utils.get_training_chat_template`` picks
from). They are read here as files from an installed ``trl``, without importing it: importing
``trl.chat_template_utils`` pulls in ``datasets`` and ``pyarrow``, which the engine has no other use
for. A value with a slash or a ``.jinja`` ending is a file of the operator's own instead.

Torch-free: ``check-config``, ``validate`` and the worker all resolve the value the same way."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from trainconsole.engine.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.]*$")
_SUFFIX = "_training.jinja"
KEY = "data.chat_template"


def is_file_value(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith(".jinja") or value.startswith(("~", "."))


def trl_templates_dir() -> Path | None:
    """trl's training templates folder, or None when trl is not installed."""
    try:
        spec = importlib.util.find_spec("trl")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "chat_templates"
    return folder if folder.is_dir() else None


def trl_names() -> list[str]:
    folder = trl_templates_dir()
    if folder is None:
        return []
    return sorted(p.name.removesuffix(_SUFFIX) for p in folder.glob(f"*{_SUFFIX}"))


def problem(value: str, root: Path) -> str | None:
    """Why ``value`` names no usable template (one line, without the key), or None."""
    try:
        resolve(value, root)
    except ConfigError as exc:
        return exc.message
    return None


def resolve(value: str, root: Path) -> str | None:
    """The template text ``value`` names (None for "": the model's own). Raises ConfigError."""
    if not value:
        return None
    if is_file_value(value):
        path = Path(os.path.normpath(root / Path(value).expanduser()))
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"names no such file ({path}); give a .jinja file or a TRL template name") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot be read ({path}): {getattr(exc, 'strerror', None) or exc}") from None
        if "{{" not in text and "{%" not in text:
            raise ConfigError(f"{path} is not a Jinja chat template (no {{{{ or {{% in it)")
        return text
    if not _NAME.match(value):
        raise ConfigError("must be a .jinja file or the name of a TRL training template such as \"qwen3\"")
    folder = trl_templates_dir()
    if folder is None:
        raise ConfigError(f"names TRL's training template {value!r}, but trl is not installed: pip install "
                          "'trainconsole[templates]', or give a .jinja file")
    path = folder / f"{value}{_SUFFIX}"
    if not path.is_file():
        raise ConfigError(f"is not one of TRL's training templates; they are: {', '.join(trl_names())}")
    return path.read_text(encoding="utf-8")
