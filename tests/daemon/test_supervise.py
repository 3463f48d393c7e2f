"""Supervision with a protocol-speaking fake worker (tests/daemon/fake_worker.py): real processes,
signals, files and SQLite, minus torch, so each policy is checked in well under a second. The same
paths run with the real worker on the tiny model in test_daemon_real.py."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from tests.daemon.harness import Harness, drop
from trainconsole.engine.errors import ErrorClass


@pytest.fixture
def harness(workspace: Path, request: pytest.FixtureRequest) -> Harness:
    values = getattr(request, "param", None)
    h = Harness(workspace, values)
    request.addfinalizer(h.close)
    return h


def cfg(values: dict) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("harness", [values], indirect=True)


def _env(h: Harness, job_id: str) -> dict:
    return json.loads((h.layout.run_dir(job_id) / "env.json").read_text())


@pytest.mark.edge(29, 49)
def test_a_job_runs_to_done_with_the_allocator_setting_and_no_zombie(harness: Harness) -> None:
    drop(harness.ws, "a.jsonl")
    harness.run_until(lambda: [j.status for j in harness.jobs()] == ["done"])
    job = harness.jobs()[0]
    assert job.attempts == 1
    assert _env(harness, job.id)["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    # The worker was reaped (waitpid): no defunct child of this process remains.
    assert not [c for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE]


@pytest.mark.edge(21, 23)
def test_gpu_oom_walks_down_the_ladder_keeping_the_effective_batch(harness: Harness,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A GPU OOM cannot happen on this CPU machine: the fake worker reports one while batch > 1.
    monkeypatch.setenv("TRAINCONSOLE_FAULT", "oom_above_batch:1@2")
    drop(harness.ws, "a.jsonl")
    harness.run_until(lambda: [j.status for j in harness.jobs()] == ["done"])
    job = harness.jobs()[0]
    cfg = harness.cfg.training
    assert job.overrides["batch_size"] == 1
    assert job.overrides["batch_size"] * job.overrides["gradient_accumulation"] == (
        cfg.batch_size * cfg.gradient_accumulation)
    assert job.overrides["oom_rung"] == 2  # 4 -> 2 -> 1
    assert job.attempts == 1  # GPU OOM rungs are not charged
    alerts = [a for a in harness.alerts() if a["case"] == 23]
    assert len(alerts) == 2 and "rung 1" in alerts[0]["message"] and "rung 2" in alerts[1]["message"]


@pytest.mark.edge(22)
def test_oom_while_tokenizing_takes_the_same_ladder(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenization runs on the CPU into a memory-mapped cache before the model is on a device, so
    a GPU OOM cannot happen there; a worker that reports one anyway (case 22) gets the same ladder,
    and the alert carries its case."""
    monkeypatch.setenv("TRAINCONSOLE_FAULT", "oom_above_batch:2@1")
    monkeypatch.setenv("FAKE_OOM_PHASE", "tokenizing")  # the number is the real worker's rule
    drop(harness.ws, "a.jsonl")
    harness.run_until(lambda: [j.status for j in harness.jobs()] == ["done"])
    job = harness.jobs()[0]
    assert job.overrides["batch_size"] == 2 and job.overrides["oom_rung"] == 1
    assert [a["case"] for a in harness.alerts() if a["case"] in (22, 23)] == [22]


@pytest.mark.edge(23)
def test_oom_past_the_last_rung_is_a_clear_failure(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCONSOLE_FAULT", "oom@1")  # OOM at any batch size
    drop(harness.ws, "a.jsonl")
    harness.run_until(lambda: [j.status for j in harness.jobs()] == ["failed"])
    job = harness.jobs()[0]
    assert job.overrides["gradient_checkpointing"] is True and job.overrides["batch_size"] == 1
    assert "even with micro-batch 1 and gradient checkpointing" in (job.error or "")


@pytest.mark.edge(28)
@cfg({"queue.max_attempts": 5})
def test_device_faults_retry_then_pause_the_queue(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCONSOLE_FAULT", "device@1")  # a GPU fault, injected
    drop(harness.ws, "a.jsonl")
    harness.run_until(lambda: harness.store.paused())
    job = harness.jobs()[0]
    assert job.status == "queued" and job.attempts == 3 and job.error_class == ErrorClass.DEVICE
    assert any(a["case"] == 28 and "paused" in a["message"] for a in harness.alerts())


@pytest.mark.edge(25)
def test_disk_full_is_not_charged_and_pauses(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCONSOLE_FAULT", "enospc@2")
    drop(harness.ws, "a.jsonl")
    harness.run_until(lambda: harness.store.paused())
    job = harness.jobs()[0]
    assert job.status == "queued" and job.attempts == 0 and harness.sup.holds.disk_paused
    assert harness.sup.guard.disk_hold is not None


@pytest.mark.edge(70)
def test_a_hang_is_caught_with_stacks_in_the_job_log(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCONSOLE_FAULT", "hang@2")
    drop(harness.ws, "a.jsonl")
    harness.run_until(lambda: harness.jobs()[0].error_class == ErrorClass.TRANSIENT, timeout=30)
    job = harness.jobs()[0]
    first = job.history[0]
    assert first["attempt"] == 1 and first["class"] == "transient" and "watchdog" in first["message"]
    from trainconsole.engine.events import read_all

    logs = [e for e in read_all(harness.layout.job_events(job.id)) if e["type"] == "log"]
    assert any("Python stacks" in e["message"] and "fake_worker.py" in e["message"] for e in logs)


@pytest.mark.edge(71, 72, 73, 74, 75, 76, 77, 78)
@pytest.mark.parametrize("exc", ["UnboundLocalError", "NameError", "AttributeError", "KeyError",
                                 "IndexError", "TypeError", "ValueError", "ZeroDivisionError"])
def test_a_bug_fails_once_with_its_traceback_and_the_next_job_runs(harness: Harness, exc: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCONSOLE_FAULT", f"raise:{exc}@2")
    monkeypatch.setenv("TRAINCONSOLE_FAULT_JOBS", "bad*")
    drop(harness.ws, "bad.jsonl")
    drop(harness.ws, "good.jsonl")
    harness.run_until(lambda: sorted(j.status for j in harness.jobs()) == ["done", "failed"])
    bad = next(j for j in harness.jobs() if j.name == "bad.jsonl")
    assert bad.attempts == 1 and bad.error_class == ErrorClass.BUG
    report = next(harness.layout.failed.glob(f"{bad.id}*report*"))
    assert "Traceback" in report.read_text() and exc in report.read_text()
    # The case the real worker's classifier gives that exception (71 UnboundLocalError ... 78).
    want = 71 + ["UnboundLocalError", "NameError", "AttributeError", "KeyError", "IndexError",
                 "TypeError", "ValueError", "ZeroDivisionError"].index(exc)
    assert [a["case"] for a in harness.alerts() if "a bug stopped" in a["message"]] == [want]


def test_stop_interrupts_without_charging(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STEPS", "200")
    drop(harness.ws, "a.jsonl")
    harness.run_until(lambda: (harness.sup.current is not None and harness.sup.current.last_step or 0) >= 2)
    harness.store.post_command("stop")
    harness.run_until(lambda: harness.sup.current is None)
    job = harness.jobs()[0]
    assert job.status == "queued" and job.attempts == 0 and 2 <= (job.step or 0) < 200


def test_cancel_of_the_running_job(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STEPS", "200")
    drop(harness.ws, "a.jsonl")
    harness.run_until(lambda: harness.sup.current is not None)
    harness.store.cancel(harness.jobs()[0].id)
    harness.run_until(lambda: [j.status for j in harness.jobs()] == ["cancelled"])


@pytest.mark.edge(24)
@cfg({"queue.max_attempts": 2})
def test_outside_sigkill_is_charged_and_bounded(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCONSOLE_FAULT", "crash@2")  # SIGKILL, no report, as the OOM killer does
    drop(harness.ws, "a.jsonl")
    harness.run_until(lambda: [j.status for j in harness.jobs()] == ["failed"])
    assert harness.jobs()[0].attempts == 2


@pytest.mark.edge(59)
def test_a_file_dropped_while_a_job_trains_is_queued_at_once(harness: Harness,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The inbox is read during training, so the operator can hold or reprioritise a new arrival
    before the running job ends."""
    monkeypatch.setenv("FAKE_STEPS", "200")
    drop(harness.ws, "a.jsonl")
    harness.run_until(lambda: harness.sup.current is not None)
    drop(harness.ws, "b.jsonl")
    harness.run_until(lambda: len(harness.jobs()) == 2)
    first, second = harness.jobs()
    assert first.status == "running" and second.status == "queued"
    assert harness.sup.current is not None  # the first job is still training
