"""The configured model's tokenizer, for the data gate's token statistics, without torch.

``trainconsole validate`` must answer quickly and never import torch, yet its token counts must be
the ones training will see. So the counts come from the encoder training uses
(``trainconsole.engine.data.encode.token_counter``: the chat template, then the fast tokenizer), fed
a light stand-in for a transformers tokenizer built from the model folder's files with the
``tokenizers`` library: ``tokenizer.json``, the chat template, and the special tokens the template
may use. (``AutoTokenizer`` would do the same but imports torch on the way.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from trainconsole.engine.config import Config
from trainconsole.engine.data.builtin import BUILTIN_PREFIX, builtin_folder, is_intact
from trainconsole.engine.data.encode import token_counter
from trainconsole.engine.data.scan import TokenCounter
from trainconsole.engine.errors import ConfigError

_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class LightTokenizer:
    """What the renderer and the counter read from a tokenizer: ``chat_template``,
    ``special_tokens_map``, ``backend_tokenizer``."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        tokenizer_json = folder / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise ConfigError(f"{folder}: no tokenizer.json (a fast tokenizer is needed for token counts)")
        try:
            self.backend_tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # the Rust side raises a bare Exception for a corrupt file
            raise ConfigError(f"{tokenizer_json}: cannot be loaded ({exc})") from None
        config: dict[str, Any] = {}
        config_file = folder / "tokenizer_config.json"
        if config_file.is_file():
            try:
                loaded = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{config_file}: unreadable ({exc})") from None
            if isinstance(loaded, dict):
                config = loaded
        template_file = folder / "chat_template.jinja"
        template = config.get("chat_template")
        if template_file.is_file():
            template = template_file.read_text(encoding="utf-8")
        self.chat_template: Any = template
        self.special_tokens_map: dict[str, str] = {}
        for key in _SPECIAL:
            value = config.get(key)
            if isinstance(value, dict):  # the AddedToken form
                value = value.get("content")
            if isinstance(value, str):
                self.special_tokens_map[key] = value
        self.name_or_path = str(folder)


def model_folder(cfg: Config, *, build: bool = True) -> tuple[Path | None, str]:
    """The local folder of the configured model, or (None, why not). A built-in model not yet built
    is built in a child process (the build needs torch; this process must not import it)."""
    base: str = cfg.model.base_model
    if base.startswith(BUILTIN_PREFIX):
        folder = builtin_folder(cfg.layout().cache, base)
        if is_intact(folder):
            return folder, ""
        if not build:
            return None, (f"{base} is not built yet (it is built on first use in a workspace: "
                          "`trainconsole init`, then run this from there)")
        print(f"trainconsole: building {base} once, for token counts", file=sys.stderr)
        code = ("import sys; from trainconsole.engine.train.model import ensure_builtin; "
                "ensure_builtin(sys.argv[1], __import__('pathlib').Path(sys.argv[2]))")
        done = subprocess.run([sys.executable, "-c", code, base, str(cfg.layout().cache)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not is_intact(folder):
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"building {base} failed: {last}"
        return folder, ""
    local = Path(base).expanduser()
    if not local.is_absolute():
        local = Path(cfg.root) / local
    if local.is_dir():
        return local.resolve(), ""
    return None, f"model.base_model {base!r} is not a local folder (hub models are not fetched here)"


def token_counter_for(cfg: Config, *, build: bool = True) -> tuple[TokenCounter | None, str]:
    """A token counter for the configured model, or (None, why there is none)."""
    folder, why = model_folder(cfg, build=build)
    if folder is None:
        return None, why
    try:
        tokenizer = LightTokenizer(folder)
        from trainconsole.engine.config import templates

        # Counted with the template training will use (data.chat_template), not the model's own.
        tokenizer.chat_template = templates.resolve(cfg.data.chat_template, cfg.root) or tokenizer.chat_template
        if not tokenizer.chat_template:
            return None, f"{folder}: the tokenizer has no chat template"
    except ConfigError as exc:
        return None, exc.message
    except ImportError as exc:
        return None, f"token counting is unavailable ({exc})"
    return token_counter(tokenizer), ""
