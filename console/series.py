"""Loss series for the plot: a debiased moving average and a downsampling that keeps spikes.

Pure functions over plain sequences, so they are tested without a terminal. A plot is a few dozen
columns wide and a run has thousands of steps: averaging points into columns would hide exactly
the spike an operator needs to see (case 64, 65), so each column keeps its minimum, its maximum
and its last point, in step order.
"""

from __future__ import annotations

import math
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
    the smallest and largest y and the last point, in x order. Non-finite y values are dropped
    (a plot cannot draw them); fewer points than columns are returned unchanged."""
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys differ in length: {len(xs)} != {len(ys)}")
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y) and math.isfinite(x)]
    if width < 1 or len(pairs) <= 3 * max(width, 1):
        return [p[0] for p in pairs], [p[1] for p in pairs]
    lo, hi = pairs[0][0], pairs[-1][0]
    span = (hi - lo) or 1.0
    keep: list[int] = []
    column_start = 0
    current = 0
    for i in range(1, len(pairs) + 1):
        col = min(width - 1, int((pairs[i][0] - lo) / span * width)) if i < len(pairs) else -1
        if col != current or i == len(pairs):
            chunk = range(column_start, i)
            lowest = min(chunk, key=lambda j: pairs[j][1])
            highest = max(chunk, key=lambda j: pairs[j][1])
            keep.extend(sorted({lowest, highest, i - 1}))
            column_start = i
            current = col
    return [pairs[j][0] for j in keep], [pairs[j][1] for j in keep]
