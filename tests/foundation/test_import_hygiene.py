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
                try:
                    program = ast.parse(value)
                except SyntaxError:
                    continue  # a shell's -c, not Python's
                found += [(node.lineno, m) for sub in ast.walk(program) for _, m in _named_modules(sub)]
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
              "run(['sh', '-c', 'echo $$ > \"$0\" && exec \"$@\"'])\n"
              "from trainconsole.engine import events\nfrom . import sibling\n")
    assert sorted(line.split(": ", 1)[1] for line in bare_imports(source, "x.py")) == sorted([
        "engine.events", "console", "engine.store.db", "engine.lock", "console.app", "engine.train.model"])


# -- private names stay home ----------------------------------------------------------------------
# A leading underscore says "this module's own". Reaching for one from another module (the store's
# parts once did it to each other through the Store they were handed, a helper of files.py was
# called from repair.py) couples two files through a name neither advertises; a shared object or a
# public name says it instead.

# Libraries' private members we use on purpose, each for a reason the module gives at the call.
LIBRARY_PRIVATES = {
    ("console/app.py", "os._exit"),  # leave at once from a dead terminal, no cleanup that could block
    ("engine/data/chat_render.py", "chat_template_utils._compile_jinja_template"),
    ("engine/train/trainer_setup.py", "trainer._save_optimizer_and_scheduler"),
    ("engine/train/trainer_setup.py", "trainer._save_scaler"),
    ("engine/train/trainer_setup.py", "trainer._save_rng_state"),
    ("engine/train/trainer_setup.py", "scheduler._last_lr"),
}


def private_uses(source: str, where: str) -> list[str]:
    """Underscore names reached from outside the module that defines them: imported by name from a
    project module, or read as ``x._name`` where ``x`` is not ``self``/``cls`` and this module does
    not define ``_name`` itself."""
    tree = ast.parse(source, filename=where)
    own = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    own |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign | ast.AnnAssign)
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    own |= {t.attr for n in ast.walk(tree) if isinstance(n, ast.Assign | ast.AnnAssign)
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainconsole."):
            found += [f"{where}:{node.lineno}: {node.module}.{alias.name}" for alias in node.names
                      if alias.name.startswith("_")]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id not in ("self", "cls") and node.attr.startswith("_")
              and not node.attr.startswith("__") and node.attr not in own
              and (where, f"{node.value.id}.{node.attr}") not in LIBRARY_PRIVATES):
            found.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    found = []
    for folder in ("engine", "console"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += private_uses(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not found, "make the name public, or pass a shared object:\n" + "\n".join(found)


def test_the_private_name_scan_sees_each_form() -> None:
    source = ("from trainconsole.engine.store import files as sf\nfrom trainconsole.engine.config.load import _read\n"
              "def add(store):\n    store._conn.execute('x')\n    sf._alive(1)\n    self._conn\n    sf.display\n"
              "class Stats:\n    def _seen(self): ...\ndef use(stats):\n    stats._seen()\n")
    assert sorted(line.split(": ", 1)[1] for line in private_uses(source, "x.py")) == sorted([
        "trainconsole.engine.config.load._read", "store._conn", "sf._alive"])
