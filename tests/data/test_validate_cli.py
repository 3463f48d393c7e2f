"""``trainconsole validate`` as an operator runs it: a real process, real files, real FIFOs."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, run_cli
from trainconsole.console.commands.validate import PROGRESS_MIN_BYTES, Bar
from trainconsole.engine.config import set_value

CORPUS = ROOT / "tests" / "fixtures" / "data"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS / "expected.json").read_text())


def _env() -> dict[str, str]:
    """The environment of a child run as an operator's shell would have it (no config override)."""
    env = {k: v for k, v in os.environ.items() if k != "TRAINCONSOLE_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(done.stdout)
    assert out["schema"] == 1
    return out


@pytest.mark.parametrize("capped", [False, True])
def test_corpus_verdicts_from_the_command_line(workspace: Path, capped: bool) -> None:
    # The files written for a small line cap are checked under one; the rest under the default.
    if capped:
        set_value(workspace / "config.toml", "data.max_line_bytes", 1024)
    names = sorted(n for n in EXPECTED if ("limits" in EXPECTED[n]) == capped)
    done = run_cli("validate", "--json", "--no-tokens", *[str(CORPUS / n) for n in names], cwd=workspace)
    assert done.returncode == 1, done.stderr
    files = _json(done)["files"]
    assert [Path(f["path"]).name for f in files] == names
    for entry in files:
        want = EXPECTED[Path(entry["path"]).name]
        assert entry["verdict"] == want["verdict"], entry
        for key in ("case", "valid", "invalid", "code"):
            if key in want:
                assert entry[key] == want[key], (key, entry)
        if "problems" in want:
            assert [[p["line"], p["reason"]] for p in entry["problems"]] == want["problems"]
        assert set(entry) >= {"path", "verdict", "reason", "examples", "valid", "invalid", "truncated",
                              "dropped", "tokens", "problems"}
        for problem in entry["problems"]:
            assert set(problem) >= {"line", "case", "message"}


def test_exit_0_when_every_file_is_accepted(workspace: Path) -> None:
    done = run_cli("validate", "--no-tokens", str(CORPUS / "sharegpt.jsonl"), str(CORPUS / "unicode.jsonl"),
                   cwd=workspace)
    assert done.returncode == 0, done.stderr
    assert "sharegpt.jsonl: accepted" in done.stdout


@pytest.mark.edge(55)
def test_a_control_character_in_a_file_name_cannot_split_or_colour_the_output(workspace: Path) -> None:
    good = (CORPUS / "sharegpt.jsonl").read_bytes()
    odd = workspace / "new\nline.jsonl"
    odd.write_bytes(good)
    done = run_cli("validate", "--no-tokens", str(odd), str(workspace / "esc\x1b[31m.jsonl"), cwd=workspace)
    assert done.returncode == 2
    assert "esc\\x1b[31m.jsonl: no such file" in done.stderr and "\x1b" not in done.stderr
    done = run_cli("validate", "--no-tokens", str(odd), cwd=workspace)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(f"{workspace}/new\\nline.jsonl: accepted: ")


@pytest.mark.edge(7)
def test_human_output_names_the_file_the_line_and_the_case(workspace: Path) -> None:
    done = run_cli("validate", "--no-tokens", str(CORPUS / "wrong_roles.jsonl"), cwd=workspace)
    assert done.returncode == 1
    assert "wrong_roles.jsonl: rejected (case 7)" in done.stdout
    assert "line 1 (case 7, unknown_role)" in done.stdout and "'narrator'" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.edge(3)
def test_long_examples_are_counted_with_the_models_tokenizer(workspace: Path, tiny_model: Path) -> None:
    done = run_cli("validate", "--json", str(CORPUS / "long_example.jsonl"), cwd=workspace)
    assert done.returncode == 0, done.stderr
    (entry,) = _json(done)["files"]
    assert entry["truncated"] == 1 and entry["dropped"] == 0
    assert entry["tokens"]["examples"] == 4 and entry["tokens"]["over_max_length"] == 1
    assert entry["tokens"]["max"] > 1024 >= entry["tokens"]["min"]
    assert 3 in [w["case"] for w in entry["warnings"]]


@pytest.mark.edge(3)
def test_drop_policy_counts_dropped_examples(workspace: Path, tiny_model: Path) -> None:
    set_value(workspace / "config.toml", "data.long_examples", "drop")
    done = run_cli("validate", "--json", str(CORPUS / "long_example.jsonl"), cwd=workspace)
    (entry,) = _json(done)["files"]
    assert done.returncode == 0 and entry["dropped"] == 1 and entry["truncated"] == 0


@pytest.mark.edge(33)
@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_max_length_below_the_shortest_example(workspace: Path, tiny_model: Path, policy: str) -> None:
    set_value(workspace / "config.toml", "training.max_length", 128)
    set_value(workspace / "config.toml", "data.long_examples", policy)
    done = run_cli("validate", "--json", str(CORPUS / "all_long.jsonl"), cwd=workspace)
    (entry,) = _json(done)["files"]
    assert entry["tokens"]["min"] > 128
    assert 33 in [w["case"] for w in entry["warnings"]]
    if policy == "truncate":
        assert done.returncode == 0 and entry["truncated"] == 5
    else:
        assert done.returncode == 1 and entry["case"] == 33 and entry["code"] == "all_dropped"
        assert "max_length" in entry["reason"]


def test_validate_never_imports_torch(workspace: Path, tiny_model: Path) -> None:
    code = ("import sys, io, contextlib\n"
            "from trainconsole.console.cli import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    rc = main(['validate', '--json', sys.argv[1]])\n"
            "import json\n"
            "tokens = json.loads(out.getvalue())['files'][0]['tokens']\n"
            "print(rc, 'torch' in sys.modules, bool(tokens))\n")
    done = subprocess.run([sys.executable, "-c", code, str(CORPUS / "long_example.jsonl")], cwd=workspace,
                          capture_output=True, text=True, timeout=120,
                          env=_env())
    assert done.stdout.split() == ["0", "False", "True"], done.stderr


def test_a_broken_tokenizer_skips_token_statistics_with_a_note(workspace: Path) -> None:
    model = workspace / "my-model"
    model.mkdir()
    (model / "tokenizer.json").write_text("{not json")
    set_value(workspace / "config.toml", "model.base_model", str(model))
    done = run_cli("validate", "--json", str(CORPUS / "sharegpt.jsonl"), cwd=workspace)
    assert done.returncode == 0, done.stderr
    out = _json(done)
    assert out["files"][0]["tokens"] == {} and "tokenizer.json" in out["tokens_skipped"]
    assert "token statistics skipped" in done.stderr and "Traceback" not in done.stderr


def test_without_a_config_file_defaults_are_used_and_said(tmp_path: Path) -> None:
    done = run_cli("validate", str(CORPUS / "sharegpt.jsonl"), cwd=tmp_path)
    assert done.returncode == 0
    assert "default settings" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing built or cached where the command ran


def test_json_stdout_is_only_json(workspace: Path) -> None:
    done = run_cli("validate", "--json", "--no-tokens", str(CORPUS / "malformed_json.jsonl"), cwd=workspace)
    assert _json(done)["files"][0]["verdict"] == "rejected"


@pytest.mark.parametrize("kind", ["missing", "folder", "fifo", "device"])
def test_paths_that_are_not_regular_files_are_usage_errors(workspace: Path, kind: str) -> None:
    target = {"missing": workspace / "nope.jsonl", "folder": workspace, "device": Path("/dev/null"),
              "fifo": workspace / "pipe.jsonl"}[kind]
    if kind == "fifo":
        os.mkfifo(target)  # opening it would block forever with no writer: we must never open it
    done = run_cli("validate", str(CORPUS / "sharegpt.jsonl"), str(target), cwd=workspace, timeout=60)
    assert done.returncode == 2
    assert str(target) in done.stderr
    expected = {"missing": "no such file", "folder": "is a folder", "fifo": "FIFO",
                "device": "not a regular file"}[kind]
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""  # nothing validated when the command line is wrong


def test_no_files_is_a_usage_error(workspace: Path) -> None:
    assert run_cli("validate", cwd=workspace).returncode == 2


def test_a_large_file_on_a_terminal_shows_progress_on_stderr_only(workspace: Path) -> None:
    big = workspace / "big.jsonl"
    line = json.dumps({"messages": [{"role": "user", "content": "q" * 400},
                                    {"role": "assistant", "content": "a" * 600}]}).encode() + b"\n"
    big.write_bytes(line * ((PROGRESS_MIN_BYTES + (1 << 20)) // len(line)))
    main, child = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "trainconsole.console.cli", "validate", "--json", "--no-tokens",
                               str(big)], cwd=workspace, stdout=subprocess.PIPE, stderr=child,
                              timeout=120, env=_env())
        os.close(child)
        child = -1
        seen = b""
        while select.select([main], [], [], 0.5)[0]:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(main)
        if child >= 0:
            os.close(child)
    assert done.returncode == 0
    assert b"MB/s" in seen and b"big.jsonl" in seen
    assert json.loads(done.stdout)["files"][0]["verdict"] == "accepted"  # stdout: JSON only


def test_progress_bar_shows_bytes_rate_and_time_left() -> None:
    out = io.StringIO()
    bar = Bar("big.jsonl", 100 << 20, out)
    bar(50 << 20)
    bar(50 << 20)
    text = out.getvalue()
    assert "100/100 MB" in text and "MB/s" in text and "left" in text
    bar.close()


@pytest.mark.edge(3)
def test_token_statistics_are_the_same_from_several_processes(workspace: Path, tiny_model: Path) -> None:
    from trainconsole.engine.config import load_config
    from trainconsole.engine.data.gate import validate_file
    from trainconsole.engine.data.tokenizer import token_counter_for

    cfg = load_config(workspace / "config.toml")
    counter, why = token_counter_for(cfg)
    assert counter is not None, why
    for name in ("long_example.jsonl", "few_bad_lines.jsonl"):
        one = validate_file(CORPUS / name, cfg, tokenizer=counter, workers=1)
        several = validate_file(CORPUS / name, cfg, tokenizer=counter, workers=3)
        assert one == several and one.tokens is not None and one.tokens.examples == one.valid


# The baseline is taken once what the command imports anyway is loaded (console, the tokenizer's
# library): that part of the peak varies from run to run by tens of MB and is not what is measured.
PEAK = """
import resource, sys
from trainconsole.console.cli import main
from transformers import AutoTokenizer, PreTrainedTokenizerFast
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
code = main(sys.argv[1:])
sys.stdout.flush()
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.edge(80)
def test_token_counts_of_a_line_of_millions_of_tokens_stay_in_bounded_memory(
        workspace: Path, tiny_model: Path) -> None:
    # One encoding costs ~150 bytes a token: in one piece this line took about a gigabyte.
    path = workspace / "long.jsonl"
    msgs = [{"role": "user", "content": "a" * 3_000_000 + " b" * 1_500_000},
            {"role": "assistant", "content": "ok"}]
    path.write_text(json.dumps({"messages": msgs}) + "\n")
    done = subprocess.run([sys.executable, "-c", PEAK, "validate", "--json", str(path)], cwd=workspace,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    tokens = _json(done)["files"][0]["tokens"]
    assert tokens["max"] > 3_000_000
    base, peak = map(int, done.stderr.strip().splitlines()[-1].split())
    assert peak - base < 200, done.stderr
