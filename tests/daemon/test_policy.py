"""The pure parts: how an end is classified, the OOM ladder, the watchdog's adaptive limit."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from trainconsole.engine.daemon.outcome import classify, oom_kill_count
from trainconsole.engine.daemon.retry_policy import effective_batch, next_oom_rung
from trainconsole.engine.daemon.watchdog import Watchdog
from trainconsole.engine.errors import ErrorClass
from trainconsole.engine.runfiles import Report


def test_report_wins_over_exit_code_and_signal() -> None:
    report = Report.from_json({"status": "failed", "error_class": "data", "message": "bad file", "case": 4})
    out = classify(report, -signal.SIGKILL)
    assert out.error_class is ErrorClass.DATA and out.case == 4
    assert classify(Report.from_json({"status": "done"}), 0).done
    assert classify(Report.from_json({"status": "interrupted"}), 18).error_class is ErrorClass.INTERRUPTED


def test_exit_codes_and_signals_without_a_report() -> None:
    assert classify(None, 12).error_class is ErrorClass.OOM
    assert classify(None, 1, log_tail="Traceback ...").error_class is ErrorClass.BUG
    assert classify(None, 0).error_class is ErrorClass.BUG  # done without a report is ours to fix
    killed = classify(None, -signal.SIGKILL)
    assert killed.error_class is ErrorClass.TRANSIENT and killed.case == 24
    oom = classify(None, -signal.SIGKILL, oom_kills_during_run=1)
    assert oom.error_class is ErrorClass.OOM and oom.case == 24
    assert classify(None, -signal.SIGKILL, stopped_by_us=True).error_class is ErrorClass.INTERRUPTED
    assert classify(None, -signal.SIGKILL, hung_for_s=300).case == 70


def test_oom_ladder_keeps_the_effective_batch_then_checkpoints_then_ends() -> None:
    over: dict = {}
    seen = []
    while (rung := next_oom_rung(over, 6, 1, False)) is not None:
        over = rung.overrides
        seen.append((over.get("batch_size"), over.get("gradient_accumulation"), over.get("gradient_checkpointing")))
        assert effective_batch(over, 6, 1) == 6
    assert seen == [(3, 2, None), (1, 6, None), (1, 6, True)]
    assert next_oom_rung({}, 1, 1, True) is None


def test_oom_counter_reads_the_kernel_files(tmp_path: Path) -> None:
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("pgfault 10\noom_kill 3\n")
    events = tmp_path / "memory.events"
    events.write_text("low 0\noom 4\noom_kill 2\n")
    assert oom_kill_count((vmstat, events, tmp_path / "missing")) == 5
    assert oom_kill_count() >= 0  # the real files, where readable


def _beat(path: Path, step: int, mono: float, step_time: float) -> None:
    path.write_text(json.dumps({"pid": 1, "step": step, "mono": mono, "step_time_s": step_time}))


def test_watchdog_grace_then_adaptive_limit(tmp_path: Path) -> None:
    hb = tmp_path / "heartbeat.json"
    t0 = time.monotonic()
    dog = Watchdog(hb, floor_s=10, multiple=5, first_step_grace_s=100, launched_mono=t0)
    assert not dog.check(t0 + 99).hung  # loading: the first-step grace applies
    assert dog.check(t0 + 101).hung
    _beat(hb, 1, t0 + 50, 4.0)
    assert dog.check(t0 + 60).limit_s == 20  # 5 x 4 s beats the 10 s floor
    assert not dog.check(t0 + 69).hung and dog.check(t0 + 71).hung
    _beat(hb, 2, t0 + 80, 0.1)
    _beat(hb, 3, t0 + 80.1, 0.1)
    verdict = dog.check(t0 + 85)
    assert verdict.limit_s >= 10 and not verdict.hung  # never below the floor


def test_watchdog_ignores_a_heartbeat_from_before_this_launch(tmp_path: Path) -> None:
    hb = tmp_path / "heartbeat.json"
    t0 = time.monotonic()
    _beat(hb, 7, t0 - 500, 1.0)  # left by the previous attempt
    dog = Watchdog(hb, floor_s=10, multiple=5, first_step_grace_s=100, launched_mono=t0)
    assert not dog.check(t0 + 50).hung  # still in the grace, not judged on the stale beat


def test_watchdog_gives_save_eval_and_final_steps_the_long_grace(tmp_path: Path) -> None:
    hb = tmp_path / "heartbeat.json"
    t0 = time.monotonic()
    dog = Watchdog(hb, floor_s=10, multiple=5, first_step_grace_s=100, launched_mono=t0,
                   boundary=lambda step: step % 50 == 0)
    _beat(hb, 49, t0 + 10, 1.0)
    assert dog.check(t0 + 21).hung  # an ordinary step: 10 s limit
    _beat(hb, 50, t0 + 30, 1.0)
    verdict = dog.check(t0 + 100)
    assert verdict.limit_s == 100 and not verdict.hung  # a save step: the long grace


def test_a_remote_workers_beats_count_when_seen_on_our_clock(tmp_path: Path) -> None:
    """A Slurm node's monotonic clock means nothing here: its beats are timed when first seen."""
    hb = tmp_path / "heartbeat.json"
    t0 = time.monotonic()
    dog = Watchdog(hb, floor_s=10, multiple=5, first_step_grace_s=100, launched_mono=t0, observed=True)
    dog.start(t0 + 1000)  # pending in Slurm's queue until then: no grace used up meanwhile
    assert not dog.check(t0 + 1090).hung and dog.check(t0 + 1101).hung
    _beat(hb, 1, 5.0, 1.0)  # the node's clock: five seconds after its boot
    assert not dog.check(t0 + 1102).hung
    assert not dog.check(t0 + 1111).hung and dog.check(t0 + 1113).hung  # 10 s floor from when seen
    _beat(hb, 2, 6.0, 1.0)
    verdict = dog.check(t0 + 1120)
    assert not verdict.hung and verdict.silent_for_s == 0 and verdict.step == 2
