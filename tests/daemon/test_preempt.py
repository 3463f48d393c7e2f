"""Preemption (``queue.preempt``): a high-priority arrival stops a running lower-priority job at a
checkpoint; the high job runs first; the stopped job is requeued without charging an attempt and
resumes from its checkpoint, losing at most one save interval. With ``false`` (the default) the
high job waits for the running one to finish. The fast tests use the protocol-speaking fake worker
(SIGTERM -> checkpoint, exit 18); the acceptance test trains the real tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.daemon.harness import TINY, Harness, chat_lines, job_events
from tests.daemon.realrun import REAL, step_trail, worst_step_loss
from trainconsole.engine.daemon.launcher import launcher_for


def drop_at(ws: Path, name: str, priority: str, n: int = 16) -> None:
    folder = ws / "queue" / "incoming" / ({"normal": ""}.get(priority, priority))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = ws / f".{name}.part"
    tmp.write_text(chat_lines(n, name))
    os.replace(tmp, folder / name)


def _by_name(h: Harness, name: str):
    return next(j for j in h.jobs() if j.name == name)


def _run_recording(h: Harness, done, timeout: float) -> list[tuple[str, ...]]:
    """Drive the supervisor until ``done``, recording each change of the set of running jobs."""
    seen: list[tuple[str, ...]] = []

    def step() -> bool:
        now = tuple(sorted(r.job.name for r in h.sup.running.values()))
        if now and (not seen or seen[-1] != now):
            seen.append(now)
        return done()
    h.run_until(step, timeout=timeout)
    return seen


@pytest.mark.edge(59)
@pytest.mark.parametrize("preempt", [True, False])
def test_a_high_arrival_preempts_only_when_asked(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                 preempt: bool) -> None:
    monkeypatch.setenv("FAKE_STEPS", "60")
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    h = Harness(workspace, {"queue.preempt": preempt})
    try:
        drop_at(workspace, "low.jsonl", "low")
        h.run_until(lambda: bool(h.sup.running) and (h.sup.current.last_step or 0) >= 5)
        drop_at(workspace, "high.jsonl", "high")
        order = _run_recording(h, lambda: [j.status for j in h.jobs()] == ["done", "done"], 120)
        low = _by_name(h, "low.jsonl")
        trail = step_trail(h.layout, low.id)
        if preempt:
            assert order == [("low.jsonl",), ("high.jsonl",), ("low.jsonl",)], order
            assert low.attempts == 1  # the preempted attempt was given back
            assert worst_step_loss(trail) <= 1 and trail[-1] == 60  # the fake saves every step
            text = [e["message"] for e in job_events(h.layout, low.id) if e["type"] == "log"]
            assert any(m.startswith(f"preempted by {_by_name(h, 'high.jsonl').id} (high priority)")
                       for m in text), text
        else:
            assert order == [("low.jsonl",), ("high.jsonl",)], order
            assert low.attempts == 1 and trail == list(range(1, 61))
    finally:
        h.close()


def test_equal_or_lower_arrivals_never_preempt(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STEPS", "40")
    h = Harness(workspace, {"queue.preempt": True})
    try:
        drop_at(workspace, "normal.jsonl", "normal")
        h.run_until(lambda: bool(h.sup.running) and (h.sup.current.last_step or 0) >= 3)
        drop_at(workspace, "other.jsonl", "normal")
        drop_at(workspace, "low.jsonl", "low")
        order = _run_recording(h, lambda: [j.status for j in h.jobs()] == ["done"] * 3, 120)
        assert order == [("normal.jsonl",), ("other.jsonl",), ("low.jsonl",)], order
        assert [j.attempts for j in h.jobs()] == [1, 1, 1]
    finally:
        h.close()


@pytest.mark.edge(59)
def test_preemption_with_the_real_worker_loses_at_most_one_save_interval(workspace: Path,
                                                                        tiny_model: Path) -> None:
    save = 4
    h = Harness(workspace, {**TINY, **REAL, "training.max_steps": 24, "training.save_steps": save,
                            "queue.preempt": True}, launcher_factory=launcher_for)
    try:
        drop_at(workspace, "low.jsonl", "low", n=48)
        h.run_until(lambda: bool(h.sup.running) and (h.sup.current.last_step or 0) >= save + 2, timeout=300)
        drop_at(workspace, "high.jsonl", "high", n=16)
        order = _run_recording(h, lambda: [j.status for j in h.jobs()] == ["done", "done"], 600)
        assert order == [("low.jsonl",), ("high.jsonl",), ("low.jsonl",)], order
        low, high = _by_name(h, "low.jsonl"), _by_name(h, "high.jsonl")
        assert low.attempts == 1 and high.attempts == 1
        # The step it reached before the stop, and the checkpoint the next attempt resumed from.
        events = list(job_events(h.layout, low.id))
        stop = next(i for i, e in enumerate(events) if e["type"] == "log"
                    and e["message"] == "worker finished: interrupted")
        reached = max(e["step"] for e in events[:stop] if e["type"] == "step")
        (resumed,) = [e["message"] for e in events[stop:] if e["type"] == "log"
                      and e["message"].startswith("resuming from checkpoint-")]
        resumed_from = int(resumed.rsplit("-", 1)[1])
        assert reached >= save + 2 and 0 <= reached - resumed_from <= save, (reached, resumed_from)
        trail = step_trail(h.layout, low.id)
        assert trail[-1] == 24 and worst_step_loss(trail) <= save
        assert low.adapter and high.adapter
        # The high job published into the same lineage meanwhile; the low job still continues what
        # it began from (a new adapter), in its log as in its checkpoint.
        plans = [e["message"] for e in events if e["type"] == "log" and e["message"].startswith("plan: ")]
        assert len(plans) == 2 and all(p.endswith(", new adapter") for p in plans), plans
        assert not [e for e in events if e["type"] == "log" and e["message"].startswith("continuing adapter")]
    finally:
        h.close()
