"""The engine with launcher.kind = "slurm" on the real test cluster, the supervisor driven in this
process with the fake worker: parallel slots across lineages, cancel and stop reaching Slurm,
someone else's scancel, and kill -9 of the worker on the node. The real worker under a real
daemon process is in test_daemon_slurm_real.py."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.chatdata import chat_lines
from tests.daemon.harness import Harness
from tests.slurm.cluster import Cluster
from tests.slurm.daemon import slurm_harness, slurm_runs, slurm_worker
from trainconsole.engine.daemon.recovery import recover
from trainconsole.engine.daemon.slurm.submit import job_id_from_name
from trainconsole.engine.events import read_all
from trainconsole.engine.store import Experiment
from trainconsole.engine.store.add import NewFile
from trainconsole.engine.store.files import hash_file


def _steps(monkeypatch: pytest.MonkeyPatch, steps: int, step_s: float = 0.1) -> None:
    monkeypatch.setenv("FAKE_STEPS", str(steps))
    monkeypatch.setenv("FAKE_STEP_S", str(step_s))


def _add(h: Harness, name: str, lineage: str = "main") -> str:
    src = h.ws / "src" / name
    src.parent.mkdir(exist_ok=True)
    src.write_text(chat_lines(8, name))
    sha, size = hash_file(src)
    (added,) = h.store.add_files([NewFile(name, src, sha, size, experiment=Experiment(lineage=lineage))])
    assert added.job is not None, added.error
    return added.job.id


def _submissions(slurm: Cluster, tag: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for j in slurm.jobs():
        owner = job_id_from_name(str(j["name"]), tag)
        if owner:
            counts[owner] = counts.get(owner, 0) + 1
    return counts


def _resource_events(h: Harness) -> list[dict[str, object]]:
    return [e for e in read_all(h.layout.engine_events) if e["type"] == "resource"]


def test_three_lineages_run_at_once_in_three_slots(slurm: Cluster, workspace: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _steps(monkeypatch, 30)
    h = slurm_harness(workspace, {"launcher.max_parallel": 3})
    try:
        a1, b1, c1, a2 = (_add(h, f"{n}.jsonl", n[0]) for n in ("a1", "b1", "c1", "a2"))
        seen: list[set[str]] = []

        def three_at_once() -> bool:
            running = {jid for jid in h.sup.running
                       if (w := slurm_worker(h, jid)) is not None and w.state == "RUNNING"}
            seen.append(running)
            return len(running) == 3
        h.run_until(three_at_once, timeout=90)
        assert seen[-1] == {a1, b1, c1}  # a2 waits for its lineage, a slot or not
        assert slurm_runs(h).cluster.tracker.calls <= len(seen) + 2  # one squeue per look, for all jobs
        h.run_until(lambda: h.settled() and len(h.jobs()) == 4, timeout=180)
        assert all(not {a1, a2} <= s for s in seen)
        jobs = h.jobs()
        assert [j.status for j in jobs] == ["done"] * 4
        assert len({j.slurm_id for j in jobs}) == 4 and all(j.node == slurm.node for j in jobs)
        assert _submissions(slurm, slurm_runs(h).cluster.tag) == {j.id: 1 for j in jobs}
        assert any("node" in str(e.get("cluster", "")) for e in _resource_events(h))
    finally:
        h.close()


def test_one_lineage_runs_one_job_at_a_time_whatever_max_parallel(slurm: Cluster, workspace: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _steps(monkeypatch, 4)
    h = slurm_harness(workspace, {"launcher.max_parallel": 3})
    try:
        _add(h, "x.jsonl")
        _add(h, "y.jsonl")
        most = 0

        def done() -> bool:
            nonlocal most
            most = max(most, len(h.sup.running))
            return h.settled() and len(h.jobs()) == 2
        h.run_until(done, timeout=120)
        assert most == 1 and [j.status for j in h.jobs()] == ["done", "done"]
    finally:
        h.close()


def _worker_pid(run_dir: Path) -> int | None:
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if str(run_dir / "spec.json") in (proc.info["cmdline"] or []):
            return int(proc.info["pid"])
    return None


@pytest.mark.edge(42)
def test_kill_9_on_the_node_is_resubmitted_and_resumes(slurm: Cluster, workspace: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _steps(monkeypatch, 40)
    h = slurm_harness(workspace)
    try:
        job_id = _add(h, "a.jsonl")
        h.run_until(lambda: h.sup.current is not None and (h.sup.current.last_step or 0) >= 5, timeout=90)
        first = h.store.require(job_id).slurm_id
        pid = _worker_pid(h.layout.run_dir(job_id))
        assert first is not None and pid is not None
        os.kill(pid, signal.SIGKILL)
        h.run_until(h.settled, timeout=120)
        job = h.store.require(job_id)
        assert job.status == "done" and job.attempts == 2 and job.slurm_id != first
        steps = [e["step"] for e in read_all(h.layout.job_events(job_id)) if e["type"] == "step"]
        # The fake worker saves every step: the second attempt goes on where the first was killed
        # (the kill may fall between a step's save and its event: that one step is not logged).
        assert max(steps) == 40 and len(set(range(1, 41)) - set(steps)) <= 1
    finally:
        h.close()


def test_scancel_by_someone_else_holds_the_job_with_the_reason(slurm: Cluster, workspace: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _steps(monkeypatch, 40)
    h = slurm_harness(workspace)
    try:
        job_id = _add(h, "a.jsonl")
        h.run_until(lambda: h.sup.current is not None and (h.sup.current.last_step or 0) >= 2, timeout=90)
        assert slurm.run("scancel", str(h.store.require(job_id).slurm_id)).returncode == 0
        h.run_until(lambda: h.store.require(job_id).status == "held", timeout=60)
        held = h.store.require(job_id)
        assert held.attempts == 0 and "someone else" in (held.error or "")
        assert any("someone else" in a["message"] for a in h.alerts())
        h.store.release(job_id)
        h.run_until(h.settled, timeout=120)
        assert h.store.require(job_id).status == "done"
    finally:
        h.close()


def test_cancel_and_stop_reach_slurm(slurm: Cluster, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _steps(monkeypatch, 400)
    h = slurm_harness(workspace, {"launcher.max_parallel": 2})
    try:
        a = _add(h, "a.jsonl", "a")
        b = _add(h, "b.jsonl", "b")
        h.run_until(lambda: len(h.sup.running) == 2 and all((r.last_step or 0) >= 2 for r in h.sup.running.values()),
                    timeout=90)
        h.store.cancel(a)  # a command for the engine: scancel --signal=TERM, checkpoint first
        h.run_until(lambda: h.store.require(a).status == "cancelled", timeout=60)
        report = (h.layout.run_dir(a) / "report.json").read_text()
        assert '"interrupted"' in report and "SIGTERM" in report
        h.sup.request_stop("test")
        h.run_until(lambda: not h.sup.running, timeout=60)
        after = h.store.require(b)
        assert after.status == "queued" and after.attempts == 0  # checkpointed, requeued, not charged
        assert "SIGTERM" in (h.layout.run_dir(b) / "report.json").read_text()
        assert not slurm.active_jobs()
    finally:
        h.close()


def test_a_job_slurm_keeps_pending_shows_slurms_reason_and_has_no_watchdog(
        slurm: Cluster, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone else's job holds the node's memory: ours waits in Slurm's queue with Slurm's reason
    in the store (the console's reason), far past the first-step grace, and is not judged hung."""
    _steps(monkeypatch, 1)  # with looks 2 s apart it runs and ends between two of them
    memory = next(n["real_memory"] for n in slurm.sinfo()["nodes"] if n["name"] == slurm.node)
    other = slurm.run("sbatch", "--parsable", f"--mem={memory}M", "--output=/dev/null", "--wrap=sleep 300")
    assert other.returncode == 0, other.stderr
    h = slurm_harness(workspace, {"guards.first_step_grace_s": 1.0, "guards.hang_floor_s": 1.0,
                                  "launcher.poll_s": 2.0})
    try:
        job_id = _add(h, "a.jsonl")
        h.run_until(lambda: h.store.require(job_id).slurm_reason is not None, timeout=60)
        job = h.store.require(job_id)
        assert job.status == "running" and job.slurm_reason in ("Resources", "Priority") and job.node is None
        assert h.store.reason(job) == f"pending in Slurm ({job.slurm_reason})"
        waited = 0

        def still_pending() -> bool:  # a few seconds, well past the grace of 1 s
            nonlocal waited
            waited += 1
            return waited > 40
        h.run_until(still_pending, timeout=60)
        assert h.store.require(job_id).attempts == 1 and not any(a.get("case") == 70 for a in h.alerts())
        slurm.run("scancel", other.stdout.strip().split(";")[0])
        h.run_until(h.settled, timeout=120)
        job = h.store.require(job_id)
        assert job.status == "done" and job.attempts == 1 and job.node == slurm.node and job.slurm_reason is None
    finally:
        h.close()


@pytest.mark.edge(70)
def test_a_hang_on_the_node_is_caught_with_its_stacks(slurm: Cluster, workspace: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's heartbeat clock means nothing here: silence is timed on ours (observed mode), the
    stacks come through scancel --signal=USR2, then the job is ended and resubmitted."""
    _steps(monkeypatch, 12)
    monkeypatch.setenv("TRAINCONSOLE_FAULT_JOBS", "a.jsonl=hang@6")
    h = slurm_harness(workspace, {"guards.hang_floor_s": 3.0, "guards.hang_multiple": 5.0})
    try:
        job_id = _add(h, "a.jsonl")
        h.run_until(lambda: h.store.require(job_id).attempts >= 2, timeout=120)
        logs = [e for e in read_all(h.layout.job_events(job_id)) if e["type"] == "log"]
        assert any("Python stacks" in str(e.get("message")) and "fake_worker.py" in str(e.get("message"))
                   for e in logs)
        assert any(a.get("case") == 70 for a in h.alerts())
    finally:
        h.close()


def test_an_sbatch_that_refuses_is_a_transient_failure_with_one_alert(slurm: Cluster, workspace: Path) -> None:
    h = slurm_harness(workspace, {"launcher.partition": "nosuchpartition", "queue.max_attempts": 2})
    try:
        job_id = _add(h, "a.jsonl")
        h.run_until(lambda: h.store.require(job_id).status == "failed", timeout=60)
        job = h.store.require(job_id)
        assert job.attempts == 2 and job.error_class == "transient" and "sbatch failed" in (job.error or "")
        refusals = [a for a in h.alerts() if "sbatch failed" in a["message"]]
        assert [a["severity"] for a in refusals] == ["warning", "critical"]  # retried, then given up
        assert "partition" in refusals[0]["message"] and "no attempts left" in refusals[1]["message"]
        assert not h.sup.running and not slurm.active_jobs()
    finally:
        h.close()


@pytest.mark.edge(41)
def test_an_engine_gone_while_its_slurm_job_ended_judges_it_at_restart(slurm: Cluster, workspace: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine vanished (its loop simply stops) while the job trained; the job finishes with no
    engine watching; the next engine follows it by its recorded id, judges it done from its report,
    and submits nothing."""
    _steps(monkeypatch, 15)
    first = slurm_harness(workspace)
    job_id = _add(first, "a.jsonl")
    first.run_until(lambda: first.sup.current is not None and (first.sup.current.last_step or 0) >= 2, timeout=90)
    slurm_id = first.store.require(job_id).slurm_id
    lock_fd = first.sup.running[job_id].lock_fd
    if lock_fd is not None:
        os.close(lock_fd)  # what the first engine's death releases
    first.store.close()
    first.events.close()
    deadline = time.monotonic() + 90
    while slurm.active_jobs() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not slurm.active_jobs()
    h = slurm_harness(workspace)  # the next engine, on the same queue
    try:
        owned = h.sup.reattach()
        assert owned == {job_id}
        recover(h.store, h.layout, h.notifier, h.events, grace_s=1.0, owned=owned)
        assert h.store.require(job_id).status == "running"  # left to the Slurm judgement, not requeued
        h.run_until(h.settled, timeout=60)
        job = h.store.require(job_id)
        assert job.status == "done" and job.attempts == 1 and job.slurm_id == slurm_id
        assert _submissions(slurm, slurm_runs(h).cluster.tag) == {job_id: 1}
    finally:
        h.close()


def test_a_stop_while_slurm_keeps_the_job_pending_cancels_it_uncharged(slurm: Cluster, workspace: Path) -> None:
    memory = next(n["real_memory"] for n in slurm.sinfo()["nodes"] if n["name"] == slurm.node)
    other = slurm.run("sbatch", "--parsable", f"--mem={memory}M", "--output=/dev/null", "--wrap=sleep 300")
    assert other.returncode == 0, other.stderr
    other_id = int(other.stdout.strip().split(";")[0])
    h = slurm_harness(workspace)
    try:
        job_id = _add(h, "a.jsonl")
        h.run_until(lambda: h.store.require(job_id).slurm_reason is not None, timeout=60)
        h.sup.request_stop("test")
        h.run_until(lambda: not h.sup.running, timeout=60)
        job = h.store.require(job_id)
        assert job.status == "queued" and job.attempts == 0, (job.error_class, job.error)  # nothing ran: nothing charged
        assert [int(j["job_id"]) for j in slurm.active_jobs()] == [other_id]  # ours is gone, theirs untouched
    finally:
        h.close()
