"""The queue commands as an operator runs them: real processes, real files, no daemon needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_cli

from .conftest import write_job_file


def cli(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(ws / "config.toml"), *args, cwd=ws, timeout=60)


def status_json(ws: Path) -> dict:
    res = cli(ws, "status", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.edge(55)
def test_add_and_status_json_with_hostile_names(workspace: Path) -> None:
    names = ["-leading dash.jsonl", "quo'te \"x\".jsonl", "new\nline.jsonl", "bad\udcffbyte.jsonl"]
    paths = [write_job_file(workspace / "data" / n) for n in names]
    res = cli(workspace, "add", "--priority", "high", "--", *map(str, paths))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("queued") == 4
    doc = status_json(workspace)
    assert doc["schema"] == 2 and doc["engine"]["state"] == "stopped" and doc["paused"] is False
    assert doc["counts"]["queued"] == 4
    jobs = doc["jobs"]
    assert [j["id"] for j in jobs] == ["j0001", "j0002", "j0003", "j0004"]
    assert jobs[0]["reason"] == "next" and jobs[1]["reason"] == "priority (1 ahead)"
    assert {j["priority"] for j in jobs} == {"high"}
    assert jobs[2]["name"] == "new\\nline.jsonl" and jobs[3]["name"] == "bad\\xffbyte.jsonl"
    # For scripts, the true names: exact text where the name is text, exact bytes always.
    assert [j["original_name"] for j in jobs] == [*names[:3], None]
    assert [os.fsdecode(bytes.fromhex(j["original_name_hex"])) for j in jobs] == names
    assert all((workspace / "data" / os.fsdecode(bytes.fromhex(j["original_name_hex"]))).is_file()
               for j in jobs)
    assert all(Path(j["path"]).is_file() for j in jobs)
    text = cli(workspace, "status")
    assert text.returncode == 0 and "j0004" in text.stdout and "priority (3 ahead)" in text.stdout
    assert "new\\nline.jsonl" in text.stdout  # escaped for people: one job, one line


@pytest.mark.edge(53)
def test_add_same_content_twice_is_one_job_unless_forced(workspace: Path) -> None:
    a = write_job_file(workspace / "a.jsonl", '{"messages": []}\n')
    b = write_job_file(workspace / "b.jsonl", '{"messages": []}\n')
    assert cli(workspace, "add", str(a)).returncode == 0
    res = cli(workspace, "add", str(b))
    assert res.returncode == 0 and "same content as j0001" in res.stdout and "--force" in res.stdout
    assert cli(workspace, "add", "--force", str(b)).returncode == 0
    assert [j["name"] for j in status_json(workspace)["jobs"]] == ["a.jsonl", "b.jsonl"]


@pytest.mark.timeout(60)
def test_add_refuses_what_is_not_a_regular_file_without_hanging(workspace: Path) -> None:
    fifo = workspace / "pipe.jsonl"
    os.mkfifo(fifo)
    (workspace / "dir.jsonl").mkdir()
    res = cli(workspace, "add", str(fifo), str(workspace / "dir.jsonl"), str(workspace / "missing.jsonl"))
    assert res.returncode == 1
    assert "pipe.jsonl: not a regular file" in res.stderr
    assert "missing.jsonl: cannot be read (No such file or directory)" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.edge(57)
def test_retry_all_failed_with_none_failed_answers_plainly(workspace: Path) -> None:
    res = cli(workspace, "retry", "--all-failed")
    assert (res.returncode, res.stdout.strip(), res.stderr) == (0, "no failed jobs to retry", "")
    res = cli(workspace, "retry")
    assert res.returncode == 2 and "--all-failed" in res.stderr


def test_hold_release_priority_cancel_and_unknown_ids(workspace: Path) -> None:
    cli(workspace, "add", str(write_job_file(workspace / "a.jsonl")))
    assert cli(workspace, "hold", "j0001").stdout.strip() == "j0001  held"
    assert status_json(workspace)["jobs"][0]["reason"] == "held"
    assert cli(workspace, "release", "j0001").stdout.strip() == "j0001  queued"
    assert cli(workspace, "priority", "j0001", "low").stdout.strip() == "j0001  priority low"
    res = cli(workspace, "cancel", "j0001", "j0042")
    assert res.returncode == 1 and "j0001  cancelled" in res.stdout
    assert "no job 'j0042'" in res.stderr and "Traceback" not in res.stderr
    res = cli(workspace, "release", "j0001")
    assert res.returncode == 1 and "only a held job can be released" in res.stderr
    res = cli(workspace, "retry", "j0001")
    assert res.returncode == 0 and "queued again" in res.stdout
    assert cli(workspace, "priority", "j0001", "urgent").returncode == 2


def test_cancel_of_a_running_job_is_a_command_for_the_engine(workspace: Path) -> None:
    from trainconsole.engine.config import load_config
    from trainconsole.engine.store import Store

    cli(workspace, "add", str(write_job_file(workspace / "a.jsonl")))
    layout = load_config(workspace / "config.toml").layout()
    with Store.open(layout) as store:
        store.start("j0001", pid=os.getpid(), pid_start=1.0)
    res = cli(workspace, "cancel", "j0001")
    assert res.returncode == 0 and "asked the engine to stop" in res.stdout
    with Store.open(layout) as store:
        assert [(c.kind, c.job_id) for c in store.take_commands()] == [("cancel", "j0001")]
        assert store.require("j0001").status == "running"


@pytest.mark.edge(58)
def test_status_on_a_corrupt_database_rebuilds_it(workspace: Path) -> None:
    cli(workspace, "add", str(write_job_file(workspace / "a.jsonl")))
    queue = workspace / "queue"
    for suffix in ("-wal", "-shm"):
        (queue / f"state.db{suffix}").unlink(missing_ok=True)
    (queue / "state.db").write_bytes(b"\x00garbage" * 1000)
    res = cli(workspace, "status", "--json")
    assert res.returncode == 0 and "rebuilt from the queue folders (case 58)" in res.stderr
    doc = json.loads(res.stdout)
    assert [j["id"] for j in doc["jobs"]] == ["j0001"]
    assert any(p.name.startswith("state.db.corrupt-") for p in queue.iterdir())
    events = [json.loads(line) for line in (queue / "events.jsonl").read_text().splitlines()]
    assert any(e["type"] == "alert" and e["case"] == 58 for e in events)


def test_status_reports_a_stale_pid_file(workspace: Path) -> None:
    status_json(workspace)
    (workspace / "queue").mkdir(exist_ok=True)
    (workspace / "queue" / "engine.pid").write_text(json.dumps({"pid": 2**22 + 7, "start_time": 1.0}))
    doc = status_json(workspace)
    assert doc["engine"]["state"] == "stale"
    assert "stale PID file" in cli(workspace, "status").stdout


def test_status_never_imports_torch_or_textual(workspace: Path) -> None:
    code = (
        "import sys; from trainconsole.console.cli import main; "
        f"rc = main(['--config', {str(workspace / 'config.toml')!r}, 'status', '--json']); "
        "heavy = [m for m in ('torch', 'transformers', 'textual', 'peft') if m in sys.modules]; "
        "sys.stderr.write(repr(heavy)); sys.exit(rc)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=workspace)
    assert res.returncode == 0 and res.stderr.strip().endswith("[]"), res.stderr


def test_job_id_that_is_not_utf8_is_an_unknown_job_not_a_traceback(workspace: Path) -> None:
    # A byte that is not UTF-8 in argv reaches Python as a lone surrogate that sqlite cannot bind.
    for args in (("hold", "\udcff\udcfe"), ("priority", "\udcff", "high"), ("retry", "\udcff"),
                 ("cancel", "\udcff"), ("release", "\udcff")):
        res = cli(workspace, *args)
        assert res.returncode == 1, (args, res.stderr)
        assert "Traceback" not in res.stderr and "no job" in res.stderr


@pytest.mark.edge(58)
@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_status_after_the_database_is_deleted_or_emptied_lists_the_jobs_on_disk(
        workspace: Path, damage: str) -> None:
    paths = [write_job_file(workspace / f"d{i}.jsonl", f'{{"n": {i}}}\n') for i in range(2)]
    assert cli(workspace, "add", *map(str, paths)).returncode == 0
    db = workspace / "queue" / "state.db"
    for extra in (db.with_name("state.db-wal"), db.with_name("state.db-shm")):
        extra.unlink(missing_ok=True)
    db.unlink()
    if damage == "emptied":
        db.write_bytes(b"")
    doc = status_json(workspace)
    assert [j["id"] for j in doc["jobs"]] == ["j0001", "j0002"] and doc["counts"]["queued"] == 2


def test_status_json_times_are_iso_8601_with_an_offset(workspace: Path) -> None:
    import datetime as dt
    import time

    before = time.time()
    assert cli(workspace, "add", str(write_job_file(workspace / "a.jsonl"))).returncode == 0
    [job] = status_json(workspace)["jobs"]
    created = dt.datetime.fromisoformat(job["created_at"])
    assert created.utcoffset() is not None  # never a naive time
    assert before - 1 <= created.timestamp() <= time.time() + 1
    assert job["started_at"] is None and job["finished_at"] is None and job["next_attempt_at"] is None
    assert job["created_at"][10] == "T" and job["created_at"][19] == "."  # one format: ms and offset
