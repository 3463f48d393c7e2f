"""The plateau guard (case 66) on long, noisy losses: the real ``StepEvents`` and ``Plateau``
writing a real event log, fed the loss series a worker would feed them (no model: the guard sees
only numbers, and a 60k-step run is what the behaviour is about)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainconsole.engine.events import EventLog, read_all
from trainconsole.engine.train.guards import Plateau, StepEvents


def guard_alerts(tmp_path: Path, losses: list[float], window: int = 50, min_delta: float = 0.001,
                 patience: int = 3) -> list[dict[str, object]]:
    log_path = tmp_path / "events.jsonl"
    cfg = SimpleNamespace(plateau_window=window, plateau_min_delta=min_delta, plateau_patience=patience)
    with EventLog(log_path) as log:
        # logging_steps past the run's end: only the alerts are written
        guard = StepEvents(log, "j0007", cfg, max_steps=10**9, logging_steps=10**9)
        for step, loss in enumerate(losses, start=1):
            guard.step(step, loss, 1.0, 1e-4, 1000.0, None, None)
    return [e for e in read_all(log_path) if e["type"] == "alert" and e["case"] == 66]


def noisy(steps: int, level: float = 0.6, noise: float = 0.08, seed: int = 3) -> list[float]:
    rng = random.Random(seed)
    return [level * (1 + rng.gauss(0.0, noise)) for _ in range(steps)]


@pytest.mark.edge(66)
def test_a_noisy_plateau_of_58k_steps_is_one_standing_alert_not_hundreds(tmp_path: Path) -> None:
    # Descends for 8k steps, then sits at 0.6 with 8% noise: the old rule (each 50-step window
    # against the one before) alerted 577 times by step 58k on such a loss.
    rng = random.Random(7)
    falling = [0.6 + 2.0 * math.exp(-s / 800) + rng.gauss(0.0, 0.02) for s in range(8000)]
    alerts = guard_alerts(tmp_path, falling + noisy(50_000))
    started = [a for a in alerts if a["severity"] == "warning"]
    # The slowing descent may begin and end a plateau a couple of times; the 50k flat, noisy
    # steps after it are one standing alert, never resolved by a lucky window.
    assert 1 <= len(started) <= 3, [a["message"] for a in alerts]
    assert alerts[-1]["severity"] == "warning" and not alerts[-1]["resolved"]
    assert all(int(str(a["message"]).split("steps ")[1].split("-")[0]) < 10_000 for a in alerts)
    assert {a["key"] for a in alerts} == {"plateau-j0007"}  # one row in the console
    for alert in started:
        message = str(alert["message"])
        assert "plateau" in message and "improved" not in message
        assert ("rose " in message) or ("fell only " in message) or ("did not move" in message)


@pytest.mark.edge(66)
def test_a_loss_that_got_worse_is_worded_as_rising(tmp_path: Path) -> None:
    # Flat, then worse: the plateau's window mean is above the best, and the text says it rose.
    losses = [1.0] * 100 + [1.05] * 200
    alerts = guard_alerts(tmp_path, losses, patience=2)
    assert len(alerts) == 1
    message = str(alerts[0]["message"])
    assert "rose 5.00%" in message and "improved" not in message


@pytest.mark.edge(66)
def test_hysteresis_a_real_drop_settles_it_and_a_new_plateau_is_news_again(tmp_path: Path) -> None:
    flat = [1.0] * 300
    lower = [0.9] * 300  # 10% down: far past twice min_delta, for longer than patience
    alerts = guard_alerts(tmp_path, flat + lower, patience=2)
    assert [(a["severity"], a.get("resolved")) for a in alerts] == [
        ("warning", False), ("info", True), ("warning", False)]
    assert "improving again" in str(alerts[1]["message"]) and "fell 10.00%" in str(alerts[1]["message"])


def test_the_band_keeps_a_loss_at_the_threshold_from_flapping() -> None:
    # Window means after a plateau began: 1.5% below the best (past min_delta, short of twice
    # it) every other window, then single windows 3% below (past the band, but not for
    # `patience` windows in a row). One threshold, one window, would end and begin the plateau
    # each time. Two windows 3% below end it.
    guard = Plateau(window=10, min_delta=0.01, patience=2)
    means = [1.0, 1.0, 1.0] + [0.985, 1.0] * 5 + [0.97, 1.0] * 5 + [0.97, 0.97]
    changes = []
    for index, mean in enumerate(means):
        for step in range(10):
            change = guard.add(index * 10 + step + 1, mean)
            if change is not None:
                changes.append(change)
    assert [(c.started, c.last_step) for c in changes] == [(True, 30), (False, 250)]
    assert changes[1].change == pytest.approx(-0.03)


def test_a_steady_descent_slower_than_min_delta_per_window_still_counts_in_time() -> None:
    # 0.06% per window against min_delta 0.1%: each window alone is "no progress", but the best
    # is held, so the accumulated descent passes the threshold within two windows.
    guard = Plateau(window=50, min_delta=0.001, patience=3)
    level = 2.0
    changes = []
    for step in range(1, 50 * 400):
        if step % 50 == 0:
            level *= 1 - 0.0006
        c = guard.add(step, level)
        if c is not None:
            changes.append(c)
    assert changes == []


def test_non_finite_losses_do_not_poison_the_windows() -> None:
    guard = Plateau(window=5, min_delta=0.01, patience=1)
    for step in range(1, 6):
        assert guard.add(step, 1.0) is None
    assert guard.add(6, float("nan")) is None
    for step in range(7, 12):
        change = guard.add(step, 1.0)
    assert change is not None and change.started and math.isfinite(change.mean)
