"""Memory-leak detection: telling sustained growth from the normal shapes of GPU memory.

Each memory series (a device's used memory, or a process's on a device) is kept in a
bounded buffer of (time, bytes) covering ``window``. At each new sample the series is judged
over the last third, two thirds and all of the window (so a leak that starts mid-life shows
in the short window before the long one), and a window shows *leak-like growth* when all of
these hold:

* its slope is at least ``min_rate``. The slope is the median of slopes between samples half
  the window apart, a Theil-Sen estimator over long baselines: outliers and spikes do not
  move it, and it costs O(n);
* the growth over the window is at least ``min_snr`` times the noise (the scaled median
  absolute deviation of the residuals around that slope);
* it never drops: no sample falls below the highest before it by more than the noise, and
  the window's segment medians never step down (an allocator sawtooth, epoch peaks and
  spikes drop; a leak only grows);
* it is still growing: the median of the last third rose over the middle third's by at least
  half of what the slope predicts (a warm-up that reached its plateau has not);
* it reaches a new high: above any level the series held before the window (a sawtooth and
  repeated peaks come back to the same highs; a leak exceeds them).

A series is *suspected* while it shows leak-like growth that has lasted ``min_duration``,
with no pause longer than ``max_pause`` (a leak that grows in steps pauses between them), and
the series is older than ``warmup_grace`` (a process ramping up at start is warming up, and
no shape tells the two apart while it ramps). Once suspected it stays so until a pause
longer than ``max_pause``. ``docs/leaks.md`` gives the reasoning
behind each default and what the evaluation (``benchmarks/leaks.py``) measured.

Memory: two arrays of doubles per series, at most ``window / sample interval`` entries
(181 at the 10 s default: 2.9 KB), plus a few scalars and its key: 3.7 KB per series as
measured with tracemalloc; a series is dropped when its process ends. The detector never
calls a vendor library.
"""

from __future__ import annotations

import itertools
import math
from array import array
from collections.abc import Hashable
from dataclasses import dataclass

from gpuprobe.daemon.core.config import LeaksConfig

MIB = 2**20
NOISE_FLOOR = 1 * MIB  # allocators work in MiB-sized blocks: less is not noise we can see


@dataclass(frozen=True)
class Assessment:
    slope: float  # bytes per second, over the whole window
    suspected: bool
    confidence: float  # 0-1
    growth_seconds: float  # how long leak-like growth has lasted without a break


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def robust_slope(t: list[float], v: list[float]) -> float:
    """Median of the slopes between samples half the series apart (Theil-Sen over long
    baselines)."""
    n = len(t)
    h = max(1, n // 2)
    slopes = [(v[i + h] - v[i]) / (t[i + h] - t[i]) for i in range(n - h) if t[i + h] > t[i]]
    return _median(slopes) if slopes else 0.0


def noise(t: list[float], v: list[float], slope: float) -> float:
    """Robust standard deviation of the residuals around ``slope``."""
    r = [v[i] - slope * t[i] for i in range(len(t))]
    c = _median(r)
    return 1.4826 * _median([abs(x - c) for x in r])


@dataclass
class _Window:
    slope: float
    snr: float
    leaky: bool


def judge(t: list[float], v: list[float], past_high: float | None,
          cfg: LeaksConfig) -> _Window:
    """Whether one window of samples shows leak-like growth (see the module docstring)."""
    n = len(t)
    span = t[-1] - t[0]
    slope = robust_slope(t, v)
    sigma = max(noise(t, v, slope), NOISE_FLOOR)
    snr = slope * span / sigma if span > 0 else 0.0
    if n < cfg.min_samples or slope < cfg.min_rate or snr < cfg.min_snr:
        return _Window(slope, snr, False)
    peak = -math.inf
    for x in v:
        if x < peak - 4 * sigma:
            return _Window(slope, snr, False)  # memory was freed: sawtooth, peaks, a release
        peak = max(peak, x)
    k = min(cfg.segments, n // 2)
    size = n / k
    medians = [_median(v[int(i * size):int((i + 1) * size)]) for i in range(k)]
    # The noise of a segment's median, and a tolerance of three of those.
    tol = 3 * 1.2533 * sigma / math.sqrt(size)
    if any(b - a < -tol for a, b in itertools.pairwise(medians)):
        return _Window(slope, snr, False)  # it stepped down
    third = max(1, n // 3)
    recent = _median(v[-third:]) - _median(v[n - 2 * third:n - third])
    if recent <= max(tol / 3, 0.5 * slope * (t[-1] - t[n - 2 * third])):
        # The last third grew less than half what steady growth at this slope would have
        # added since the middle third: a ramp that reached its plateau, not a leak.
        return _Window(slope, snr, False)
    if past_high is not None and medians[-1] <= past_high + tol:
        return _Window(slope, snr, False)  # not above what it held before: not new memory
    return _Window(slope, snr, True)


class Series:
    """One memory series and the state of its judgement."""

    __slots__ = ("evicted", "first", "growing_since", "high", "last", "last_growing",
                 "suspected", "t", "v")

    def __init__(self) -> None:
        self.t = array("d")
        self.v = array("d")
        self.first: float | None = None  # when the series started (process age)
        self.high: float | None = None  # highest level that left the buffer
        self.evicted: list[float] = []  # the last few evicted values, for a robust high
        self.growing_since: float | None = None  # start of the current run of growth
        self.last_growing: float | None = None  # when growth was last seen
        self.suspected = False
        self.last: Assessment | None = None  # the assessment of the newest sample

    def add(self, t: float, v: float, keep: float) -> None:
        if self.t and t <= self.t[-1]:
            return  # the same reading again
        if self.first is None:
            self.first = t
        self.t.append(t)
        self.v.append(v)
        cut = 0
        while cut < len(self.t) - 1 and self.t[cut] < t - keep:
            cut += 1
        if cut:
            self.evicted.extend(self.v[:cut])
            self.evicted = self.evicted[-5:]
            level = _median(self.evicted)
            self.high = level if self.high is None else max(self.high, level)
            del self.t[:cut]
            del self.v[:cut]

    def assess(self, cfg: LeaksConfig) -> Assessment:
        t, v = list(self.t), list(self.v)
        now = t[-1]
        best: _Window | None = None
        # A flat series (memory held steady: most of a busy host's) has no leak-like window,
        # whatever the settings (judge() finds its last third did not grow), and a slope of
        # 0; the windows are judged only when the series moved, a tenth of the CPU on a host
        # of steady jobs (benchmarks/overhead.py, leak_cpu_ms).
        flat = min(v) == max(v)
        for fraction in () if flat else (1 / 3, 2 / 3, 1.0):
            start = now - cfg.window * fraction
            i = next((j for j, x in enumerate(t) if x >= start), 0)
            if len(t) - i < cfg.min_samples:
                i = max(0, len(t) - cfg.min_samples)  # at least min_samples, when sparse
            before = v[:i]
            past = max(self.high or -math.inf, max(before) if before else -math.inf)
            w = judge(t[i:], v[i:], past if past > -math.inf else None, cfg)
            if w.leaky and (best is None or w.snr > best.snr):
                best = w
        whole = robust_slope(t, v) if len(t) > 1 and not flat else 0.0
        if best is None:
            if self.last_growing is None or now - self.last_growing > cfg.max_pause:
                self.growing_since = self.last_growing = None  # the run is over
                self.suspected = False
            if not self.suspected:
                return Assessment(whole, False, 0.0, 0.0)
            lasted = now - (self.growing_since or now)
            return Assessment(whole, True, 0.5, lasted)  # a pause within a suspected leak
        if self.growing_since is None:
            self.growing_since = now
        self.last_growing = now
        lasted = now - self.growing_since
        first = self.first if self.first is not None else now
        if lasted >= cfg.min_duration and now - first >= cfg.warmup_grace:
            self.suspected = True
        confidence = min(1.0, best.snr / (3 * cfg.min_snr)) * min(
            1.0, 0.5 + lasted / (2 * max(cfg.min_duration, 1.0)))
        return Assessment(best.slope, self.suspected, round(confidence, 3), lasted)


class LeakDetector:
    """Series by key; a key is whatever identifies a memory series to the caller."""

    def __init__(self, cfg: LeaksConfig) -> None:
        self.cfg = cfg
        self.series: dict[Hashable, Series] = {}
        self._interval: float | None = None

    def keep_seconds(self) -> float:
        """How far back samples are kept: the window, or min_samples at the sampling rate
        seen, when sampling is too sparse for the window."""
        if self._interval is None:
            return self.cfg.window
        return max(self.cfg.window, self.cfg.min_samples * self._interval)

    def observe(self, key: Hashable, t: float, value: float) -> None:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series()
        elif s.t and t > s.t[-1]:
            dt = t - s.t[-1]
            self._interval = dt if self._interval is None else 0.9 * self._interval + 0.1 * dt
        s.add(t, value, self.keep_seconds())

    def assess(self, key: Hashable) -> Assessment | None:
        """Judge the series at its newest sample. Call once per new sample: the growth run
        it tracks advances with each call (``last`` re-reads the verdict)."""
        s = self.series.get(key)
        if s is None or len(s.t) < 2:
            return None
        if self._interval is not None and self.cfg.window < self.cfg.min_samples * self._interval:
            # Sparse sampling: judge over min_samples samples instead of the window.
            cfg = LeaksConfig(**{**self.cfg.__dict__, "window": self.keep_seconds()})
            s.last = s.assess(cfg)
        else:
            s.last = s.assess(self.cfg)
        return s.last

    def last(self, key: Hashable) -> Assessment | None:
        s = self.series.get(key)
        return None if s is None else s.last

    def restart_grace(self, key: Hashable, t: float) -> None:
        """Start the warm-up grace of a series again at ``t`` (a new job on a device)."""
        s = self.series.get(key)
        if s is not None:
            s.first = t

    def rebase(self, key: Hashable, t: float) -> None:
        """Judge a series only from ``t`` on (a new job on a device): the job's allocation,
        and an earlier job's warm-up still in the window, must not add up to growth. The
        growth run and the high-water mark start again; the warm-up grace too."""
        s = self.series.get(key)
        if s is None:
            return
        fresh = Series()
        for x, v in zip(s.t, s.v, strict=True):
            if x >= t:
                fresh.t.append(x)
                fresh.v.append(v)
        fresh.first = t
        self.series[key] = fresh

    def forget(self, keys: set) -> None:
        for k in keys:
            self.series.pop(k, None)
