"""The leak detector, its collector and metrics, and the default scenario's leak."""

from __future__ import annotations

import math
import random
from importlib import resources

import pytest
import yaml

from gpuprobe.daemon.analysis.leaks import LeakDetector, judge, robust_slope
from gpuprobe.daemon.analysis.memory_leaks import MemoryLeaks
from gpuprobe.daemon.core.config import LeaksConfig, from_mapping
from gpuprobe.daemon.core.model import (
    CollectorResult,
    DeviceIdentity,
    DeviceSample,
    LeakSample,
    Memory,
    ProcessSample,
)
from gpuprobe.daemon.core.state import CollectorHealth, Store
from gpuprobe.probes.sim import ManualClock

from .conftest import make_daemon
from .test_exporter import render, samples

MIB, GIB = 2**20, 2**30
CFG = LeaksConfig()


def first_alarm(fn, duration: float = 4 * 3600, every: float = 10.0,
                cfg: LeaksConfig = CFG) -> float | None:
    det = LeakDetector(cfg)
    t = 0.0
    while t <= duration:
        det.observe("k", t, fn(t))
        a = det.assess("k")
        if a is not None and a.suspected:
            return t
        t += every
    return None


def noisy(seed: int, sigma: float):
    rng = random.Random(seed)
    cache: dict[float, float] = {}

    def n(t: float) -> float:
        if t not in cache:
            cache[t] = rng.gauss(0, sigma)
        return cache[t]
    return n


def test_robust_slope_ignores_spikes():
    t = [float(i) for i in range(100)]
    v = [5.0 * x for x in t]
    for i in (10, 11, 50, 90):
        v[i] += 1e6  # spikes a least-squares fit would follow
    assert robust_slope(t, v) == pytest.approx(5.0)


def test_a_steady_leak_is_flagged_after_the_grace_and_minimum_duration():
    n = noisy(1, 2 * MIB)
    at = first_alarm(lambda t: 4 * GIB + 2 * MIB / 60 * t + n(t))  # 2 MiB/min
    assert at is not None
    assert CFG.warmup_grace <= at <= 15 * 60


def test_a_leak_starting_later_is_flagged_within_15_minutes_of_its_start():
    n = noisy(2, 2 * MIB)
    at = first_alarm(lambda t: 4 * GIB + 1 * MIB / 60 * max(0.0, t - 3600) + n(t))
    assert at is not None and 3600 + CFG.min_duration <= at <= 3600 + 15 * 60


@pytest.mark.parametrize("name, fn", [
    ("sawtooth", lambda t: 4 * GIB + 8 * GIB * ((t % 600) / 600)),
    ("warm-up then plateau", lambda t: GIB + 21 * GIB * min(1.0, t / 300)),
    ("slow warm-up over 8 min", lambda t: GIB + 21 * GIB * min(1.0, t / 480)),
    ("spikes", lambda t: 10 * GIB + (4 * GIB if t % 600 < 60 else 0)),
    ("epoch peaks", lambda t: 30 * GIB + 22 * GIB * max(0.0, math.sin(2 * math.pi * t / 2400))),
    ("flat", lambda t: 10 * GIB),
    ("growth slower than min_rate", lambda t: 10 * GIB + 0.25 * MIB / 60 * t),
])
def test_normal_shapes_are_not_flagged(name, fn):
    n = noisy(3, 16 * MIB)
    assert first_alarm(lambda t: fn(t) + n(t)) is None, name


def test_a_flagged_leak_clears_when_memory_is_freed():
    det = LeakDetector(CFG)
    suspected = []
    for i in range(0, 3 * 360):
        t = i * 10.0
        v = 2 * GIB + 8 * MIB / 60 * t if t < 5400 else GIB  # leaks 90 min, then frees
        det.observe("k", t, v)
        a = det.assess("k")
        suspected.append(a is not None and a.suspected)
    assert any(suspected[:540])
    assert not any(suspected[-100:])  # a pause longer than max_pause ends it


@pytest.mark.parametrize("settings", [{}, {"min_rate": 0.0, "min_significance": 0.0,
                                                "min_samples": 2}])
def test_a_flat_series_is_never_leak_like_the_shortcut_agrees_with_judge(settings):
    """Series.assess skips judging a series that never moved; judge() itself, under the
    laxest settings too, finds no window of it leak-like."""
    cfg = LeaksConfig(**{**LeaksConfig().__dict__, **settings})
    t = [60.0 * i for i in range(60)]
    for level in (0.0, 5 * 2**30):
        v = [level] * len(t)
        for past in (None, level - 2**30):
            assert not judge(t, v, past, cfg).leaky
        det = LeakDetector(cfg)
        for ti, vi in zip(t, v, strict=True):
            det.observe("k", ti, vi)
            a = det.assess("k")
        assert a is not None and (a.slope, a.suspected, a.confidence) == (0.0, False, 0.0)


def test_the_history_is_bounded_by_the_window():
    det = LeakDetector(CFG)
    for i in range(int(12 * 3600 / 10)):  # 12 hours
        det.observe("k", i * 10.0, float(i))
    s = det.series["k"]
    assert len(s.t) <= CFG.window / 10 + 1
    assert len(s.minute.t) <= 2 * 60 + 1  # one-minute medians of two hours
    assert len(s.five.t) <= CFG.history / 300 + 1  # five-minute medians of the history
    det.forget({"k"})
    assert det.series == {}


def _gauss(seed: int, sigma: float):
    """Independent Gaussian jitter per sample, as in the issue's cases."""
    rng = random.Random(seed)
    return lambda t: rng.gauss(0.0, sigma)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_slow_leak_under_heavy_jitter_is_flagged(seed):
    """Issue 15: 2 MiB/min under 16 MiB of jitter from sample to sample was never flagged
    in four hours (some sample always dipped below an earlier high). Its least-squares slope
    over 20 minutes stands about 8 standard errors clear; now it is flagged within 30 minutes
    of its start."""
    n = _gauss(seed, 16 * MIB)
    at = first_alarm(lambda t: 5 * GIB + 2 * MIB / 60 * max(0.0, t - 1200) + n(t))
    assert at is not None and 1200 <= at <= 1200 + 30 * 60, at


@pytest.mark.parametrize("name, fn", [
    ("512 MiB steps every 4 min for 20 min, then flat",
     lambda t: 2 * GIB + 512 * MIB * min(5, int(t // 240))),
    ("steps ever slower: +1 GiB at 1, 3, 7, 15 and 31 min",
     lambda t: 2 * GIB + GIB * sum(t >= x for x in (60, 180, 420, 900, 1860))),
    ("creep to a plateau, time constant 15 min",
     lambda t: 6 * GIB + 2 * GIB * (1 - math.exp(-t / 900))),
])
def test_an_allocator_that_settles_is_never_flagged(name, fn):
    """Issue 15: a caching allocator climbing in 512 MiB steps for its first 20 minutes was
    flagged from minute 12 to 36, a page for a healthy job."""
    for seed in (1, 2):
        n = _gauss(seed, 16 * MIB)
        assert first_alarm(lambda t, n=n: fn(t) + n(t)) is None, (name, seed)


def test_a_staircase_leak_past_the_settling_grace_is_flagged():
    """Steps that keep coming at a steady pace are a leak, once past settle_grace."""
    n = _gauss(4, 16 * MIB)
    at = first_alarm(lambda t: 2 * GIB + 256 * MIB * int(t // 240) + n(t))
    assert at is not None and CFG.settle_grace <= at <= CFG.settle_grace + 10 * 60, at


def test_sparse_sampling_judges_over_min_samples():
    # One sample every 10 minutes (a 10 s interval at 60x simulation): the 30-min window
    # would hold 3 samples; the detector keeps min_samples instead and still decides.
    at = first_alarm(lambda t: 3 * GIB + 20 * MIB / 60 * t, duration=6 * 3600, every=600)
    assert at is not None and at <= (CFG.min_samples + 2) * 600
    saw = first_alarm(lambda t: 8 * GIB + 16 * GIB * ((t % 2700) / 2700), duration=6 * 3600,
                      every=600)
    assert saw is None


# -- the collector --------------------------------------------------------------------------

GPU = DeviceIdentity("GPU-aaaa", "nvidia", "0")


def dev(used: int, up: bool = True) -> DeviceSample:
    return DeviceSample(identity=GPU, up=up,
                        memory=Memory(total_bytes=80 * GIB, used_bytes=used,
                                      free_bytes=80 * GIB - used))


class Harness:
    def __init__(self, cfg: dict | None = None) -> None:
        self.store = Store()
        self.collector = MemoryLeaks(from_mapping({"leaks": cfg or {}}).leaks, self.store.view)

    def publish(self, t: float, used: int, procs: list[ProcessSample], up: bool = True) -> None:
        h = CollectorHealth("x", 10.0, up=True)
        self.store.publish("nvidia", CollectorResult(devices=(dev(used, up),), timestamp=t), h)
        self.store.publish("nvidia_processes",
                           CollectorResult(processes=tuple(procs), timestamp=t), h)

    def leaks(self) -> dict:
        out = self.collector.collect(0.0).leaks
        return {(x.kind, x.pid): x for x in out}


def proc(pid: int, used: float, start: int = 100, name: str = "job") -> ProcessSample:
    return ProcessSample("GPU-aaaa", pid, int(used), name, start, "c" * 64, None)


def test_collector_flags_the_leaking_process_not_its_neighbour_and_projects_exhaustion():
    h = Harness()
    n = noisy(4, 4 * MIB)
    result = {}
    for i in range(200):
        t = 1000.0 + 10 * i
        leak = 2 * GIB + 16 * MIB / 60 * 10 * i + n(t)
        steady = 10 * GIB + n(t + 0.5)
        h.publish(t, int(leak + steady), [proc(1, leak), proc(2, steady, name="steady")])
        result = h.leaks()
        h.collector.collect(0.0)  # a second call with nothing new changes nothing
    leaky, quiet, device = result[("process", 1)], result[("process", 2)], result[("device", None)]
    assert leaky.suspected and not quiet.suspected
    assert leaky.growth_bytes_per_second == pytest.approx(16 * MIB / 60, rel=0.05)
    assert leaky.container_id == "c" * 64 and leaky.name == "job"
    assert quiet.exhaustion_seconds is None
    free = 80 * GIB - (leak + steady)
    assert leaky.exhaustion_seconds == pytest.approx(free / leaky.growth_bytes_per_second,
                                                     rel=0.02)
    assert device.suspected and device.exhaustion_seconds is not None


def test_collector_keys_on_pid_and_start_time_and_forgets_ended_processes():
    h = Harness()
    h.publish(10.0, GIB, [proc(7, GIB, start=100)])
    h.leaks()
    h.publish(20.0, GIB, [proc(7, GIB, start=500)])  # the pid was reused
    out = h.collector.collect(0.0).leaks
    assert len(h.collector.processes.series) == 2
    assert len([x for x in out if x.pid == 7]) <= 1  # one series per pid, never two
    for i in range(3, 6):
        h.publish(10.0 * i, GIB, [proc(7, GIB, start=500)])
        out = h.collector.collect(0.0).leaks
        assert len([x for x in out if x.pid == 7]) == 1
    assert list(h.collector.processes.series) == [("GPU-aaaa", 7, 500)]
    for i in range(6, 9):
        h.publish(10.0 * i, GIB, [])
        out = h.leaks()
    assert h.collector.processes.series == {}
    assert ("process", 7) not in out


def test_a_down_device_is_not_fed_and_a_vanished_one_is_forgotten():
    h = Harness()
    h.publish(10.0, GIB, [])
    h.leaks()
    h.publish(20.0, 0, [], up=False)
    h.leaks()
    assert list(h.collector.devices.series["GPU-aaaa"].v) == [GIB]
    h.store.publish("nvidia", CollectorResult(devices=(), timestamp=30.0),
                    CollectorHealth("nvidia", 5.0))
    h.leaks()
    assert h.collector.devices.series == {}


def test_leak_metrics_render_and_suspected_processes_pass_the_cap():
    gpu = DeviceSample(identity=GPU, up=True, memory=Memory(used_bytes=GIB))
    procs = (ProcessSample("GPU-aaaa", 1, 8 * GIB, "big"),
             ProcessSample("GPU-aaaa", 2, 1 * GIB, "small_leaker"),
             ProcessSample("GPU-aaaa", 3, 1 * GIB, "small"))
    leaks = (LeakSample("device", "GPU-aaaa", 1000.0, False, 0.0, 0.0),
             LeakSample("process", "GPU-aaaa", 0.0, False, 0.0, 0.0, pid=1, name="big"),
             LeakSample("process", "GPU-aaaa", 5000.0, True, 0.9, 600.0, 7200.0, pid=2,
                        name="small_leaker"),
             LeakSample("process", "GPU-aaaa", 0.0, False, 0.0, 0.0, pid=3, name="small"))
    fams, _ = render({"nvidia": CollectorResult(devices=(gpu,), processes=procs),
                      "memory_leaks": CollectorResult(leaks=leaks)},
                     max_processes_per_device=1)
    suspected = {s[0]["pid"]: s[1] for s in samples(fams,
                                                    "gpuprobe_process_memory_leak_suspected")}
    assert suspected == {"1": 0.0, "2": 1.0}  # pid 3: beyond the cap and not suspected
    growth = samples(fams, "gpuprobe_process_memory_growth_bytes_per_second")
    assert [s[0]["pid"] for s in growth] == ["2"]  # a flat process: no rate, only its flag
    exhaustion = samples(fams, "gpuprobe_process_memory_exhaustion_seconds")
    assert [(s[0]["pid"], s[1]) for s in exhaustion] == [("2", 7200.0)]
    assert samples(fams, "gpuprobe_memory_growth_bytes_per_second")[0][1] == 1000.0
    assert "gpuprobe_memory_exhaustion_seconds" not in fams  # not growing: absent


def test_default_scenario_flags_the_leak_not_the_sawtooth_or_warmup():
    """At the default 60x, a 10 s process poll is 10 scenario minutes: the leak must be
    flagged within 3 wall-clock minutes (18 polls), its neighbours never in 6 hours."""
    default = yaml.safe_load(resources.files("gpuprobe.probes.sim").joinpath(
        "scenarios/default.yaml").read_text())
    gpu0 = {**default, "devices": default["devices"][:1]}  # the three memory shapes
    clock = ManualClock(start=0.0)
    daemon = make_daemon(gpu0, {"collectors": {"nvidia_events": {"enabled": False}}}, clock)
    try:
        flagged_at = None
        names: dict[str, list[bool]] = {}
        for poll in range(36):
            daemon.scheduler.run_once()
            daemon.scheduler.run_once()  # the leak collector sees this poll's readings
            for x in daemon.store.view().results["memory_leaks"].leaks:
                if x.kind == "process":
                    names.setdefault(x.name, []).append(x.suspected)
            if flagged_at is None and any(names.get("train_leaky", [])):
                flagged_at = poll
            clock.advance(600.0)
        assert flagged_at is not None and flagged_at <= 18
        assert names["pytorch_allocator"] and not any(names["pytorch_allocator"])
        assert names["inference_server"] and not any(names["inference_server"])
    finally:
        daemon.stop()
