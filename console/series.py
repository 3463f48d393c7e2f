"""Loss series for the plot: a debiased moving average and a downsampling that keeps spikes.

Pure code over plain numbers, tested without a terminal. A plot is a few dozen columns wide and a
run has up to hundreds of thousands of steps: averaging points into columns would hide exactly the
spike an operator needs to see (case 64, 65), so each column keeps its minimum, its maximum and
its last point, in step order.

``downsample`` does that over a whole sequence (O(n) per call). A live run uses ``Decimated``
instead, which keeps the same three points per bucket as the steps arrive, so both its memory and
the work of a view are bounded by the bucket cap, not by the run's length: at 100k steps a view
costs what it costs at 5k. ``StepRate`` measures steps per second over a time window, at any rate.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections import deque
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


_finite = math.isfinite

# A bucket: [index, lowest x, lowest y, highest x, highest y, last x, last y]; lists, not objects,
# because one is touched per step and a merge per coarsening.
_I, _LX, _LY, _HX, _HY, _ZX, _ZY = range(7)


def _merge(into: list[float], later: list[float]) -> None:
    """Fold a later bucket into one before it (ties keep the earlier point)."""
    if later[_LY] < into[_LY]:
        into[_LX], into[_LY] = later[_LX], later[_LY]
    if later[_HY] > into[_HY]:
        into[_HX], into[_HY] = later[_HX], later[_HY]
    into[_ZX], into[_ZY] = later[_ZX], later[_ZY]


class Decimated:
    """A growing series kept as its lowest, highest and last point per bucket of ``span`` steps.

    Buckets are aligned to multiples of ``span``. When there are more than ``2 * cap`` of them the
    span doubles and neighbours merge, so memory stays under ``2 * cap`` buckets and adding a point
    is O(1) amortised. Because buckets are aligned, a finished one never changes: a view drawn
    from them moves only at its right edge (the terminal is sent only that), until the span next
    doubles.

    A point at or before the last one is a rollback (a resume from a checkpoint repeats steps):
    everything from it on is cut first. The newest ``raw_keep`` points are kept as they came, so
    a cut inside a coarse bucket rebuilds that bucket exactly from them (older buckets are cut
    whole only if a rollback reaches past them, which a checkpoint interval never does in practice).
    Non-finite values are skipped: a plot cannot draw them.
    """

    def __init__(self, cap: int = 256, raw_keep: int = 4096, span: float = 1.0) -> None:
        """``span``: steps per bucket to begin with (a part read to be joined to a series already
        this coarse need not be finer)."""
        if cap < 1:
            raise ValueError(f"cap must be at least 1, got {cap}")
        self.cap = cap
        self.span = span
        self.buckets: list[list[float]] = []
        self.raw: deque[tuple[float, float]] = deque(maxlen=raw_keep)
        self.first: tuple[float, float] | None = None  # the first point (buckets keep three each)

    def __len__(self) -> int:
        return len(self.buckets)

    @property
    def last(self) -> tuple[float, float] | None:
        if not self.buckets:
            return None
        bucket = self.buckets[-1]
        return bucket[_ZX], bucket[_ZY]

    def _index(self, x: float) -> float:
        return x // self.span

    def add(self, x: float, y: float) -> None:
        # The hot path (once per step, and per event of a history read): inlined, no calls.
        if not (_finite(x) and _finite(y)):
            return
        buckets = self.buckets
        if buckets and x <= buckets[-1][_ZX]:
            self.cut(x)
        if not buckets:
            self.first = (x, y)
        self.raw.append((x, y))
        index = x // self.span
        if buckets:
            bucket = buckets[-1]
            if bucket[_I] == index:
                if y < bucket[_LY]:
                    bucket[_LX], bucket[_LY] = x, y
                elif y > bucket[_HY]:
                    bucket[_HX], bucket[_HY] = x, y
                bucket[_ZX], bucket[_ZY] = x, y
                return
        buckets.append([index, x, y, x, y, x, y])
        if len(buckets) > 2 * self.cap:
            self._coarsen()

    def extend(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        """Many points in step order: a history bite or a poll's new steps. Points that all come
        after the last one and are finite (the usual case) take a loop with no calls in it;
        anything else goes point by point through ``add``."""
        buckets = self.buckets
        last = buckets[-1][_ZX] if buckets else -math.inf
        if not xs or not (xs[0] > last and all(map(operator.lt, xs, xs[1:]))
                          and all(map(_finite, xs)) and all(map(_finite, ys))):
            for x, y in zip(xs, ys, strict=True):
                self.add(x, y)
            return
        if not buckets:
            self.first = (xs[0], ys[0])
        span, limit = self.span, 2 * self.cap
        bucket = buckets[-1] if buckets else None
        for x, y in zip(xs, ys, strict=True):
            index = x // span
            if bucket is not None and bucket[0] == index:
                if y < bucket[2]:
                    bucket[1] = x
                    bucket[2] = y
                elif y > bucket[4]:
                    bucket[3] = x
                    bucket[4] = y
                bucket[5] = x
                bucket[6] = y
                continue
            bucket = [index, x, y, x, y, x, y]
            buckets.append(bucket)
            if len(buckets) > limit:
                self._coarsen()
                buckets, span = self.buckets, self.span
                bucket = buckets[-1]
        keep = self.raw.maxlen or 0
        self.raw.extend(zip(xs[-keep:], ys[-keep:], strict=True))

    def _place(self, x: float, y: float) -> None:
        index = self._index(x)
        buckets = self.buckets
        if buckets and buckets[-1][_I] == index:
            bucket = buckets[-1]
            if y < bucket[_LY]:
                bucket[_LX], bucket[_LY] = x, y
            if y > bucket[_HY]:
                bucket[_HX], bucket[_HY] = x, y
            bucket[_ZX], bucket[_ZY] = x, y
        else:
            buckets.append([index, x, y, x, y, x, y])

    def _halve(self) -> None:
        self.span *= 2
        merged: list[list[float]] = []
        for bucket in self.buckets:
            index = bucket[_I] // 2
            if merged and merged[-1][_I] == index:
                _merge(merged[-1], bucket)
            else:
                merged.append([index, *bucket[1:]])
        self.buckets = merged

    def _coarsen(self) -> None:
        while len(self.buckets) > 2 * self.cap:
            self._halve()

    def cut(self, x: float) -> None:
        """Forget every point at or after ``x``."""
        index = self._index(x)
        buckets = self.buckets
        while buckets and buckets[-1][_I] > index:
            buckets.pop()
        partial = bool(buckets) and buckets[-1][_I] == index
        if partial:
            buckets.pop()
        raw = self.raw
        while raw and raw[-1][0] >= x:
            raw.pop()
        if partial:
            start = index * self.span
            for px, py in [p for p in raw if p[0] >= start]:
                self._place(px, py)
        if not buckets:
            self.first = None

    def absorb_older(self, older: Decimated) -> None:
        """Put a series that ends before this one's first point in front of it (a log read newest
        part first, its older part later). Points of ``older`` at or after our first are dropped."""
        if self.first is not None:
            older.cut(self.first[0])
        if not older.buckets:
            return
        while older.span < self.span:
            older._halve()
        while self.span < older.span:
            self._halve()
        if self.buckets and older.buckets[-1][_I] == self.buckets[0][_I]:
            joined = older.buckets[-1][:]
            _merge(joined, self.buckets[0])
            self.buckets = [*older.buckets[:-1], joined, *self.buckets[1:]]
        else:
            self.buckets = [*older.buckets, *self.buckets]
        self.first = older.first
        self.raw = deque([*older.raw, *self.raw], maxlen=self.raw.maxlen)
        self._coarsen()

    @property
    def first_x(self) -> float | None:
        return None if self.first is None else self.first[0]

    def view(self, width: int) -> tuple[list[float], list[float]]:
        """At most about ``3 * width + 1`` points: the first point, then the buckets grouped into
        at most ``width`` columns of a power-of-two number of buckets each, each column's lowest,
        highest and last point in step order. O(buckets), whatever the history's length."""
        buckets = self.buckets
        if not buckets or self.first is None:
            return [], []
        width = max(1, width)
        first, last = int(buckets[0][_I]), int(buckets[-1][_I])
        factor = 1
        while (last // factor) - (first // factor) + 1 > width:
            factor *= 2
        xs: list[float] = [self.first[0]]
        ys: list[float] = [self.first[1]]
        column: list[float] | None = None
        for bucket in buckets:
            group = int(bucket[_I]) // factor
            if column is not None and column[_I] == group:
                _merge(column, bucket)
                continue
            if column is not None:
                _emit(column, xs, ys)
            column = [float(group), *bucket[1:]]
        if column is not None:
            _emit(column, xs, ys)
        return xs, ys


def _emit(column: list[float], xs: list[float], ys: list[float]) -> None:
    points = sorted({(column[_LX], column[_LY]), (column[_HX], column[_HY]), (column[_ZX], column[_ZY])})
    for x, y in points:
        if x > xs[-1]:  # the first point is already there
            xs.append(x)
            ys.append(y)


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
