"""The loss plot's pure functions: debiased EMA and spike-preserving downsampling."""

from __future__ import annotations

import math

import pytest

from trainconsole.console.series import downsample, ema_debiased


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
