"""Where a built-in base model (``builtin:<name>``) lives in the cache, and whether the copy there
is whole: what the data gate needs to count tokens with it, without torch.

The build itself (``trainconsole.engine.train.model.ensure_builtin``) needs torch and stays in the
training wing; it writes ``MANIFEST`` last, recording every file's size and hash, and stamps it
with ``RECIPE_VERSION``."""

from __future__ import annotations

import json
from pathlib import Path

from trainconsole.engine.checkpoints import sha256_file

BUILTIN_PREFIX = "builtin:"
MANIFEST = "trainconsole-builtin.json"
# Bump when the recipe (engine/train/model.py) changes what is built, so old caches are rebuilt
# rather than trusted.
RECIPE_VERSION = 1


def builtin_folder(cache: Path, base_model: str) -> Path:
    """The cache folder of ``builtin:<name>`` (whether or not it has been built)."""
    return Path(cache).expanduser().resolve() / "models" / base_model.removeprefix(BUILTIN_PREFIX)


def is_intact(folder: Path) -> bool:
    """True when the folder holds a complete build of the current recipe (every file present, with
    the size and hash its manifest recorded)."""
    try:
        body = json.loads((folder / MANIFEST).read_text())
        if body.get("recipe") != RECIPE_VERSION or not body.get("files"):
            return False
        for name, want in body["files"].items():
            path = folder / name
            if path.stat().st_size != want["size"] or sha256_file(path) != want["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True
