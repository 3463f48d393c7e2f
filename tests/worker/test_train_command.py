"""`trainconsole train FILE`: a guarded job in the foreground, as an operator runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_cli
from tests.worker.wutil import arithmetic, new_workspace, write_jsonl


def test_train_runs_a_job_and_publishes_an_adapter(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=4)
    data = write_jsonl(ws / "my data.jsonl", arithmetic(30))
    result = run_cli("train", str(data), "--job-id", "try1", cwd=ws, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "step 4/4" in result.stderr and "done at step 4" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    report = json.loads((ws / "runs" / "try1" / "report.json").read_text())
    assert report["status"] == "done" and Path(report["adapter"]).is_dir()


@pytest.mark.edge(1)
def test_train_on_a_rejected_file_fails_with_one_clear_line(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache)
    empty = ws / "empty.jsonl"
    empty.write_text("")
    result = run_cli("train", str(empty), cwd=ws, timeout=300)
    assert result.returncode == 1
    assert "failed (data" in result.stderr and "empty.jsonl" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_with_a_missing_file_is_a_usage_error(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache)
    result = run_cli("train", "nope.jsonl", cwd=ws)
    assert result.returncode == 2 and "nope.jsonl" in result.stderr


def test_train_command_never_imports_torch() -> None:
    code = "import sys, console.commands.train; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
