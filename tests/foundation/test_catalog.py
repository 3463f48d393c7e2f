"""The case catalogue is the one source of truth for the 80 cases: complete, consistent with the
memo's numbering, in step with docs/edge-cases.md, and feeding the alert severities and the
coverage report."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import ROOT
from trainconsole.engine import catalog
from trainconsole.engine.edge_coverage import scan_tests
from trainconsole.engine.events import EventLog, EventTail, default_severity

DOC = ROOT / "docs" / "edge-cases.md"


def test_all_80_cases_in_the_memos_eight_categories() -> None:
    assert list(catalog.CASES) == list(range(1, 81))
    assert len(catalog.CATEGORIES) == 8
    for number, case in catalog.CASES.items():
        assert case.number == number
        assert case.category == catalog.CATEGORIES[(number - 1) // 10]
        assert case.severity in ("info", "warning", "critical")
        for text in (case.title, case.detection, case.behaviour):
            assert text.strip() == text and text, f"case {number}: empty or padded text"
        # "1-2 sentences each": a behaviour, not an essay.
        assert case.behaviour.endswith(".") and case.behaviour.count(". ") <= 2, number


def test_titles_keep_the_memos_words() -> None:
    # Spot checks of the memo's own titles, and of the two adapted to a TOML config.
    assert catalog.CASES[1].title.startswith("Empty training file")
    assert catalog.CASES[71].title.startswith("UnboundLocalError")
    assert catalog.CASES[76].title.startswith("TypeError")
    assert "config.toml" in catalog.CASES[31].title and "TOML" in catalog.CASES[32].title
    assert len({c.title for c in catalog.CASES.values()}) == 80


def test_catalogue_is_frozen() -> None:
    with pytest.raises(AttributeError):
        catalog.CASES[64].severity = "info"  # type: ignore[misc]


def test_docs_match_the_catalogue() -> None:
    assert DOC.exists(), "docs/edge-cases.md is missing: run `make docs`"
    assert DOC.read_text(encoding="utf-8") == catalog.render_markdown(), (
        "docs/edge-cases.md is out of step with engine/catalog.py: run `make docs` and commit it"
    )


def test_docs_list_every_case_in_one_table_row() -> None:
    rows = [line for line in catalog.render_markdown().splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[2:]  # rows[1] is the alignment row
    assert [row.split("|")[1].strip() for row in body] == [str(n) for n in range(1, 81)]
    # A stray `|` in a text would split a row into extra columns.
    assert {row.count(" | ") for row in body} == {header.count(" | ")}


def test_alert_severity_defaults_come_from_the_catalogue(tmp_path: Path) -> None:
    assert default_severity(64) == "critical"
    assert default_severity(47) == catalog.CASES[47].severity == "info"
    assert default_severity(None) == "warning"
    log = EventLog(tmp_path / "events.jsonl")
    log.alert(25, "disk full while saving checkpoint-40")
    log.close()
    events = EventTail(tmp_path / "events.jsonl", 0).read_new()
    assert events[0]["case"] == 25 and events[0]["severity"] == catalog.CASES[25].severity


@pytest.mark.parametrize("args,kwargs,ok", [
    ((1,), {}, True),
    ((3, 33), {}, True),
    ((80,), {}, True),
    ((), {}, False),
    ((0,), {}, False),
    ((81,), {}, False),
    (("3",), {}, False),
    ((True,), {}, False),
    ((3.0,), {}, False),
    ((3,), {"case": 4}, False),
])
def test_edge_mark_arguments_are_checked(args: tuple[object, ...], kwargs: dict[str, object],
                                         ok: bool) -> None:
    assert (catalog.check_edge_args(args, kwargs) is None) is ok


SAMPLE_TESTS = {
    "test_marks.py": """
        import pytest
        from pytest import mark

        @pytest.mark.edge(1)
        def test_decorated(): pass

        @mark.edge(2, 3)
        async def test_async_two_cases(): pass

        @pytest.mark.parametrize("x", [pytest.param(1, marks=pytest.mark.edge(4)), 2])
        def test_param(x): pass

        class TestGroup:
            pytestmark = [pytest.mark.edge(5)]

            @pytest.mark.edge(6)
            def test_method(self): pass

        @pytest.mark.edge(81)
        def test_bad_number(): pass

        def helper_not_a_test():
            pytest.mark.edge(7)

        ROLLBACK = pytest.mark.edge(64, 65)

        @ROLLBACK
        def test_by_alias(): pass
    """,
    "area/test_module_mark.py": """
        import pytest
        pytestmark = pytest.mark.edge(8)

        def test_inherits(): pass
    """,
    "fixtures/static/faulty.py": """
        import pytest

        @pytest.mark.edge(9)
        def test_in_a_module_pytest_does_not_collect(): pass
    """,
    "test_syntax_error.py": "def test_(:\n",
}


def _write_tree(root: Path) -> Path:
    tests = root / "tests"
    for name, text in SAMPLE_TESTS.items():
        path = tests / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tests


def test_coverage_scan_reads_every_kind_of_mark(tmp_path: Path) -> None:
    cov = scan_tests(_write_tree(tmp_path))
    assert cov.tests == {
        1: ["tests/test_marks.py::test_decorated"],
        2: ["tests/test_marks.py::test_async_two_cases"],
        3: ["tests/test_marks.py::test_async_two_cases"],
        4: ["tests/test_marks.py::test_param"],
        5: ["tests/test_marks.py::TestGroup::test_method"],
        6: ["tests/test_marks.py::TestGroup::test_method"],
        8: ["tests/area/test_module_mark.py::test_inherits"],
        64: ["tests/test_marks.py::test_by_alias"],
        65: ["tests/test_marks.py::test_by_alias"],
    }
    assert cov.missing() == [7, *range(9, 64), *range(66, 81)]
    assert any("81" in p for p in cov.problems)
    assert any("test_syntax_error.py" in p for p in cov.problems)


COLLECT = r"""
import sys
import pytest

class EdgeDump:
    def pytest_collection_modifyitems(self, items):
        for item in items:
            for mark in item.iter_markers("edge"):
                for n in mark.args:
                    print("EDGE", n, item.nodeid.split("[")[0])

sys.exit(pytest.main(sys.argv[1:], plugins=[EdgeDump()]))
"""


def test_coverage_scan_agrees_with_pytests_own_collection(tmp_path: Path) -> None:
    """The scan reads source without importing it; pytest's collection is the ground truth."""
    tests = _write_tree(tmp_path)
    (tests / "test_syntax_error.py").unlink()
    text = (tests / "test_marks.py").read_text().replace("edge(81)", "edge(80)")
    (tests / "test_marks.py").write_text(text)
    run = subprocess.run(
        [sys.executable, "-c", COLLECT, "--collect-only", "-q", "-p", "no:cacheprovider",
         "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), str(tests)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    collected: dict[int, set[str]] = {}
    for line in run.stdout.splitlines():
        if line.startswith("EDGE "):
            _, number, nodeid = line.split(" ", 2)
            collected.setdefault(int(number), set()).add(nodeid)
    scanned = {n: set(t) for n, t in scan_tests(tests).tests.items()}
    assert scanned == collected
    assert 80 in scanned and 9 not in scanned  # faulty.py is not a test module to either


def test_report_command(tmp_path: Path) -> None:
    tests = _write_tree(tmp_path)
    run = subprocess.run([sys.executable, "-m", "trainconsole.engine.edge_coverage", "--report", "--tests", str(tests)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "edge cases with a marked test: 9/80" in run.stdout
    assert "without a marked test (71):" in run.stdout
    assert "tests/test_marks.py::test_decorated" in run.stdout
    strict = subprocess.run([sys.executable, "-m", "trainconsole.engine.edge_coverage", "--report", "--strict", "--tests",
                             str(tests)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert strict.returncode == 1


def test_report_on_this_project_sees_the_guardrail_tests() -> None:
    cov = scan_tests(ROOT / "tests")
    for number in (71, 72, 73, 74, 75, 76):
        assert any("test_static_guardrails.py" in t for t in cov.tests.get(number, [])), number
    assert not cov.problems, cov.problems


def test_write_docs_command(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "edge-cases.md"
    run = subprocess.run([sys.executable, "-m", "trainconsole.engine.edge_coverage", "--write-docs", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert out.read_text(encoding="utf-8") == catalog.render_markdown()


def test_catalogue_command_without_a_task_is_a_usage_error() -> None:
    run = subprocess.run([sys.executable, "-m", "trainconsole.engine.edge_coverage"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "nothing to do" in run.stderr


def test_a_malformed_edge_mark_stops_the_test_run(tmp_path: Path) -> None:
    """The conftest hook, run for real: pytest on a file with edge(81) refuses to start."""
    bad = tmp_path / "test_bad_mark.py"
    bad.write_text("import pytest\n\n@pytest.mark.edge(81)\ndef test_x():\n    pass\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
         "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", str(bad)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 4, run.stdout + run.stderr  # pytest's usage-error exit
    assert "malformed edge marks" in run.stdout + run.stderr
    assert "ints in 1..80" in run.stdout + run.stderr
