"""The import contracts in pyproject.toml (``[tool.importlinter]``, checked by ``lint-imports`` in
``make test``) hold on this tree, and each of them really checks: a copy of the tree with one
deliberately bad import per contract breaks every one, so a contract that silently stopped
looking (a renamed package, a wrong root, an over-broad ignore) fails here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from importlinter.api import read_configuration

from tests.helpers import ROOT

LINT = Path(sys.executable).parent / "lint-imports"

# One import per contract id, each against that contract alone: (file, the line appended to it).
BAD = {
    # the engine reaching up into the console
    "console-on-engine": ("engine/names.py", "import trainconsole.console.series"),
    # the data wing and the store are independent floors-mates
    "engine-floors": ("engine/data/long_text.py", "import trainconsole.engine.store.scheduling"),
    # the console importing the worker's code instead of starting it as a process
    "train-room": ("console/series.py", "import trainconsole.engine.train.faults"),
    # the daemon importing torch
    "torch-wall": ("engine/daemon/notify.py", "import torch"),
    # two base modules importing each other (the floor allows either direction, not both)
    "no-cycles": ("engine/catalog.py", "import trainconsole.engine.events"),
}


def _tree(tmp_path: Path) -> Path:
    """A copy of the two trees laid out as installed (``trainconsole/engine``, ``trainconsole/console``)
    with this pyproject.toml. lint-imports puts its working folder first on sys.path, so the copy,
    not the installed checkout, is what it reads."""
    root = tmp_path / "tree"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("engine", "console"):
        shutil.copytree(ROOT / name, root / "trainconsole" / name, ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    # Wide columns: a contract's name and its verdict stay on one line.
    env = {"PATH": str(LINT.parent), "COLUMNS": "500", "HOME": str(root)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True,
                          timeout=300, env=env)


def _verdicts(output: str, names: dict[str, str]) -> dict[str, str]:
    verdicts = {}
    for line in output.splitlines():
        for contract_id, name in names.items():
            if line.startswith(name + " "):
                verdicts[contract_id] = line[len(name) + 1:].split()[0]
    return verdicts


def test_every_contract_holds_on_this_tree_and_breaks_on_a_bad_import(tmp_path: Path) -> None:
    contracts = read_configuration(str(ROOT / "pyproject.toml"))["contracts_options"]
    names = {c["id"]: c["name"] for c in contracts}
    # A new contract needs its own bad import here, or this test cannot say it checks anything.
    assert set(names) == set(BAD)

    root = _tree(tmp_path)
    clean = _lint(root)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    # The copy was read, whole: the two trees' modules, not an empty or foreign graph.
    analysed = int(clean.stdout.split("Analyzed ", 1)[1].split()[0])
    assert analysed >= len(list((ROOT / "engine").rglob("*.py"))) + len(list((ROOT / "console").rglob("*.py")))
    assert _verdicts(clean.stdout, names) == dict.fromkeys(names, "KEPT")

    for file, line in BAD.values():
        with (root / "trainconsole" / file).open("a", encoding="utf-8") as fh:
            fh.write(f"\n{line}  # deliberately bad\n")
    bad = _lint(root)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert _verdicts(bad.stdout, names) == dict.fromkeys(names, "BROKEN"), bad.stdout
    for contract_id, (_file, line) in BAD.items():
        imported = line.split()[-1]
        assert imported.rsplit(".", 1)[-1] in bad.stdout, (contract_id, bad.stdout)
