"""One fault, one alert: a job that fails raises a single alert across the engine's log and the
job's own, naming the case, what happens next and where the report is."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.harness import TINY, Harness, drop, job_events
from tests.daemon.realrun import REAL
from trainconsole.engine.daemon.launcher import launcher_for


def _job_alerts(h: Harness) -> list[dict]:
    return [e for j in h.jobs() for e in job_events(h.layout, j.id) if e["type"] == "alert"]


def _job_failure_alerts(h: Harness) -> list[dict]:
    # The engine's own standing notices (no GPU here: training on the CPU) are not the job's fault.
    return [a for a in h.alerts() if a.get("key") != "device-cpu"] + _job_alerts(h)


@pytest.mark.edge(4)
def test_a_broken_file_through_the_real_worker_raises_one_case_4_alert(workspace: Path,
                                                                      tiny_model: Path) -> None:
    h = Harness(workspace, {**TINY, **REAL}, launcher_factory=launcher_for)
    try:
        inbox = workspace / "queue" / "incoming"
        inbox.mkdir(parents=True, exist_ok=True)
        (inbox / "broken.jsonl").write_text("{not json\n{also not json\n")
        h.run_until(lambda: [j.status for j in h.jobs()] == ["failed"], timeout=300)
        (job,) = h.jobs()
        alerts = _job_failure_alerts(h)
        assert len(alerts) == 1, alerts
        (alert,) = alerts
        assert alert["case"] == 4 and alert["job_id"] == job.id
        report = next(h.layout.failed.glob(f"{job.id}*.report.txt"))
        assert "not valid JSON" in alert["message"] and str(report) in alert["message"]
        # The worker's own account is still in the job's log, as a line, not a second alert.
        lines = [e for e in job_events(h.layout, job.id) if e["type"] == "log" and e["level"] == "error"]
        assert any("job failed (data, case 4)" in e["message"] for e in lines), lines
    finally:
        h.close()


@pytest.mark.edge(60)
def test_a_job_retried_until_it_gives_up_raises_one_alert_per_attempt(workspace: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCONSOLE_FAULT", "crash@2")  # SIGKILL without a report, each attempt
    h = Harness(workspace, {"queue.max_attempts": 2})
    try:
        drop(workspace, "a.jsonl")
        h.run_until(lambda: [j.status for j in h.jobs()] == ["failed"])
        alerts = _job_failure_alerts(h)
        # Attempt 1: retried; attempt 2: failed, with its report. No separate "failed" warning.
        assert [("retrying" in a["message"], "report in" in a["message"]) for a in alerts] == [
            (True, False), (False, True)], alerts
        assert "gave up after 2 attempts" in alerts[1]["message"]
    finally:
        h.close()


@pytest.mark.edge(13)
def test_a_fault_the_worker_alerted_itself_gets_no_second_alert(workspace: Path) -> None:
    """A refused adapter (13) is alerted by the worker as it finds it; its report says so, and the
    daemon fails the job without another alert. The same failure without that mark gets one."""
    from trainconsole.engine.daemon.outcome import classify
    from trainconsole.engine.daemon.retry_policy import Ended, Holds, apply_outcome
    from trainconsole.engine.runfiles import Report

    h = Harness(workspace)
    try:
        for name in ("a.jsonl", "b.jsonl"):
            drop(workspace, name)
        h.store.set_paused(True)
        h.run_until(lambda: len(h.jobs()) == 2)
        for job, alerted in zip(h.jobs(), (True, False), strict=True):
            h.store.start(job.id)
            report = Report(status="failed", error_class="config", case=13, alerted=alerted,
                            message="the adapter in adapters/latest was trained on another base")
            ended = Ended(job, run_dir=h.layout.run_dir(job.id), job_log=h.layout.job_events(job.id))
            apply_outcome(classify(report, 11), ended, store=h.store, notifier=h.notifier, guard=h.sup.guard,
                          holds=Holds(), training=h.cfg.training)
        first, second = h.jobs()
        assert first.status == second.status == "failed"
        alerts = [a for a in h.alerts() if a.get("key") != "device-cpu"]
        assert [(a["case"], a["job_id"]) for a in alerts] == [(13, second.id)], alerts
    finally:
        h.close()
