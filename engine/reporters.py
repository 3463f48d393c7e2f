"""Which metrics libraries ``report.to`` may name, the package each needs, and whether it is there.

Torch-free and import-free: whether a package is installed is asked of the import system
(``importlib.util.find_spec``), never answered by importing it (``wandb`` alone takes seconds).
The worker's side, which hands the names to the Trainer's ``report_to``, is
``trainconsole.engine.train.reporting``."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Final

# report.to name -> (the module the Trainer's integration imports, the pip extra that provides it)
PACKAGES: Final[dict[str, tuple[str, str]]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
}


def installed(name: str) -> bool:
    module = PACKAGES[name][0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as absent
        return False


def missing_reporters(names: Iterable[str]) -> list[str]:
    """One line per ``report.to`` entry whose package is not installed (empty when all are)."""
    out = []
    for name in names:
        if name in PACKAGES and not installed(name):
            module, extra = PACKAGES[name]
            out.append(f"report.to names \"{name}\" but the {module} package is not installed, so "
                       f"jobs train without it; install it with pip install 'trainconsole[{extra}]'")
    return out
