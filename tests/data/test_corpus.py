"""The data gate against its corpus: one small real file per failure (tests/fixtures/data, written
by make_corpus.py), each with its expected verdict, case and reasons in expected.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainconsole.engine.data.gate import REASONS, Limits, Report, iter_examples, validate_file

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "data"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS / "expected.json").read_text())


def check(name: str, *, workers: int = 1) -> Report:
    """Validate one corpus file and compare every field its expectation names."""
    want = EXPECTED[name]
    report = validate_file(CORPUS / name, Limits(**want.get("limits", {})), workers=workers)
    got = {
        "verdict": report.verdict, "case": report.case, "code": report.code, "valid": report.valid,
        "invalid": report.invalid, "problems": [[p.line, p.reason] for p in report.problems],
        "warnings": [w.case for w in report.warnings],
    }
    for key, value in got.items():
        if key in want:
            assert value == want[key], f"{name}: {key} is {value!r}, expected {want[key]!r}\n{report.render()}"
    # Whatever the verdict, every problem is fully described.
    for p in report.problems:
        assert p.line >= 1 and p.case == REASONS[p.reason][0] and p.message
    if report.verdict == "rejected":
        assert report.reason and report.case is not None
    return report


def test_every_corpus_file_has_an_expectation_and_meets_it() -> None:
    files = sorted(p.name for p in CORPUS.glob("*.jsonl"))
    assert files == sorted(EXPECTED), "corpus and expected.json disagree: rerun make_corpus.py"
    for name in files:
        check(name)


def test_every_reason_code_is_exercised_by_the_corpus() -> None:
    seen = {code for name in EXPECTED for _line, code in EXPECTED[name].get("problems", [])}
    seen |= {EXPECTED[n].get("code") for n in EXPECTED}
    untested = set(REASONS) - seen - {"empty_file", "json_array"}
    assert not untested, f"reason codes without a corpus file: {sorted(untested)}"


@pytest.mark.edge(1)
@pytest.mark.parametrize("name", ["empty.jsonl", "whitespace_only.jsonl"])
def test_empty_or_blank_file_is_rejected_as_having_no_examples(name: str) -> None:
    report = check(name)
    assert "no examples" in report.reason


@pytest.mark.edge(2)
def test_single_example_is_accepted_with_a_batch_size_warning() -> None:
    report = check("single_example.jsonl")
    assert report.accepted and "batch_size" in report.warnings[0].message


@pytest.mark.edge(4)
@pytest.mark.parametrize("name", ["malformed_json.jsonl", "not_object.jsonl", "nan_infinity.jsonl",
                                  "bad_weight.jsonl", "bad_message.jsonl", "few_bad_lines.jsonl", "blank_lines_between.jsonl"])
def test_malformed_lines_are_named_by_line_and_reason(name: str) -> None:
    check(name)


@pytest.mark.edge(4)
def test_malformed_json_message_says_where() -> None:
    report = check("malformed_json.jsonl")
    assert "column" in report.problems[0].message


@pytest.mark.edge(4)
@pytest.mark.parametrize("name", ["json_array.jsonl", "json_array_one_line.jsonl"])
def test_a_whole_file_json_array_is_recognised_with_advice(name: str) -> None:
    report = check(name)
    assert "JSON array" in report.reason and "jq -c" in report.reason
    assert len(report.problems) <= 1  # not one complaint per line of the array


@pytest.mark.edge(4)
def test_pretty_printed_records_are_recognised_with_advice() -> None:
    report = check("pretty_printed.jsonl")
    assert "pretty-printed" in report.reason and "jq -c ." in report.reason


@pytest.mark.edge(4)
def test_cr_line_endings_are_recognised_with_advice() -> None:
    report = check("cr_line_endings.jsonl")
    assert "CR line endings" in report.reason and "tr '\\r' '\\n'" in report.reason
    assert "Extra data" not in report.problems[0].message and "3 records" in report.problems[0].message


@pytest.mark.edge(4)
def test_records_joined_by_a_bare_cr_inside_an_lf_file_are_named_by_line() -> None:
    report = check("cr_joined_line.jsonl")
    assert "CR line endings" in report.problems[0].message


@pytest.mark.edge(4, 80)
def test_a_cr_file_longer_than_the_line_cap_is_still_told_apart(tmp_path: Path) -> None:
    record = (CORPUS / "single_example.jsonl").read_bytes().strip()
    path = tmp_path / "mac.jsonl"
    path.write_bytes(b"\r".join([record] * 200) + b"\r")
    report = validate_file(path, Limits(max_line_bytes=1024))
    assert report.code == "cr_line_endings" and report.case == 4
    assert [p.reason for p in report.problems] == ["line_too_long"]


@pytest.mark.edge(4, 77)
def test_numbers_too_large_to_convert_are_their_own_reason() -> None:
    report = check("big_numbers.jsonl")
    assert "5000 digits" in report.problems[1].message


@pytest.mark.edge(5)
def test_missing_messages_field_names_the_keys_found() -> None:
    report = check("missing_messages.jsonl")
    assert "'prompt'" in report.problems[0].message
    assert "is a string" in report.problems[2].message


@pytest.mark.edge(6)
@pytest.mark.parametrize("name", ["empty_messages.jsonl", "nothing_to_learn.jsonl"])
def test_empty_messages_or_nothing_to_learn(name: str) -> None:
    report = check(name)
    # As the catalogue says: no usable record, rejected with its most common fault's case (not 1).
    assert not report.accepted and report.case == 6, report


@pytest.mark.edge(7)
def test_unknown_roles_are_rejected_by_name() -> None:
    report = check("wrong_roles.jsonl")
    assert "'narrator'" in report.problems[0].message and "'Assistant2'" in report.problems[1].message
    assert "allowed: system, user, assistant, tool" in report.problems[0].message


@pytest.mark.edge(7)
def test_no_assistant_turn_is_rejected() -> None:
    check("no_assistant.jsonl")


@pytest.mark.edge(7)
def test_role_aliases_and_sharegpt_are_mapped() -> None:
    check("sharegpt.jsonl")
    roles = [[m.role for m in e.messages] for e in iter_examples(CORPUS / "sharegpt.jsonl")]
    assert roles == [["user", "assistant"], ["system", "user", "assistant"], ["user", "assistant"],
                     ["user", "assistant"], ["user", "tool", "assistant"]]


@pytest.mark.edge(8)
def test_numbers_objects_null_lists_and_bools_as_content_are_rejected() -> None:
    report = check("non_string_content.jsonl")
    kinds = [p.message for p in report.problems]
    assert "a number" in kinds[0] and "an object" in kinds[1] and "null" in kinds[2]


@pytest.mark.edge(8)
def test_non_text_content_parts_are_rejected() -> None:
    report = check("non_text_part.jsonl")
    assert "'image_url'" in report.problems[0].message


@pytest.mark.edge(8)
def test_openai_text_parts_are_joined() -> None:
    check("openai_parts.jsonl")
    first = next(iter_examples(CORPUS / "openai_parts.jsonl"))
    assert [m.content for m in first.messages] == ["Hello, world", "Hi!"]


@pytest.mark.edge(9)
def test_emoji_and_unicode_line_separators_stay_in_their_record() -> None:
    report = check("unicode.jsonl")
    assert report.lines == 3  # U+2028, U+2029 and U+0085 inside strings do not end a line
    texts = [m.content for e in iter_examples(CORPUS / "unicode.jsonl") for m in e.messages]
    assert "\u2028" in texts[2] and "👩‍👩‍👧" in texts[0]


@pytest.mark.edge(9)
def test_bom_and_crlf_are_tolerated() -> None:
    check("bom_crlf.jsonl")
    first = next(iter_examples(CORPUS / "bom_crlf.jsonl"))
    assert first.messages[1].content == "4" and first.line == 1


@pytest.mark.edge(9)
def test_a_byte_order_mark_inside_the_file_is_explained() -> None:
    report = check("bom_mid_file.jsonl")
    assert "byte order mark" in report.problems[0].message


@pytest.mark.edge(9)
@pytest.mark.parametrize("name", ["invalid_utf8.jsonl", "latin1_file.jsonl", "utf16_file.jsonl",
                                  "nul_bytes.jsonl", "lone_surrogate.jsonl", "binary.jsonl"])
def test_encoding_faults_each_have_their_reason(name: str) -> None:
    check(name)


@pytest.mark.edge(9)
def test_utf16_file_is_named_as_such() -> None:
    assert "UTF-16" in check("utf16_file.jsonl").reason


@pytest.mark.edge(79)
def test_nesting_too_deep_is_an_invalid_record_not_a_recursion_error() -> None:
    check("deep_nesting.jsonl")
    # The per-line reader must survive it too, not just the counting scan.
    assert [e.line for e in iter_examples(CORPUS / "deep_nesting.jsonl")] == [1, 4]


@pytest.mark.edge(80)
@pytest.mark.parametrize("name", ["long_line.jsonl", "long_last_line_no_newline.jsonl"])
def test_a_line_over_the_cap_is_skipped_unread(name: str) -> None:
    report = check(name)
    assert "max_line_bytes" in report.problems[0].message


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parallel_scan_gives_the_same_report(name: str) -> None:
    limits = Limits(**EXPECTED[name].get("limits", {}))
    assert validate_file(CORPUS / name, limits, workers=3) == validate_file(CORPUS / name, limits, workers=1)


def test_iter_examples_yields_exactly_the_valid_records() -> None:
    for name, want in EXPECTED.items():
        limits = Limits(**want.get("limits", {}))
        got = list(iter_examples(CORPUS / name, limits))
        assert len(got) == validate_file(CORPUS / name, limits).valid, name
        assert all(e.messages and e.line >= 1 for e in got)


def test_weights_are_carried_to_the_examples() -> None:
    (example,) = list(iter_examples(CORPUS / "bad_weight.jsonl"))
    assert [(m.role, m.weight) for m in example.messages] == [("user", 0), ("assistant", 1)]


def _work_dying_past_the_first_range(bounds: tuple[int, int]) -> Any:
    """A scan worker that is SIGKILLed (as by the OOM killer) on any range but the first."""
    import os
    import signal

    from trainconsole.engine.data import scan as data_scan

    if bounds[0] > 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return data_scan.scan(CORPUS / "few_bad_lines.jsonl", bounds[0], bounds[1], 1 << 20, 50)


def test_a_scan_worker_killed_from_outside_does_not_hang_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainconsole.engine.data import scan as data_scan

    want = validate_file(CORPUS / "few_bad_lines.jsonl", workers=1)
    # Real processes really killed; only which function the workers run is swapped.
    monkeypatch.setattr(data_scan, "_work", _work_dying_past_the_first_range)
    assert validate_file(CORPUS / "few_bad_lines.jsonl", workers=2) == want


@pytest.mark.parametrize("workers", [1, 3])
def test_progress_reports_every_byte_once(workers: int) -> None:
    seen: list[int] = []
    validate_file(CORPUS / "few_bad_lines.jsonl", workers=workers, progress=seen.append)
    assert sum(seen) == (CORPUS / "few_bad_lines.jsonl").stat().st_size
