"""Memory-leak detection: telling sustained growth from the normal shapes of GPU memory.

Each memory series (a device's used memory, or a process's on a device) keeps a bounded
history at three resolutions: every sample over ``window`` (30 min), one-minute medians over
two hours, five-minute medians over ``history`` (8 h). At each new sample the series is
judged over horizons of a third, two thirds and all of the window, over one and two hours
(one-minute medians) and over four and eight hours (five-minute medians), as far back as its
history reaches. A slow leak under heavy noise is plain over a long horizon and a fast one
over a short horizon, so slower leaks are caught later and faster ones sooner. A horizon
shows *leak-like growth* when all of these hold:

* its slope is at least ``min_rate``. The slope is the median of slopes between points half
  the horizon apart, a Theil-Sen estimator over long baselines: outliers and spikes do not
  move it, and it costs O(n);
* the slope stands ``min_significance`` standard errors clear of zero: the noise is the
  scaled median absolute deviation of the residuals around the slope, and the standard
  error is that of a least-squares slope over as many evenly spaced points. Growth is judged
  by its statistical weight, not by whether some sample dips below an earlier high (under
  Gaussian jitter one always does);
* the horizon's segment medians never step down (an allocator sawtooth, epoch peaks and a
  release drop; a leak only grows);
* it is still growing: the median of the last third rose over the middle third's by at least
  half of what the slope predicts (a warm-up that reached its plateau has not);
* it is not settling: the slope of the horizon's recent half is not well under that of its
  older half (least-squares slopes over samples, robust ones over the long horizons'
  medians), by a margin its noise cannot explain (a caching allocator whose steps come
  ever more slowly, fragmentation creeping to a plateau). A horizon that shows settling vetoes
  the others: growth that slows down is not a leak;
* it reaches a new high: above any five-minute median the series held before the horizon (a
  sawtooth and repeated peaks come back to the same highs; a leak exceeds them).

A series is *suspected* while leak-like growth has lasted ``min_duration``, with no pause
longer than ``max_pause`` (a leak that grows in steps pauses between them), and the series is
older than a grace: ``warmup_grace`` (10 min) for smooth growth, ``settle_grace`` (30 min)
for growth that came in a few large steps, which is what a caching allocator does while it
fills. Once suspected it stays so until a pause longer than ``max_pause``. ``docs/leaks.md``
gives the reasoning behind each default and what the evaluation (``benchmarks/leaks.py``)
measured.

Memory: at most ``window`` / sample interval + 1 samples (181 at 10 s), 121 one-minute and 97
five-minute points, each two doubles, plus a few scalars: bounded whatever runs, 11.2 KiB
per series as measured with tracemalloc (docs/leaks.md). The detector never calls a vendor
library.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import operator
from array import array
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

from gpuprobe.daemon.core.config import LeaksConfig

MIB = 2**20
NOISE_FLOOR = 1 * MIB  # allocators work in MiB-sized blocks: less is not noise we can see
SQRT12 = math.sqrt(12.0)
# The long horizons: (bucket seconds of the tier they are read from, horizon seconds).
MINUTE, FIVE_MINUTES = 60.0, 300.0
MINUTE_HORIZONS = (3600.0, 7200.0)
SETTLING_RATIO = 0.8  # a recent half growing at under this share of the older half's rate
STEP_SIGMAS = 6.0  # a jump of more than this many noise widths between samples is a step
TS_SE_RATIO = 1.45  # the Theil-Sen slope's standard error over the least-squares one's
ROBUST_SIGNIFICANCE = 2.5  # in its own standard errors
SETTLING_STEPS = 4  # steps whose three gaps grow each by half are a caching allocator's


@dataclass(frozen=True)
class Assessment:
    slope: float  # bytes per second
    suspected: bool
    confidence: float  # 0-1
    growth_seconds: float  # how long leak-like growth has lasted without a break


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def robust_slope(t: list[float], v: list[float], spread: int = 0) -> float:
    """Median of the slopes between samples half the series apart (Theil-Sen over long
    baselines), pooled over the lags from half less ``spread`` to half plus ``spread``.

    With one lag, a shape that repeats every two points (a 10-minute sawtooth read as
    five-minute medians alternates low, high) gives pairs that all climb or all fall, as
    the lag is odd or even; pooling neighbouring lags puts both in the median."""
    n = len(t)
    slopes: list[float] = []
    for h in range(max(1, n // 2 - spread), min(n - 1, n // 2 + spread) + 1):
        dt = list(map(operator.sub, t[h:], t))
        dv = map(operator.sub, v[h:], v)
        if min(dt) > 0:  # always, for times that only rise (the loop runs in C)
            slopes += map(operator.truediv, dv, dt)
        else:
            slopes += [b / a for a, b in zip(dt, dv, strict=False) if a > 0]
    return _median(slopes) if slopes else 0.0


def jitter(v: list[float]) -> float:
    """Robust standard deviation of the sample-to-sample jitter (from the differences of
    successive samples, where a few steps are outliers)."""
    d = list(map(operator.sub, v[1:], v))
    if not d:
        return 0.0
    return 1.4826 * _mad(d) / math.sqrt(2)


def _mad(xs: list[float]) -> float:
    """Median absolute deviation from the median."""
    c = _median(xs)
    return _median(list(map(abs, map(operator.sub, xs, itertools.repeat(c)))))


def noise(t: list[float], v: list[float], slope: float) -> float:
    """Robust standard deviation of the residuals around ``slope``."""
    return 1.4826 * _mad(list(map(operator.sub, v,
                                   map(operator.mul, t, itertools.repeat(slope)))))


def least_squares_slope(t: list[float], v: list[float]) -> float:
    n = len(t)
    t0, v0 = t[0], v[0]  # centred near zero, so that the sums of products keep their digits
    tt = list(map(operator.sub, t, itertools.repeat(t0)))
    vv = list(map(operator.sub, v, itertools.repeat(v0)))
    mt, mv = sum(tt) / n, sum(vv) / n
    var = sum(map(operator.mul, tt, tt)) - n * mt * mt
    return (sum(map(operator.mul, tt, vv)) - n * mt * mv) / var if var > 0 else 0.0


def medians3(v: list[float]) -> list[float]:
    """The median of each three successive points."""
    return [a + b + c - max(a, b, c) - min(a, b, c)
            for a, b, c in zip(v, v[1:], v[2:], strict=False)]


def standard_error(sigma: float, n: int, span: float) -> float:
    """Standard error of a least-squares slope over ``n`` evenly spaced points spanning
    ``span`` seconds with residual noise ``sigma``."""
    return sigma * SQRT12 / (math.sqrt(n) * span) if n > 1 and span > 0 else math.inf


@dataclass
class _Window:
    slope: float
    z: float  # the slope in standard errors
    leaky: bool
    settling: bool = False
    steppy: bool = False  # most of the growth came in a few large jumps
    released: bool = False  # memory was freed within the horizon


class Shared:
    """What the nested horizons of one series' samples share in one assessment, each part
    computed when a horizon first needs it (most horizons stop at the slope): the step (6
    jitter widths of all the samples), and whether the longest horizon holds a release (a
    release within a shorter one is within it too)."""

    __slots__ = ("_kept", "_m3", "_step", "_unreleased", "v")

    def __init__(self, v: list[float], m3: array | None = None) -> None:
        """``m3``: :func:`medians3` of ``v``, where the series keeps it as samples come."""
        self.v = v
        self._kept = m3
        self._step: float | None = None
        self._unreleased: bool | None = None
        self._m3: list[float] | None = None

    @property
    def m3(self) -> list[float]:
        """:func:`medians3` of all the samples (a horizon's are the tail of it)."""
        if self._m3 is None:
            self._m3 = medians3(self.v) if self._kept is None else list(self._kept)
        return self._m3

    @property
    def step(self) -> float:
        if self._step is None:
            self._step = STEP_SIGMAS * max(jitter(self.v), NOISE_FLOOR)
        return self._step

    @property
    def unreleased(self) -> bool:
        if self._unreleased is None:
            self._unreleased = not _released(self.m3, self.step)
        return self._unreleased


def judge(t: list[float], v: list[float],
          past_high: float | Callable[[], float | None] | None,
          cfg: LeaksConfig, spread: int = 0, shared: Shared | None = None,
          bucketed: bool = False) -> _Window:
    """Whether one horizon of points shows leak-like growth (see the module docstring).

    ``past_high``: the highest level held before the horizon (or what gives it, called only
    if needed). ``spread``: see :func:`robust_slope` (the medians of the long horizons use
    2). ``shared``: what this horizon shares with the series' other horizons of samples.
    ``bucketed``: the points are a long horizon's bucket medians, not samples."""
    n = len(t)
    span = t[-1] - t[0] if n else 0.0
    slope = robust_slope(t, v, spread) if n > 1 else 0.0
    if n < cfg.min_samples or slope < cfg.min_rate or span <= 0:
        return _Window(slope, 0.0, False)
    sigma = max(noise(t, v, slope), NOISE_FLOOR)
    # The significance is the least-squares slope's, against the robust noise: under
    # Gaussian jitter it is a t-statistic, where the Theil-Sen slope over long baselines
    # would need a standard error 1.45 times as wide (a median of n / 2 independent pair
    # slopes). The Theil-Sen slope above must clear min_rate too, which spikes cannot fake.
    se = standard_error(sigma, n, span)
    z = least_squares_slope(t, v) / se
    # ... and the robust slope must stand clear on its own (TS_SE_RATIO wider): a step at
    # the horizon's start gives the least-squares slope a weight the growth does not have.
    if z < cfg.min_significance or slope / (TS_SE_RATIO * se) < ROBUST_SIGNIFICANCE:
        return _Window(slope, z, False)
    half = n // 2
    if half >= cfg.min_samples // 2 and half >= 3:
        # Over the samples, the halves' least-squares slopes: a ramp early in the horizon
        # and a plateau since (a warm-up, a job's allocation, a creep that settled) is plain
        # in them, where robust slopes look through it. The medians of the long horizons
        # use robust ones: a ramp hours ago must not hide a leak today.
        if bucketed:
            older = robust_slope(t[:half], v[:half], spread)
            recent = robust_slope(t[half:], v[half:], spread)
        else:
            older = least_squares_slope(t[:half], v[:half])
            recent = least_squares_slope(t[half:], v[half:])
        se = standard_error(sigma, half, span / 2)
        if recent < SETTLING_RATIO * older and older - recent > 3 * math.sqrt(2) * se:
            return _Window(slope, z, False, settling=True)
    step = STEP_SIGMAS * max(jitter(v), NOISE_FLOOR) if shared is None else shared.step
    if (shared is None or not shared.unreleased) and _released(
            medians3(v) if shared is None else shared.m3[len(shared.v) - n:], step):
        # memory was freed: sawtooth, peaks, a release
        return _Window(slope, z, False, released=True)
    k = min(cfg.segments, n // 2)
    size = n / k
    medians = [_median(v[int(i * size):int((i + 1) * size)]) for i in range(k)]
    # The noise of a segment's median, and a tolerance of three of those.
    tol = 3 * 1.2533 * sigma / math.sqrt(size)
    if any(b - a < -tol for a, b in itertools.pairwise(medians)):
        return _Window(slope, z, False)  # it stepped down
    third = max(1, n // 3)
    recent_rise = _median(v[-third:]) - _median(v[n - 2 * third:n - third])
    expected = slope * (t[n - third] - t[n - 2 * third])
    wobble = 2 * math.sqrt(2) * 1.2533 * sigma / math.sqrt(third)  # two sd of the difference
    if recent_rise <= max(tol / 3, 0.5 * expected - wobble):
        # The last third rose over the middle third by less than half what steady growth at
        # this slope adds from one to the next, by more than its noise: a ramp that reached
        # its plateau, not a leak.
        return _Window(slope, z, False)
    if callable(past_high):
        past_high = past_high()
    if past_high is not None and medians[-1] <= past_high + tol:
        return _Window(slope, z, False)  # not above what it held before: not new memory
    grown = medians[-1] - medians[0]
    # Steps: the median of the three points after a point above the median of the three up
    # to it by ``step`` (a one-sample spike is not one). A step shows at up to three points
    # in a row; a longer run is a ramp (a fast leak climbs at every sample).
    m3 = medians3(v) if shared is None else shared.m3[len(shared.v) - n:]
    rises = [b - a for a, b in zip(m3, m3[3:], strict=False)]  # after a point, against up to it
    runs: list[float] = []  # the largest rise of each run
    length, jumped = 0, 0.0
    for d in rises if rises and max(rises) > step else ():
        if d > step:
            if length == 0:
                runs.append(d)
            runs[-1] = max(runs[-1], d)
            length += 1
            if length > 5:
                runs, jumped = [], math.inf  # a ramp, not steps
                break
        else:
            length = 0
    if runs:
        jumped = sum(runs)
    steppy = (bool(runs) and jumped >= 0.5 * grown and len(runs) <= max(2, n // 10))
    if steppy and len(runs) < 2:
        return _Window(slope, z, False)  # one step up is an allocation, not growth
    return _Window(slope, z, True, steppy=steppy)


def _released(m3: list[float], drop: float) -> bool:
    """Whether the median of three successive points (``m3``: :func:`medians3`) ever falls
    ``drop`` below the highest such median before it. One noisy sample below an earlier high
    is not a release: Gaussian jitter always gives one, which read a slow leak under noise
    as freeing memory."""
    # The deepest fall below the running high (0 at a new high, where none is a release).
    return bool(m3) and max(map(operator.sub, itertools.accumulate(m3, max), m3)) > drop


class _Tier:
    """Medians of fixed buckets of the samples (``width`` seconds), kept for ``keep``."""

    __slots__ = ("bucket", "pending", "pending_t", "t", "v", "width")

    def __init__(self, width: float) -> None:
        self.width = width
        self.t = array("d")
        self.v = array("d")
        self.bucket: int | None = None
        self.pending: list[float] = []
        self.pending_t: list[float] = []

    def add(self, t: float, v: float, keep: float) -> float | None:
        """Add a sample; returns the median of a bucket that left the tier, if one did."""
        b = math.floor(t / self.width)
        if self.bucket is not None and b != self.bucket and self.pending:
            self.t.append(_median(self.pending_t))
            self.v.append(_median(self.pending))
            self.pending, self.pending_t = [], []
        self.bucket = b
        self.pending.append(v)
        self.pending_t.append(t)
        evicted = None
        while len(self.t) > 1 and self.t[0] < t - keep:
            evicted = self.v[0] if evicted is None else max(evicted, self.v[0])
            del self.t[0]
            del self.v[0]
        return evicted


class Series:
    """One memory series and the state of its judgement."""

    __slots__ = ("dipped", "first", "five", "growing_since", "high", "last", "last_growing",
                 "m3", "minute", "steps", "suspected", "t", "v", "verdicts")

    def __init__(self) -> None:
        self.t = array("d")
        self.v = array("d")
        self.m3 = array("d")  # medians3(v), one more with each sample (not made per judgement)
        self.minute = _Tier(MINUTE)
        self.five = _Tier(FIVE_MINUTES)
        self.first: float | None = None  # when the series started (process age)
        self.high: float | None = None  # highest five-minute median that left the history
        self.growing_since: float | None = None  # start of the current run of growth
        self.last_growing: float | None = None  # when growth was last seen
        self.suspected = False
        self.last: Assessment | None = None  # the assessment of the newest sample
        # The long horizons' verdicts, judged again only when their tier has a new point.
        self.verdicts: dict[float, tuple[float, _Window]] = {}  # horizon -> (as of, verdict)
        self.steps: list[float] = []  # when the last few steps up came (at most one a minute)
        self.dipped = False  # the newest sample fell a step below the ones before it

    def add(self, t: float, v: float, keep: float, history: float) -> None:
        if self.t and t <= self.t[-1]:
            return  # the same reading again
        if self.first is None:
            self.first = t
        self._step(t, v)
        self.t.append(t)
        self.v.append(v)
        if len(self.v) >= 3:
            a, b, c = self.v[-3:]
            self.m3.append(a + b + c - max(a, b, c) - min(a, b, c))  # as medians3 does
        cut = 0
        while cut < len(self.t) - 1 and self.t[cut] < t - keep:
            cut += 1
        if cut:
            del self.t[:cut]
            del self.v[:cut]
            del self.m3[:cut]
        self.minute.add(t, v, max(MINUTE_HORIZONS))
        gone = self.five.add(t, v, history)
        if gone is not None:
            self.high = gone if self.high is None else max(self.high, gone)

    def _step(self, t: float, v: float) -> None:
        """Note a step up: ``v`` above the median of the three samples before by
        STEP_SIGMAS jitter widths."""
        if len(self.v) < 5:
            return
        rise = medians3([self.v[-2], self.v[-1], v])[0] - medians3(list(self.v[-5:-2]))[0]
        if rise <= STEP_SIGMAS * NOISE_FLOOR:
            return  # the usual case, without computing the jitter
        if rise > STEP_SIGMAS * max(jitter(list(self.v[-31:])), NOISE_FLOOR) and (
                not self.steps or t - self.steps[-1] >= MINUTE):
            self.steps.append(t)
            del self.steps[:-SETTLING_STEPS]

    def slowing_steps(self) -> bool:
        """Its last steps came ever more slowly: each gap at least 1.5 times the one
        before, as a caching allocator's do while it fills (a staircase leak's keep time)."""
        gaps = [b - a for a, b in itertools.pairwise(self.steps)]
        return len(gaps) >= SETTLING_STEPS - 1 and all(
            y >= 1.5 * x for x, y in itertools.pairwise(gaps))

    def _past(self, start: float) -> float | None:
        """The highest five-minute median held before ``start``."""
        highs = [x for x, at in zip(self.five.v, self.five.t, strict=True)
                 if at + FIVE_MINUTES / 2 <= start]
        if self.high is not None:
            highs.append(self.high)
        return max(highs) if highs else None

    def _horizons(self, cfg: LeaksConfig, history: float, t: list[float], v: list[float]
                  ) -> list[_Window]:
        """The verdicts of every horizon the history reaches; ``t``, ``v``: the samples."""
        now = t[-1]
        out = []
        shared = Shared(v, self.m3)
        for fraction in (1 / 3, 2 / 3, 1.0):
            start = now - cfg.window * fraction
            i = bisect.bisect_left(t, start)
            if len(t) - i < cfg.min_samples:
                i = max(0, len(t) - cfg.min_samples)  # at least min_samples, when sparse
            out.append(judge(t[i:], v[i:], functools.partial(self._past, t[i]), cfg,
                             shared=shared))
        # A release shows in the medians of three one sample late: a newest sample a step
        # below the three before it may be one, and raises no flag until the next tells.
        self.dipped = (len(v) > 3 and v[-1] < max(v[-4:-1]) - STEP_SIGMAS * NOISE_FLOOR
                       and v[-1] < max(v[-4:-1]) - shared.step)
        longer = [(self.minute, h) for h in MINUTE_HORIZONS if h > cfg.window]
        longer += [(self.five, h) for h in (4 * 3600.0, history) if h > 2 * 3600.0]
        for tier, horizon in longer:
            if not tier.t or tier.t[0] > now - 0.9 * horizon:
                continue  # the history does not reach back that far yet
            seen = self.verdicts.get(horizon)
            if seen is not None and seen[0] == tier.t[-1]:
                out.append(seen[1])
                continue
            tt, vv = list(tier.t), list(tier.v)
            i = bisect.bisect_left(tt, now - horizon)
            w = judge(tt[i:], vv[i:], functools.partial(self._past, tt[i]), cfg, spread=2,
                      bucketed=True)
            self.verdicts[horizon] = (tier.t[-1], w)
            out.append(w)
        return out

    def assess(self, cfg: LeaksConfig, history: float) -> Assessment:
        t, v = list(self.t), list(self.v)
        now = t[-1]
        # A flat series (memory held steady: most of a busy host's) has no leak-like window,
        # whatever the settings, and a slope of 0; it is judged only when it moved, a tenth
        # of the CPU on a host of steady jobs (benchmarks/overhead.py, leak_cpu_ms).
        flat = min(v) == max(v) and (not self.five.t or min(self.five.v) == max(self.five.v))
        windows = [] if flat else self._horizons(cfg, history, t, v)
        if any(w.released for w in windows) and not any(w.leaky for w in windows):
            # Memory was freed and no horizon (the medians of the long ones smooth a
            # sawtooth out) shows growth: whatever grew was not leaking.
            self.suspected = False
            self.growing_since = self.last_growing = None
        settling = any(w.settling for w in windows) or self.slowing_steps()
        leaky = [] if settling else [w for w in windows if w.leaky]
        best = max(leaky, key=lambda w: w.z) if leaky else None
        # The slope over all the samples: the 30-minute horizon's, when it holds them all.
        whole = (0.0 if flat or len(t) < 2 else windows[2].slope
                 if len(t) >= cfg.min_samples and t[0] >= now - cfg.window
                 else robust_slope(t, v))
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
        grace = cfg.settle_grace if any(w.steppy for w in leaky) else cfg.warmup_grace
        if lasted >= cfg.min_duration and now - first >= grace and not self.dipped:
            self.suspected = True
        confidence = min(1.0, best.z / (3 * max(cfg.min_significance, 1e-9))) * min(
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
        s.add(t, value, self.keep_seconds(), self.cfg.history)

    def assess(self, key: Hashable) -> Assessment | None:
        """Judge the series at its newest sample. Call once per new sample: the growth run
        it tracks advances with each call (``last`` re-reads the verdict)."""
        s = self.series.get(key)
        if s is None or len(s.t) < 2:
            return None
        if self._interval is not None and self.cfg.window < self.cfg.min_samples * self._interval:
            # Sparse sampling: judge over min_samples samples instead of the window.
            s.last = s.assess(replace(self.cfg, window=self.keep_seconds()), self.cfg.history)
        else:
            s.last = s.assess(self.cfg, self.cfg.history)
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
        growth run, the history and the high-water mark start again; the grace too."""
        s = self.series.get(key)
        if s is None:
            return
        fresh = Series()
        for x, v in zip(s.t, s.v, strict=True):
            if x >= t:
                fresh.add(x, v, self.keep_seconds(), self.cfg.history)
        fresh.first = t
        self.series[key] = fresh

    def forget(self, keys: set) -> None:
        for k in keys:
            self.series.pop(k, None)
