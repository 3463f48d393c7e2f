"""The memo's first lesson: the bugs that cost it hours (a name used before it was computed, `None
> 0`) are caught by static analysis before anything runs. These tests run the project's own ruff
and mypy settings (pyproject.toml) over small fixture modules, each holding one such bug with an
`# expect: TOOL CODE` comment on its line, and assert every expected report is there. Then they
check that the project itself is clean, which is what makes the guardrail real."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "static"
BIN = Path(sys.executable).parent
RUFF = BIN / "ruff"
MYPY = BIN / "mypy"
PYPROJECT = ROOT / "pyproject.toml"

EXPECT = re.compile(r"#\s*expect:\s*(.+)$")
MYPY_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<msg>.*?)\s+\[(?P<code>[a-z-]+)\]$")


@dataclass(frozen=True)
class Finding:
    tool: str  # "ruff" or "mypy"
    file: str  # fixture file name
    line: int
    code: str  # F821, attr-defined, ...


def expectations(name: str) -> set[Finding]:
    """The `# expect: ruff F821, mypy used-before-def` comments of one fixture."""
    found = set()
    for lineno, text in enumerate((FIXTURES / name).read_text().splitlines(), start=1):
        match = EXPECT.search(text)
        if match:
            for item in match.group(1).split(","):
                tool, code = item.split()
                found.add(Finding(tool, name, lineno, code))
    return found


def _fixture_files() -> list[Path]:
    return sorted(FIXTURES.glob("*.py"))


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> set[Finding]:
    """One ruff run and one mypy run over every fixture, with the project's settings. The files are
    passed explicitly: pyproject excludes the folder from tree-wide runs, and both tools check a
    file named on the command line anyway (ruff unless --force-exclude is given)."""
    files = [str(p.relative_to(ROOT)) for p in _fixture_files()]
    findings: set[Finding] = set()

    ruff = subprocess.run(
        [str(RUFF), "check", "--config", str(PYPROJECT), "--no-cache", "--output-format", "json",
         *files],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert ruff.returncode in (0, 1), f"ruff did not run: {ruff.stderr}"
    for item in json.loads(ruff.stdout):
        findings.add(Finding("ruff", Path(item["filename"]).name, item["location"]["row"], item["code"]))

    cache = tmp_path_factory.mktemp("mypy-cache")
    mypy = subprocess.run(
        [str(MYPY), "--config-file", str(PYPROJECT), "--cache-dir", str(cache), "--no-error-summary",
         "--show-error-codes", "--no-pretty", *files],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert mypy.returncode in (0, 1), f"mypy did not run: {mypy.stdout}{mypy.stderr}"
    for line in mypy.stdout.splitlines():
        match = MYPY_LINE.match(line)
        if match:
            findings.add(Finding("mypy", Path(match["path"]).name, int(match["line"]), match["code"]))
    return findings


@pytest.mark.parametrize(
    "fixture",
    [
        pytest.param("unbound_local.py", marks=pytest.mark.edge(71), id="71-unbound-local"),
        pytest.param("undefined_name.py", marks=pytest.mark.edge(72), id="72-name-error"),
        pytest.param("missing_attribute.py", marks=pytest.mark.edge(73), id="73-attribute-error"),
        pytest.param("missing_key.py", marks=pytest.mark.edge(74), id="74-key-error"),
        pytest.param("index_out_of_range.py", marks=pytest.mark.edge(75), id="75-index-error"),
        pytest.param("none_compare.py", marks=pytest.mark.edge(76), id="76-none-gt-0"),
    ],
)
def test_static_analysis_reports_the_fault(fixture: str, reported: set[Finding]) -> None:
    expected = expectations(fixture)
    assert expected, f"{fixture} has no `# expect:` comment"
    missing = expected - reported
    assert not missing, (
        f"the project's ruff/mypy settings no longer catch {sorted(missing, key=str)}; "
        f"they reported: {sorted((f for f in reported if f.file == fixture), key=str)}"
    )


def test_the_correct_code_passes_both_tools(reported: set[Finding]) -> None:
    """Without this, a fixture run that fails for some other reason (a broken config, a missing
    stub) would look like the tools catching the faults."""
    assert not [f for f in reported if f.file == "clean.py"]


def test_every_expectation_is_in_a_fixture_the_tests_use() -> None:
    """An `# expect:` in a fixture nobody parametrizes would be a silent gap."""
    used = {"unbound_local.py", "undefined_name.py", "missing_attribute.py", "missing_key.py",
            "index_out_of_range.py", "none_compare.py", "clean.py"}
    assert {p.name for p in _fixture_files()} == used


def test_the_use_before_assignment_on_one_path_needs_possibly_undefined() -> None:
    """mypy reports a name bound only in an `if` branch solely with the `possibly-undefined`
    error code, which is off by default: pyproject must keep it enabled."""
    import tomllib

    settings = tomllib.loads(PYPROJECT.read_text())["tool"]["mypy"]
    assert "possibly-undefined" in settings.get("enable_error_code", [])


@pytest.mark.edge(71, 72, 73, 76)
def test_the_project_is_ruff_and_mypy_clean() -> None:
    """The guardrail itself: `make test` runs these and so must stay green. (This may fail while
    someone is mid-edit; it must not at a commit.)"""
    ruff = subprocess.run([str(RUFF), "check", "."], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert ruff.returncode == 0, f"`ruff check .` is not clean:\n{ruff.stdout}{ruff.stderr}"
    # The Makefile's own command: the packages by their installed names, never the two folders by
    # path, which would check each module twice under two names.
    mypy = subprocess.run([str(MYPY), "-p", "trainconsole.engine", "-p", "trainconsole.console"], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert mypy.returncode == 0, f"`make typecheck` is not clean:\n{mypy.stdout}{mypy.stderr}"
