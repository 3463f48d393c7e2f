"""Which memo cases have a test: reads the test files' syntax trees for ``pytest.mark.edge(N)``
(decorators, ``pytestmark`` at module or class level, ``pytest.param(..., marks=...)``), without
importing or running a single test, so ``make edge-report`` is instant and works on a broken tree.

The catalogue's command line:
``python -m trainconsole.engine.edge_coverage --write-docs docs/edge-cases.md`` regenerates the
document (``make docs``); ``python -m trainconsole.engine.edge_coverage --report`` lists which cases
have a ``@pytest.mark.edge(N)`` test (``make edge-report``)."""

from __future__ import annotations

import argparse
import ast
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainconsole.engine.catalog import CASES, check_edge_args, render_markdown


def _is_test_file(path: Path) -> bool:
    """pytest's default python_files: test_*.py and *_test.py (fixture modules are neither)."""
    return path.name.startswith("test_") or path.name.endswith("_test.py")


@dataclass
class Coverage:
    tests: dict[int, list[str]] = field(default_factory=dict)  # case -> ["path::test", ...]
    problems: list[str] = field(default_factory=list)  # malformed marks, unreadable files

    def covered(self) -> list[int]:
        return sorted(n for n in self.tests if n in CASES)

    def missing(self) -> list[int]:
        return [n for n in CASES if n not in self.tests]


def _edge_calls(node: ast.AST) -> Iterator[ast.Call]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr == "edge":
            owner = sub.func.value
            if (isinstance(owner, ast.Attribute) and owner.attr == "mark") or (
                isinstance(owner, ast.Name) and owner.id == "mark"
            ):
                yield sub


def _numbers(nodes: list[ast.AST], where: str, cov: Coverage,
             aliases: dict[str, list[int]] | None = None) -> list[int]:
    found: list[int] = []
    for node in nodes:
        for sub in ast.walk(node):
            if aliases and isinstance(sub, ast.Name) and sub.id in aliases:
                found += aliases[sub.id]  # EDGE_3 = pytest.mark.edge(3), then @EDGE_3
        for call in _edge_calls(node):
            try:
                args = [ast.literal_eval(a) for a in call.args]
            except ValueError:
                cov.problems.append(f"{where}:{call.lineno}: edge() arguments must be literal ints")
                continue
            kwargs: dict[str, object] = {k.arg or "**": k.value for k in call.keywords}
            why = check_edge_args(args, kwargs)
            if why:
                cov.problems.append(f"{where}:{call.lineno}: {why}")
                continue
            found += args
    return found


def _aliases(body: list[ast.stmt], where: str, cov: Coverage) -> dict[str, list[int]]:
    """Module-level names bound to edge marks, other than pytestmark itself."""
    aliases: dict[str, list[int]] = {}
    for stmt in body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            if isinstance(target, ast.Name) and target.id != "pytestmark" and any(_edge_calls(stmt.value)):
                aliases[target.id] = _numbers([stmt.value], where, cov)
    return aliases


def _pytestmark(body: list[ast.stmt]) -> list[ast.AST]:
    values: list[ast.AST] = []
    for stmt in body:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in stmt.targets
        ):
            values.append(stmt.value)
    return values


def _scan_body(body: list[ast.stmt], prefix: str, inherited: list[int], where: str, cov: Coverage,
               aliases: dict[str, list[int]]) -> None:
    for stmt in body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and stmt.name.startswith("test"):
            numbers = inherited + _numbers(list(stmt.decorator_list), where, cov, aliases)
            for n in dict.fromkeys(numbers):
                cov.tests.setdefault(n, []).append(f"{prefix}{stmt.name}")
        elif isinstance(stmt, ast.ClassDef) and stmt.name.startswith("Test"):
            marks = list(stmt.decorator_list) + _pytestmark(stmt.body)
            numbers = inherited + _numbers(marks, where, cov, aliases)
            _scan_body(stmt.body, f"{prefix}{stmt.name}::", numbers, where, cov, aliases)


def scan_tests(root: Path) -> Coverage:
    cov = Coverage()
    base = root.parent
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(base)
        if not _is_test_file(path) or "__pycache__" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(rel))
        except (SyntaxError, ValueError, OSError) as exc:
            cov.problems.append(f"{rel}: cannot read: {exc}")
            continue
        aliases = _aliases(tree.body, str(rel), cov)
        module_marks = _numbers(_pytestmark(tree.body), str(rel), cov, aliases)
        _scan_body(tree.body, f"{rel}::", module_marks, str(rel), cov, aliases)
    for tests in cov.tests.values():
        tests.sort()
    return cov


def format_report(cov: Coverage) -> str:
    covered, missing = cov.covered(), cov.missing()
    lines = [f"edge cases with a marked test: {len(covered)}/{len(CASES)}", ""]
    for n in covered:
        tests = cov.tests[n]
        lines.append(f"{n:>3}  {CASES[n].title}")
        lines += [f"       {t}" for t in tests]
    lines.append("")
    if missing:
        lines.append(f"without a marked test ({len(missing)}):")
        lines += [f"{n:>3}  {CASES[n].title}" for n in missing]
    else:
        lines.append("every case has a marked test")
    if cov.problems:
        lines += ["", "malformed marks:"] + [f"  {p}" for p in cov.problems]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainconsole.engine.edge_coverage",
                                     description="The memo's cases: the document, and which have a test.")
    parser.add_argument("--write-docs", metavar="PATH", type=Path, help="write the markdown table")
    parser.add_argument("--report", action="store_true", help="which cases have a marked test")
    parser.add_argument("--tests", metavar="DIR", type=Path, default=Path("tests"),
                        help="test folder the report scans (default: tests)")
    parser.add_argument("--strict", action="store_true", help="with --report: exit 1 if any case lacks a test")
    args = parser.parse_args(argv)
    if not args.write_docs and not args.report:
        parser.error("nothing to do: give --write-docs PATH and/or --report")
    status = 0
    if args.write_docs:
        args.write_docs.parent.mkdir(parents=True, exist_ok=True)
        args.write_docs.write_text(render_markdown(), encoding="utf-8")
        print(f"wrote {args.write_docs} ({len(CASES)} cases)")
    if args.report:
        if not args.tests.is_dir():
            print(f"python -m trainconsole.engine.edge_coverage: no test folder at {args.tests}", file=sys.stderr)
            return 1
        coverage = scan_tests(args.tests)
        try:
            print(format_report(coverage), flush=True)
        except BrokenPipeError:
            # `make edge-report | head` closing the pipe early is not an error.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            return status
        if args.strict and coverage.missing():
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
