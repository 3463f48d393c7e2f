"""Only engine/train/ may import torch, peft, accelerate or transformers. Everything else (the
console, the daemon, every command line) stays light, so `trainconsole status` answers at once and
the daemon stays small. Each check runs in a fresh interpreter: in this one, some other test may
already have imported torch. (The import contracts in pyproject.toml state the same wall for the
code as written; this file measures what a process really loads.) And every import names the
trees in full: ``trainconsole.engine``, ``trainconsole.console``."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from trainconsole.console.cli import COMMANDS

HEAVY = ("torch", "peft", "accelerate", "transformers")

# Lists every module of `trainconsole.console` and of `trainconsole.engine` outside its `train` (new modules are covered
# without touching this test), imports them all, and prints what heavy packages came along.
# `trainconsole.engine.train` is skipped before it is imported: even its __init__ belongs to the torch side.
PROBE = r"""
import importlib, json, pkgutil, sys, traceback

HEAVY = @HEAVY@
SKIP = ("trainconsole.engine.train",)

def walk(package):
    names = [package]
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__, package + "."):
        if info.name in SKIP:
            continue
        names += walk(info.name) if info.ispkg else [info.name]
    return names

only = sys.argv[1:]
names = only or walk("trainconsole.engine") + walk("trainconsole.console")
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc(limit=3)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({"modules": names, "failed": failed, "heavy": heavy}))
""".replace("@HEAVY@", repr(HEAVY))


def _probe(*modules: str) -> dict[str, object]:
    run = subprocess.run([sys.executable, "-c", PROBE, *modules], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def _top_level(heavy: object) -> list[str]:
    assert isinstance(heavy, list)
    return sorted({str(m).split(".")[0] for m in heavy})


def test_light_modules_never_import_torch_peft_accelerate_or_transformers() -> None:
    result = _probe()
    modules = result["modules"]
    assert isinstance(modules, list)
    # The walk really found the tree (and skipped the torch side).
    assert {"trainconsole.engine.catalog", "trainconsole.engine.events", "trainconsole.console.cli"} <= set(modules)
    assert not any(str(m).startswith("trainconsole.engine.train") for m in modules)
    assert not result["failed"], f"modules that do not even import: {result['failed']}"
    if result["heavy"]:
        # Name the culprits: one fresh interpreter per module.
        culprits = {m: _top_level(_probe(str(m))["heavy"]) for m in modules}
        culprits = {m: h for m, h in culprits.items() if h}
        pytest.fail(f"heavy packages imported outside engine/train/: {culprits}")


def test_the_probe_sees_a_heavy_import() -> None:
    """Without this, a probe that looked in the wrong place would pass forever."""
    assert "torch" in _top_level(_probe("torch")["heavy"])


# The wrapper runs the real entry point, then reports sys.modules, whatever the command did.
CLI_PROBE = r"""
import json, sys
from trainconsole.console.cli import main
HEAVY = @HEAVY@
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in HEAVY})
print(json.dumps({"code": code, "heavy": heavy}))
""".replace("@HEAVY@", repr(HEAVY))


def _help_cases() -> list[object]:
    cases: list[object] = [pytest.param(["--help"], id="trainconsole --help")]
    for name, (module, _) in COMMANDS.items():
        argv = [name, "--help"]
        marks = []
        if importlib.util.find_spec(f"trainconsole.console.commands.{module}") is None:
            marks.append(pytest.mark.skip(reason=f"console/commands/{module}.py is not written yet"))
        cases.append(pytest.param(argv, marks=marks, id=f"trainconsole {name} --help"))
    return cases


@pytest.mark.parametrize("argv", _help_cases())
def test_command_line_help_never_imports_torch(argv: list[str]) -> None:
    run = subprocess.run([sys.executable, "-c", CLI_PROBE, *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, run.stdout + run.stderr
    assert result["heavy"] == [], f"`trainconsole {' '.join(argv)}` imported {result['heavy']}"


def test_status_help_imports_no_torch_per_the_interpreters_own_import_log() -> None:
    """The same claim measured another way: `python -X importtime` logs the modules that `import`
    statements load (not a module loaded by importlib.import_module itself, so the command module
    is missing from the log, but everything it imports is there)."""
    if importlib.util.find_spec("trainconsole.console.commands.queue_cmds") is None:
        pytest.skip("console/commands/queue_cmds.py is not written yet")
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "trainconsole.console.cli", "status", "--help"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"trainconsole.console", "argparse"} <= imported  # the log is really there
    assert not {m.split(".")[0] for m in imported} & set(HEAVY)


# -- the full names -----------------------------------------------------------------------------
# The trees install as `trainconsole.engine` and `trainconsole.console`. A bare `engine.x` still
# resolves from the repository root (the folders are there), so it passes every test run from the
# checkout and fails in a workspace, or worse, loads a second copy of a module beside the first.

BARE = ("engine", "console")
SCANNED = ("engine", "console", "tests", "bench")


_IMPORTERS = ("import_module", "__import__", "find_spec")


def _named_modules(node: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for each module ``node`` names: import statements; the first argument of
    ``importlib.import_module``/``__import__``/``find_spec``; what follows ``-m`` in an argv list;
    the imports inside a ``-c`` program."""
    if isinstance(node, ast.Import):
        return [(node.lineno, alias.name) for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [(node.lineno, node.module)] if node.level == 0 and node.module else []
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in _IMPORTERS and isinstance(node.args[0].value, str):
            return [(node.lineno, node.args[0].value)]
    if isinstance(node, ast.List | ast.Tuple):
        found: list[tuple[int, str]] = []
        values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
        for flag, value in zip(values, values[1:], strict=False):
            if flag == "-m" and isinstance(value, str):
                found.append((node.lineno, value))
            elif flag == "-c" and isinstance(value, str):
                found += [(node.lineno, m) for sub in ast.walk(ast.parse(value)) for _, m in _named_modules(sub)]
        return found
    return []


def bare_imports(source: str, where: str) -> list[str]:
    """Every import of a bare ``engine``/``console`` name in ``source``."""
    return [f"{where}:{line}: {name}" for node in ast.walk(ast.parse(source, filename=where))
            for line, name in _named_modules(node) if name.split(".")[0] in BARE]


def test_code_imports_the_trees_by_their_full_names() -> None:
    found = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "fixtures" in path.parts or "__pycache__" in path.parts:
                continue
            found += bare_imports(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not found, "use trainconsole.engine / trainconsole.console:\n" + "\n".join(found)


def test_the_bare_name_scan_sees_each_form() -> None:
    source = ("import engine.events\nfrom console import cli\nfrom engine.store.db import Database\n"
              "cmd = ['python', '-m', 'engine.lock']\nlock = queue / 'engine.lock'\n"
              "importlib.import_module('console.app')\n"
              "run([sys.executable, '-c', 'import sys; from engine.train.model import build'])\n"
              "from trainconsole.engine import events\nfrom . import sibling\n")
    assert sorted(line.split(": ", 1)[1] for line in bare_imports(source, "x.py")) == sorted([
        "engine.events", "console", "engine.store.db", "engine.lock", "console.app", "engine.train.model"])
