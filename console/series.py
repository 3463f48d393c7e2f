"""Loss series for the plot: a debiased moving average and a downsampling that keeps spikes.

Pure functions over plain sequences, so they are tested without a terminal. A plot is a few dozen
columns wide and a run has thousands of steps: averaging points into columns would hide exactly
the spike an operator needs to see (case 64, 65), so each column keeps its minimum, its maximum
and its last point, in step order.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Sequence


def ema_debiased(values: Sequence[float], beta: float = 0.9) -> list[float]:
    """Exponential moving average divided by ``1 - beta**n``, so the first points are not pulled
    toward zero (as TensorBoard and W&B smooth). Non-finite values are skipped by the average and
    given back as they are, so a NaN shows where it happened without poisoning what follows."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    out: list[float] = []
    acc = 0.0
    n = 0
    for value in values:
        if not math.isfinite(value):
            out.append(value)
            continue
        n += 1
        acc = beta * acc + (1.0 - beta) * value
        out.append(acc / (1.0 - beta**n))
    return out


def downsample(xs: Sequence[float], ys: Sequence[float], width: int) -> tuple[list[float], list[float]]:
    """At most about ``3 * width`` points: for each of ``width`` equal spans of x, the points with
    the smallest and largest y and the last point, in x order. Non-finite values are dropped (a
    plot cannot draw them); fewer points than columns are returned unchanged.

    It runs every refresh on the whole history, so the work per point is C-level (slices, min,
    max, bisect) and the Python loop is per column."""
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys differ in length: {len(xs)} != {len(ys)}")
    if all(map(math.isfinite, ys)) and all(map(math.isfinite, xs)):
        px, py = list(xs), list(ys)
    else:
        kept = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
        px, py = [p[0] for p in kept], [p[1] for p in kept]
    n = len(px)
    if width < 1 or n <= 3 * width:
        return px, py
    if not all(map(operator.le, px, px[1:])):
        order = sorted(range(n), key=px.__getitem__)
        px, py = [px[i] for i in order], [py[i] for i in order]
    lo, hi = px[0], px[-1]
    span = (hi - lo) or 1.0
    keep: list[int] = []
    start = 0
    for column in range(1, width + 1):
        end = n if column == width else bisect.bisect_left(px, lo + span * column / width, start)
        if end <= start:
            continue
        segment = py[start:end]
        lowest = start + segment.index(min(segment))
        highest = start + segment.index(max(segment))
        keep.extend(sorted({lowest, highest, end - 1}))
        start = end
    return [px[i] for i in keep], [py[i] for i in keep]


class Ema:
    """``ema_debiased`` one point at a time, for a series that grows every step."""

    def __init__(self, beta: float = 0.9) -> None:
        self.beta = beta
        self.acc = 0.0
        self.n = 0

    def add(self, value: float) -> float:
        if not math.isfinite(value):
            return value
        self.n += 1
        self.acc = self.beta * self.acc + (1.0 - self.beta) * value
        return self.acc / (1.0 - self.beta**self.n)
