"""`trainconsole train FILE`: a guarded job in the foreground, as an operator runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chatdata import arithmetic, write_jsonl
from tests.helpers import ROOT, run_cli
from tests.worker.wutil import new_workspace


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
    code = "import sys, trainconsole.console.commands.train; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.timeout(60)
def test_train_names_what_a_non_file_is_without_opening_it(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache)
    fifo = ws / "pipe.jsonl"
    os.mkfifo(fifo)
    for given, said in ((ws, "is a folder"), (fifo, "is a FIFO"), (Path("/dev/null"), "is not a regular file")):
        result = run_cli("train", str(given), cwd=ws, timeout=30)
        assert result.returncode == 2 and f"{given}: {said}" in result.stderr, result.stderr


@pytest.mark.parametrize("job_id", ["../escaped", "a/b", ".hidden", "x" * 65])
def test_train_job_id_cannot_name_a_folder_outside_runs(tmp_path: Path, shared_cache: Path,
                                                         job_id: str) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=1)
    data = write_jsonl(ws / "d.jsonl", arithmetic(8))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("train", str(data), "--job-id", job_id, cwd=ws, timeout=60)
    assert result.returncode == 2 and "--job-id" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (ws / "runs").exists() or not any((ws / "runs").iterdir())


def test_an_unwritable_runs_folder_is_one_line_naming_it(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache)
    data = write_jsonl(ws / "d.jsonl", arithmetic(8))
    runs = ws / "runs"
    runs.mkdir()
    # root ignores file modes: run it through setpriv without the DAC capabilities (a real denial)
    cmd = [sys.executable, "-m", "trainconsole.console.cli", "train", str(data)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root writes anywhere, and setpriv is not here to drop that")
        caps = "-dac_override,-dac_read_search"
        cmd = ["setpriv", "--bounding-set", caps, "--inh-caps", caps, *cmd]
    runs.chmod(0o555)
    try:
        env = {k: v for k, v in os.environ.items() if k != "TRAINCONSOLE_CONFIG"}
        env["PYTHONPATH"] = str(ROOT)
        result = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=60)
    finally:
        runs.chmod(0o755)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and f"paths.runs ({runs})" in result.stderr


@pytest.mark.timeout(240)
def test_one_worker_per_run_folder_and_a_hangup_stops_the_worker(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=2000, training__save_steps=1000)
    data = write_jsonl(ws / "d.jsonl", arithmetic(30))
    env = {k: v for k, v in os.environ.items() if k != "TRAINCONSOLE_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "trainconsole.console.cli", "train", str(data), "--job-id", "twice"]
    first = subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    heartbeat = ws / "runs" / "twice" / "heartbeat.json"
    try:
        deadline = time.monotonic() + 180
        while not heartbeat.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert heartbeat.exists(), "the first worker never started a step"
        worker_pid = json.loads(heartbeat.read_text())["pid"]
        second = run_cli("train", str(data), "--job-id", "twice", cwd=ws, timeout=60)
        assert second.returncode == 1 and "in use by another" in second.stderr, second.stderr
        first.send_signal(signal.SIGHUP)  # the terminal closed
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 1 and "--job-id twice to resume" in err, err
    report = json.loads((ws / "runs" / "twice" / "report.json").read_text())
    assert report["status"] == "interrupted"
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)
