"""A growing series kept in bounded memory: per bucket of steps, its lowest, highest and last
point, so a spike survives any zoom-out (cases 64, 65) and a view costs the bucket cap, not the
run's length. ``console.series.downsample`` is the same rule over a whole sequence at once."""

from __future__ import annotations

import math
import operator
from collections import deque
from collections.abc import Sequence

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
