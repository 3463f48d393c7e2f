"""The loss plot's pure code: debiased EMA, spike-preserving downsampling, the decimated live
series (bounded whatever the run's length), and the step rate."""

from __future__ import annotations

import math
import random

import pytest

from trainconsole.console.decimate import Decimated
from trainconsole.console.series import LossSeries, StepRate, downsample, ema_debiased


def test_ema_is_debiased_from_the_first_point() -> None:
    assert ema_debiased([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    smooth = ema_debiased([4.0, 0.0], beta=0.5)
    assert smooth[0] == pytest.approx(4.0)  # a plain EMA would start at 2.0
    assert smooth[1] == pytest.approx((0.5 * 2.0) / 0.75)


@pytest.mark.edge(64, 65)
def test_ema_passes_nan_and_inf_through_without_poisoning_later_points() -> None:
    smooth = ema_debiased([1.0, float("nan"), 1.0, float("inf"), 1.0])
    assert math.isnan(smooth[1]) and math.isinf(smooth[3])
    assert smooth[0] == smooth[2] == smooth[4] == pytest.approx(1.0)


def test_ema_rejects_a_beta_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="beta"):
        ema_debiased([1.0], beta=1.0)


def test_short_series_are_returned_unchanged() -> None:
    assert downsample([1, 2, 3], [3.0, 2.0, 1.0], 80) == ([1, 2, 3], [3.0, 2.0, 1.0])


@pytest.mark.edge(64, 65)
def test_downsampling_keeps_every_spike_and_the_last_point() -> None:
    xs = list(range(10_000))
    ys = [1.0] * 10_000
    ys[1234] = 50.0  # a spike
    ys[8765] = 0.01  # a dip
    ys[-1] = 0.5
    dx, dy = downsample(xs, ys, 40)
    assert len(dx) <= 3 * 40
    assert 50.0 in dy and 0.01 in dy
    assert dx[dy.index(50.0)] == 1234
    assert dx[-1] == 9999 and dy[-1] == 0.5
    assert dx == sorted(dx)


def test_downsampling_drops_points_a_plot_cannot_draw() -> None:
    xs = list(range(500))
    ys = [float("nan") if i % 7 == 0 else float(i) for i in xs]
    dx, dy = downsample(xs, ys, 10)
    assert all(math.isfinite(y) for y in dy)
    assert dy[-1] == 499.0


def test_downsampling_checks_lengths() -> None:
    with pytest.raises(ValueError, match="length"):
        downsample([1, 2], [1.0], 10)


# --- the live series: decimated as it arrives ---------------------------------------------------

def noisy_loss(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [0.6 + 2.0 * math.exp(-s / 5000) + rng.gauss(0.0, 0.05) for s in range(n)]


@pytest.mark.parametrize("n", [1_000, 100_000])
def test_decimated_memory_and_view_are_bounded_whatever_the_history(n: int) -> None:
    series = Decimated(cap=256)
    ys = noisy_loss(n)
    for step, y in enumerate(ys, start=1):
        series.add(step, y)
    assert len(series) <= 2 * 256
    xs, vy = series.view(60)
    assert len(xs) <= 3 * 60 + 1 and xs == sorted(xs)
    assert xs[0] == 1 and xs[-1] == n and vy[-1] == ys[-1]


@pytest.mark.edge(64, 65)
def test_decimated_keeps_spikes_at_any_length() -> None:
    series = Decimated(cap=64)
    ys = [1.0] * 100_000
    ys[12_345], ys[87_654] = 50.0, 0.01
    for step, y in enumerate(ys):
        series.add(step, y)
    xs, vy = series.view(40)
    assert 50.0 in vy and 0.01 in vy and xs[vy.index(50.0)] == 12_345


def test_decimated_short_series_are_exact() -> None:
    series = Decimated()
    for step, y in [(1, 3.0), (2, 2.0), (3, 1.0)]:
        series.add(step, y)
    assert series.view(80) == ([1, 2, 3], [3.0, 2.0, 1.0])


def test_decimated_columns_are_aligned_so_a_new_point_moves_only_the_right_edge() -> None:
    series = Decimated(cap=256)
    ys = noisy_loss(60_000)
    for step, y in enumerate(ys[:50_000], start=1):
        series.add(step, y)
    before = series.view(60)
    for step, y in enumerate(ys[50_000:50_500], start=50_001):
        series.add(step, y)
    after = series.view(60)
    # Every column but the last one (and the one it grew into) is the same points.
    kept = [p for p in zip(*before, strict=True) if p[0] <= 49_000]
    assert kept and kept == [p for p in zip(*after, strict=True) if p[0] <= 49_000]


def test_decimated_rollback_replaces_the_tail_exactly() -> None:
    rolled = Decimated(cap=16)
    straight = Decimated(cap=16)
    ys = noisy_loss(3000)
    for step in range(1, 2001):
        rolled.add(step, ys[step - 1])
    for step in range(1501, 3001):  # resumed from a checkpoint at 1500: steps repeat, new losses
        rolled.add(step, ys[step - 1] + 1.0)
    for step in range(1, 3001):
        straight.add(step, ys[step - 1] + (1.0 if step > 1500 else 0.0))
    assert rolled.span == straight.span and rolled.view(40) == straight.view(40)


def test_history_read_later_and_put_in_front_equals_reading_it_in_order() -> None:
    ys = noisy_loss(40_000)
    whole, newest, older = LossSeries(cap=128), LossSeries(cap=128), LossSeries(cap=128)
    for step, y in enumerate(ys, start=1):
        whole.add_step(step, y)
    for step, y in enumerate(ys[30_000:], start=30_001):  # the window read first
        newest.add_step(step, y)
    for step, y in enumerate(ys[:30_000], start=1):  # then the older part
        older.add_step(step, y)
    newest.absorb_older(older)
    assert newest.train.view(70) == whole.train.view(70)
    assert newest.last_step == 40_000 and newest.train.first_x == 1


def test_loss_series_rollback_resumes_the_average_from_the_kept_point() -> None:
    series = LossSeries()
    ys = noisy_loss(300)
    for step in range(1, 301):
        series.add_step(step, ys[step - 1])
    series.add_step(251, 0.5)  # rolled back to 250
    expected = ema_debiased([*ys[:250], 0.5])[-1]
    assert series.smooth.last == (251, pytest.approx(expected))
    assert series.last_step == 251 and series.last_loss == 0.5


@pytest.mark.edge(64)
def test_loss_series_keeps_a_nan_for_the_title_but_not_in_the_plot() -> None:
    series = LossSeries()
    series.add_step(1, 2.0)
    series.add_step(2, float("nan"))
    assert series.last_loss is not None and math.isnan(series.last_loss)
    assert series.train.view(10) == ([1], [2.0])


@pytest.mark.parametrize("rate", [0.5, 48.0, 1000.0])
def test_step_rate_at_any_pace(rate: float) -> None:
    # Counted over the last 30 events, no rate came out above 30 steps/s (they span under 1 s).
    meter = StepRate()
    t = 1000.0
    for step in range(1, int(rate * 20) + 2):
        meter.add(t + step / rate, step)
    measured = meter.rate(now=t + (int(rate * 20) + 1) / rate)
    assert measured == pytest.approx(rate, rel=0.01)
    assert len(meter.samples) <= 10 / meter.resolution_s + 2


def test_step_rate_is_none_for_a_burst_a_stall_or_a_rollback() -> None:
    meter = StepRate()
    for step in range(100):  # a history read at once: all within a millisecond
        meter.add(5000.0 + step * 1e-5, step)
    assert meter.rate() is None
    meter.add(5002.0, 200)
    assert meter.rate(now=5002.5) == pytest.approx(100.0, rel=0.01)
    assert meter.rate(now=5030.0) is None  # nothing new for longer than the window
    meter.add(5003.0, 150)  # rolled back: measured afresh
    assert meter.rate(now=5003.0) is None
