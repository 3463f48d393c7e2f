"""A job's log as text: the last N lines read from the end of a real file, torn and garbled lines
skipped, following until the store says the job ended, and the command's answers for a job that
does not exist or has no log yet. (The real daemon and worker: tests/daemon/test_logs_real.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from tests.chatdata import line
from tests.helpers import run_cli
from trainconsole.engine.events import make_event
from trainconsole.engine.joblog import follow, format_event, read_last


def _write(path: Path, n: int, start: int = 1, pad: int = 0) -> list[dict]:
    events = [make_event("step", job_id="j0001", step=i, max_steps=10_000, loss=1.0 / i, lr=1e-4,
                         grad_norm=0.5, tokens_per_s=1.0, note="x" * pad) for i in range(start, start + n)]
    with open(path, "ab") as fh:
        for event in events:
            fh.write(orjson.dumps(event) + b"\n")
    return events


def test_the_last_lines_come_from_the_end_of_a_long_log(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    events = _write(log, 3000, pad=100)  # ~0.6 MB: several blocks read backwards
    assert log.stat().st_size > 4 * (64 << 10)
    last, offset = read_last(log, 250)
    assert [e["step"] for e in last] == list(range(2751, 3001))
    assert offset == log.stat().st_size
    assert read_last(log, 0)[0] == [] and read_last(log, 0)[1] == offset
    everything, _ = read_last(log, None)
    assert everything == events
    assert read_last(log, 10**6)[0] == events


def test_a_torn_last_line_waits_and_a_garbled_line_is_skipped(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    _write(log, 5)
    with open(log, "ab") as fh:
        fh.write(b"{not json\n")
        fh.write(b'{"v": 1, "t": 1, "type": "log", "level": "info", "mes')  # a writer mid-line
    last, offset = read_last(log, 3)
    assert [e.get("step") for e in last] == [4, 5]  # the garbled line counted, not shown
    assert offset == log.stat().st_size - len(b'{"v": 1, "t": 1, "type": "log", "level": "info", "mes')
    with open(log, "ab") as fh:
        fh.write(b'sage": "finished"}\n')
    states = iter(["running", "done"])
    seen = list(follow(log, offset, lambda: next(states), sleep=lambda s: None))
    assert [e.get("message") for e in seen] == ["finished"]


def test_following_reads_what_was_written_before_the_end_was_seen(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    _write(log, 2)
    _, offset = read_last(log, None)
    calls = []

    def status() -> str:
        calls.append(1)
        if len(calls) < 3:
            return "queued" if len(calls) == 1 else "running"
        if len(calls) == 3:
            _write(log, 3, start=3)  # the worker's last words land as the job is marked done
        return "done"

    seen = list(follow(log, offset, status, sleep=lambda s: None))
    assert [e["step"] for e in seen] == [3, 4, 5]
    assert list(follow(log, 0, lambda: None, sleep=lambda s: None))  # a job gone: read, then stop


def test_every_event_kind_is_one_readable_line() -> None:
    lines = [format_event(make_event(kind, **fields), dated=True) for kind, fields in [
        ("step", {"step": 3, "max_steps": 9, "loss": 1.5, "lr": 1e-4, "grad_norm": 0.2}),
        ("eval", {"step": 3, "eval_loss": 1.25}),
        ("alert", {"case": 23, "severity": "warning", "message": "out of memory"}),
        ("job", {"status": "queued", "reason": "requeued"}),
        ("log", {"level": "info", "message": "worker 12 started"}),
    ]]
    assert [ln[19:] for ln in lines] == [
        " step 3/9 loss 1.5 lr 0.0001 grad 0.2", " eval step 3 eval_loss 1.25",
        " ALERT warning case 23: out of memory", " job queued requeued", " info: worker 12 started"]
    assert all(ln[4] == "-" and ln[10] == " " for ln in lines)  # dated: YYYY-MM-DD HH:MM:SS


def test_logs_and_show_of_a_job_that_does_not_exist_say_so(workspace: Path) -> None:
    config = str(workspace / "config.toml")
    for command in (["logs", "j0042"], ["logs", "j0042", "-f"], ["show", "j0042"]):
        proc = run_cli("--config", config, *command)
        assert proc.returncode == 1 and "no job 'j0042'" in proc.stderr and "Traceback" not in proc.stderr
    (workspace / "a.jsonl").write_text(line("q", "a"))
    assert run_cli("--config", config, "add", str(workspace / "a.jsonl")).returncode == 0
    proc = run_cli("--config", config, "logs", "j0001")  # queued, never started: an empty log
    assert proc.returncode == 0 and proc.stdout == ""
    proc = run_cli("--config", config, "show", "j0001", "--json")
    info = json.loads(proc.stdout)["job"]
    assert info["status"] == "queued" and info["reason"] == "next" and info["adapter"] is None
    assert info["last_loss"] is None and info["paths"]["data"].endswith("j0001--a.jsonl")
    proc = run_cli("--config", config, "logs", "j0001", "--lines", "-2")
    assert proc.returncode == 2 and "must be 0 or more" in proc.stderr
