"""Loss series for the plot: a debiased moving average and a downsampling that keeps spikes.

Pure code over plain numbers, tested without a terminal. A plot is a few dozen columns wide and a
run has up to hundreds of thousands of steps: averaging points into columns would hide exactly the
spike an operator needs to see (case 64, 65), so each column keeps its minimum, its maximum and
its last point, in step order.

``downsample`` does that over a whole sequence (O(n) per call). A live run uses ``Decimated``
(``console.decimate``) instead, which keeps the same three points per bucket as the steps arrive, so both its memory and
the work of a view are bounded by the bucket cap, not by the run's length: at 100k steps a view
costs what it costs at 5k. ``StepRate`` measures steps per second over a time window, at any rate.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections import deque
from collections.abc import Sequence

from trainconsole.console.decimate import Decimated

_finite = math.isfinite


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
    """``ema_debiased`` one point at a time, for a series that grows every step. ``state`` and
    ``restore`` let a rollback resume the average from the last kept point."""

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

    @property
    def state(self) -> tuple[float, int]:
        return self.acc, self.n

    def restore(self, state: tuple[float, int]) -> None:
        self.acc, self.n = state


# A growing curve is drawn at most this often: building it is the plot's cost, and a trend drawn
# every 2 s reads the same. A new job, log-y or a resize draw at once.
GROWTH_REDRAW_S = 2.0
SETTLE = 30  # smoothed points left out where a series starts inside a history (see LossSeries)
_DEBIASED = 400  # past this many points, 1 - beta**n is 1.0 in a double (beta 0.9)


class LossSeries:
    """One job's loss for the plot: train loss, its debiased average and eval loss, each
    ``Decimated``; the last step and loss as they came (NaN included, for the title).

    A series that begins inside a history (a log read newest part first, then older bites, each
    built apart and put in front) starts its average afresh, and a debiased average's first few
    points follow the raw loss: ``settle`` of them are left out of the smoothed line, a gap of a
    few dozen steps at each join, narrower than one column at such a history's scale."""

    def __init__(self, cap: int = 256, beta: float = 0.9, raw_keep: int = 4096, settle: int = 0,
                 span: float = 1.0) -> None:
        self.train = Decimated(cap, raw_keep, span)
        self.smooth = Decimated(cap, raw_keep, span)
        self.evals = Decimated(cap, raw_keep, span)
        self.ema = Ema(beta)
        self.settle = settle
        self._ema_states: deque[tuple[float, float, int]] = deque(maxlen=raw_keep)
        self.last_step: float | None = None
        self.last_loss: float | None = None
        self.max_steps = 0

    def add_step(self, step: float, loss: float) -> None:
        self.extend((step,), (loss,))

    def extend(self, steps: Sequence[float], losses: Sequence[float]) -> None:
        """Many steps at once, in log order: the loop a long history is read through. Steps that
        all come after the last one, with finite losses (the usual case), feed each decimated
        series in one batch; anything else (a rollback, a NaN) goes step by step."""
        if not steps:
            return
        last = -math.inf if self.last_step is None else self.last_step
        if not (steps[0] > last and all(map(operator.lt, steps, steps[1:]))
                and all(map(_finite, steps)) and all(map(_finite, losses))):
            self._extend_slowly(steps, losses)
            return
        beta = self.ema.beta
        rest = 1.0 - beta
        acc, n = self.ema.acc, self.ema.n
        smooth: list[float] = []
        keep = self._ema_states.maxlen or 0
        states_from = len(steps) - keep
        states = self._ema_states
        for i, loss in enumerate(losses):
            n += 1
            acc = beta * acc + rest * loss
            smooth.append(acc / (1.0 - beta**n) if n < _DEBIASED else acc)
            if i >= states_from:
                states.append((steps[i], acc, n))
        self.ema.restore((acc, n))
        self.train.extend(steps, losses)
        settle = min(self.settle, len(steps))
        self.smooth.extend(steps[settle:], smooth[settle:])
        self.settle -= settle
        self.last_step, self.last_loss = steps[-1], losses[-1]

    def _extend_slowly(self, steps: Sequence[float], losses: Sequence[float]) -> None:
        train_add, smooth_add, states = self.train.add, self.smooth.add, self._ema_states
        beta = self.ema.beta
        rest = 1.0 - beta
        acc, n = self.ema.acc, self.ema.n
        last, settle = self.last_step, self.settle
        for step, loss in zip(steps, losses, strict=True):
            if not _finite(step):
                continue
            if last is not None and step <= last:
                self.ema.restore((acc, n))
                self._rollback(step)
                acc, n = self.ema.state
            last = step
            self.last_loss = loss
            train_add(step, loss)
            if not _finite(loss):
                continue
            n += 1
            acc = beta * acc + rest * loss
            if settle:
                settle -= 1
            else:
                smooth_add(step, acc / (1.0 - beta**n) if n < _DEBIASED else acc)
            states.append((step, acc, n))
        self.ema.restore((acc, n))
        self.last_step, self.settle = last, settle

    def _rollback(self, step: float) -> None:
        self.train.cut(step)
        self.smooth.cut(step)
        states = self._ema_states
        while states and states[-1][0] >= step:
            states.pop()
        if states:
            self.ema.restore(states[-1][1:])
        else:  # past the kept states: continue from the last smoothed point, as settled
            kept = self.smooth.last
            self.ema.restore((0.0, 0) if kept is None else (kept[1] * (1.0 - self.ema.beta**64), 64))

    def add_eval(self, step: float, loss: float) -> None:
        self.evals.add(step, loss)

    def absorb_older(self, older: LossSeries) -> None:
        """Put an older part of the history, read after this one, in front of it."""
        self.train.absorb_older(older.train)
        self.smooth.absorb_older(older.smooth)
        self.evals.absorb_older(older.evals)
        if self.last_step is None:
            self.last_step, self.last_loss = older.last_step, older.last_loss
        self.max_steps = self.max_steps or older.max_steps

    @property
    def empty(self) -> bool:
        return not self.train.buckets and not self.evals.buckets


class StepRate:
    """Steps per second over the last ``window_s`` seconds of event times.

    Trimmed by time, not by count: a count-bounded window (the last 30 events) spans under a
    second above 30 steps/s, and then no rate (and no ETA) was shown at all. Samples are thinned
    to one per ``resolution_s``, so memory is bounded at any step rate."""

    def __init__(self, window_s: float = 10.0, min_span_s: float = 1.0, resolution_s: float = 0.1) -> None:
        self.window_s, self.min_span_s, self.resolution_s = window_s, min_span_s, resolution_s
        self.samples: deque[tuple[float, float]] = deque()
        self.head: tuple[float, float] | None = None

    def add(self, t: float, step: float) -> None:
        if self.head is not None and (step < self.head[1] or t < self.head[0]):
            self.samples.clear()  # a rollback or a clock step: measure afresh
        self.head = (t, step)
        samples = self.samples
        if not samples or t - samples[-1][0] >= self.resolution_s:
            samples.append((t, step))
        while len(samples) > 2 and t - samples[1][0] >= self.window_s:
            samples.popleft()

    def rate(self, now: float | None = None) -> float | None:
        """None without a second of samples, or when the newest is older than the window
        (a stalled or finished job has no current pace)."""
        if self.head is None or not self.samples:
            return None
        (t0, s0), (t1, s1) = self.samples[0], self.head
        if now is not None and now - t1 > self.window_s:
            return None
        if t1 - t0 < self.min_span_s or s1 <= s0:
            return None
        return (s1 - s0) / (t1 - t0)
