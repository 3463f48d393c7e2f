"""Property tests: whatever bytes a file holds, the validator returns a consistent report and raises
nothing; the parallel scan and the per-line reader agree with it."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainconsole.engine.data.gate import REASONS, Limits, Report, iter_examples, validate_file

LIMITS = Limits(max_line_bytes=1024, max_problems=5)
ONE_PROBLEM = ("json_array", "pretty_printed", "utf16_file", "compressed_file")
SETTINGS = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "data.jsonl"


def _consistent(path: Path, data: bytes) -> Report:
    path.write_bytes(data)
    report = validate_file(path, LIMITS)
    assert report.verdict in ("accepted", "rejected")
    assert report.valid + report.invalid == report.examples
    assert report.invalid == sum(report.reasons.values())
    if report.code in ONE_PROBLEM:  # the rest are the same news
        assert len(report.problems) <= 1
    else:
        assert len(report.problems) == min(report.invalid, LIMITS.max_problems)
    lines = [p.line for p in report.problems]
    assert lines == sorted(set(lines)) and all(1 <= n <= report.lines for n in lines)
    assert all(p.case == REASONS[p.reason][0] for p in report.problems)
    assert report.accepted == (report.reason == "")
    if report.accepted:
        assert report.valid >= 1
    examples = list(iter_examples(path, LIMITS))
    assert len(examples) == report.valid
    assert not set(lines) & {e.line for e in examples}
    return report


@SETTINGS
@given(data=st.binary(max_size=3000))
def test_any_bytes_give_a_report(scratch: Path, data: bytes) -> None:
    _consistent(scratch, data)


VALID = json.dumps({"messages": [{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "hello"}]}).encode()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["messages", "conversations", "role", "content", "from", "value", "weight", "type", "text"]),
        inner, max_size=4),
    max_leaves=12)


def _json_line(value: object) -> bytes:
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "gpt", "human", "narrator", ""]),
     "content": st.text(max_size=30) | st.integers() | st.none()}), max_size=4)
lines = st.one_of(
    st.just(VALID),
    st.builds(lambda m: _json_line({"messages": m}), messages),
    json_values.map(_json_line),
    st.binary(max_size=60),
    st.builds(lambda cut: VALID[:cut], st.integers(0, len(VALID))),
    st.sampled_from([b"", b" ", b"\r", b"\xef\xbb\xbf", b"[", b"NaN", b"\x00", b'"\\ud800"', b"1e999"]),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(1000, 1100)),
    # Deep but within orjson's limit: parsed, then refused without any recursion of ours.
    st.builds(lambda n: b'{"messages": [{"role": "user", "content": ' + b'{"a":' * n + b"1" + b"}" * n
              + b'}, {"role": "assistant", "content": "x"}]}', st.integers(900, 1030)),
)
files = st.builds(lambda ls, sep, tail: sep.join(ls) + tail, st.lists(lines, max_size=12),
                  st.sampled_from([b"\n", b"\r\n"]), st.sampled_from([b"", b"\n", b"\r\n"]))


@SETTINGS
@given(data=files)
def test_json_like_lines_give_a_consistent_report(scratch: Path, data: bytes) -> None:
    _consistent(scratch, data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=files, workers=st.integers(2, 4))
def test_parallel_scan_equals_single_scan(scratch: Path, data: bytes, workers: int) -> None:
    scratch.write_bytes(data)
    assert validate_file(scratch, LIMITS, workers=workers) == validate_file(scratch, LIMITS, workers=1)


@settings(max_examples=300, deadline=None)
@given(data=files, cut=st.integers(1, 200))
def test_a_line_cap_never_changes_the_count_of_lines(scratch: Path, data: bytes, cut: int) -> None:
    scratch.write_bytes(data)
    small = validate_file(scratch, Limits(max_line_bytes=cut))
    large = validate_file(scratch, Limits(max_line_bytes=1 << 20))
    assert small.lines == large.lines
    assert small.valid <= large.valid
