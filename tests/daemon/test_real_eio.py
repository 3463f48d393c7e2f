"""A real EIO (case 44): files on a FUSE filesystem whose reads fail in the kernel's read path
(tests/fusefail.py; no libfuse needed). Skipped, saying why, where /dev/fuse or root is missing.

- ``trainconsole add`` of a file on a failing disk: one line naming the file, nothing queued, no
  temporary left behind;
- the engine's inbox on a disk that fails twice, then reads: one alert for the burst, backed
  off, then the file is taken whole and trained, no attempt charged."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import ROOT, Harness, chat_lines, configure
from tests.helpers import run_cli

SERVER = ROOT / "tests" / "fusefail.py"
Mount = Callable[[Path, dict[str, dict[str, object]]], None]


@pytest.fixture
def failing_disk() -> Iterator[Mount]:
    """mount(path, files): a FUSE filesystem serving ``files`` at ``path`` until the test ends."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("a FUSE mount needs Linux and root")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine (FUSE is not in the kernel)")
    servers: list[tuple[Path, subprocess.Popen[str]]] = []

    def mount(path: Path, files: dict[str, dict[str, object]]) -> None:
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, str(SERVER), str(path), json.dumps({"files": files})],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        servers.append((path, proc))
        if line != "ready":
            pytest.skip(f"cannot mount a FUSE filesystem here: {line or proc.stdout.read()}")

    try:
        yield mount
    finally:
        for path, proc in servers:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.edge(44)
def test_adding_a_file_that_cannot_be_read_is_one_line_and_queues_nothing(
        workspace: Path, failing_disk: Mount) -> None:
    disk = workspace / "disk"
    failing_disk(disk, {"bad.jsonl": {"text": chat_lines(50), "fail_from": 4096}})
    with pytest.raises(OSError) as info:
        (disk / "bad.jsonl").read_bytes()
    assert info.value.errno == 5  # the kernel's EIO, from this filesystem
    done = run_cli("--config", str(workspace / "config.toml"), "add", str(disk / "bad.jsonl"), cwd=workspace)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.jsonl" in lines[0] and "Input/output error" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    status = json.loads(run_cli("--config", str(workspace / "config.toml"), "status", "--json",
                                cwd=workspace).stdout)
    assert status["jobs"] == []
    queue = workspace / "queue"
    assert not [p for p in queue.rglob("*") if p.is_file() and p.parent.name in ("jobs", ".tmp")]


@pytest.mark.edge(44)
def test_the_inbox_backs_off_on_a_failing_disk_then_takes_the_file_whole(
        workspace: Path, failing_disk: Mount, monkeypatch: pytest.MonkeyPatch) -> None:
    text = chat_lines(12, "flaky")
    configure(workspace, {"queue.poll_s": 0.1})
    failing_disk(workspace / "queue" / "incoming" / "low",
                 {"flaky.jsonl": {"text": text, "fail_from": 0, "fail_times": 2}})
    h = Harness(workspace)
    try:
        h.run_until(lambda: [j.status for j in h.jobs()] == ["done"], timeout=120)
        (job,) = h.jobs()
        assert job.sha256 == hashlib.sha256(text.encode()).hexdigest()  # the whole file, not a torn copy
        assert job.path.read_text() == text and job.attempts == 1 and job.priority == "low"
        eio = [a for a in h.alerts() if a["case"] == 44]
        assert len(eio) == 1 and "Input/output error" in eio[0]["message"], eio  # one for the burst
        assert not (workspace / "queue" / "incoming" / "low" / "flaky.jsonl").exists()
    finally:
        h.close()
