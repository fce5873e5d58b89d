"""The scheduler: own intervals, deadlines, a hung collector isolated, failures counted."""

from __future__ import annotations

import threading
import time

from gpuprobe.daemon.core.config import CollectorConfig
from gpuprobe.daemon.core.model import CollectorResult, DeviceIdentity, DeviceSample
from gpuprobe.daemon.core.state import Store
from gpuprobe.daemon.service.scheduler import Scheduler

from .conftest import wait_for


class Fake:
    def __init__(self, name: str, *, hang: threading.Event | None = None,
                 fail: bool = False) -> None:
        self.name = name
        self.hang = hang
        self.fail = fail
        self.calls = 0
        self.deadlines: list[float] = []

    def collect(self, deadline: float) -> CollectorResult:
        self.calls += 1
        self.deadlines.append(deadline - time.monotonic())
        if self.hang is not None:
            self.hang.wait()
        if self.fail:
            raise RuntimeError("boom")
        dev = DeviceSample(DeviceIdentity(f"GPU-{self.name}", "nvidia", "0"), up=True)
        return CollectorResult(devices=(dev,), errors={"transient": 1})

    def close(self) -> None:
        pass


def cfg(interval: float, timeout: float) -> CollectorConfig:
    return CollectorConfig(interval=interval, timeout=timeout)


def test_each_collector_on_its_own_interval():
    fast, slow = Fake("fast"), Fake("slow")
    s = Scheduler([(fast, cfg(0.1, 0.05)), (slow, cfg(1.0, 0.5))], Store())
    s.start()
    try:
        time.sleep(1.05)
    finally:
        s.stop()
    assert 7 <= fast.calls <= 13
    assert 1 <= slow.calls <= 2
    assert max(fast.deadlines) <= 0.05  # each run is handed its deadline


def test_hung_collector_is_stalled_and_not_called_again_while_others_run():
    release = threading.Event()
    hung, ok = Fake("hung", hang=release), Fake("ok")
    store = Store()
    s = Scheduler([(hung, cfg(0.1, 0.2)), (ok, cfg(0.1, 0.2))], store)
    s.start()
    try:
        wait_for(lambda: store.view().health["hung"].stalled, timeout=3)
        calls_ok = ok.calls
        time.sleep(0.5)
        view = store.view()
        assert hung.calls == 1  # never called again while its call hangs
        assert ok.calls >= calls_ok + 3  # the others go on
        assert view.health["hung"].up is False
        assert view.health["hung"].errors_total["timeout"] == 1
        assert view.health["ok"].up
        assert time.monotonic() - s.heartbeat < 0.5  # the loop still ticks
        release.set()
        wait_for(lambda: not store.view().health["hung"].stalled, timeout=3)
        wait_for(lambda: hung.calls >= 2, timeout=3)
    finally:
        release.set()
        s.stop()


def test_devices_of_a_stalled_collector_are_reported_down():
    release = threading.Event()
    c = Fake("c")
    store = Store()
    s = Scheduler([(c, cfg(0.1, 0.2))], store)
    s.run_once()
    assert store.view().devices()[0].up
    c.hang = release
    s.start()
    try:
        wait_for(lambda: store.view().health["c"].stalled, timeout=3)
        dev = store.view().devices()[0]
        assert dev.up is False and dev.down_reason == "stalled"
    finally:
        release.set()
        s.stop()


def test_exception_counts_as_internal_error_and_keeps_the_loop(caplog):
    bad, good = Fake("bad", fail=True), Fake("good")
    store = Store()
    s = Scheduler([(bad, cfg(0.05, 0.04)), (good, cfg(0.05, 0.04))], store)
    s.start()
    try:
        # both have published three runs (the good one's third may still be running when
        # the bad one's third call starts)
        wait_for(lambda: bad.calls >= 3 and store.view().health["good"].errors_total.get(
            "transient", 0) >= 3 and store.view().health["bad"].errors_total.get(
            "internal", 0) >= 3, timeout=3)
    finally:
        s.stop()
    h = store.view().health
    assert h["bad"].up is False and h["bad"].errors_total["internal"] >= 3
    assert h["good"].up and h["good"].errors_total["transient"] >= 3
    # The traceback is logged once, not on every run.
    assert sum(r.exc_info is not None and r.levelname == "ERROR" for r in caplog.records) == 1


def test_settling_while_a_run_is_under_way_and_not_once_published_or_stalled():
    release = threading.Event()
    slow = Fake("slow", hang=release)
    store = Store()
    seen: list[bool] = []
    s = Scheduler([(slow, cfg(10.0, 1.0)), (Fake("quick"), cfg(10.0, 1.0))], store)
    store.subscribe(lambda: seen.append(s.settling()))
    assert not s.settling()  # nothing started
    s.start()
    try:
        # "quick" may publish before or after "slow" is called: wait for both
        wait_for(lambda: slow.calls == 1 and len(seen) >= 1, timeout=5)
        # "quick" published with "slow" still out and inside its deadline
        assert seen[0] is True
        # past its deadline it is stalled: the rest of the cycle does not wait for it
        wait_for(lambda: not s.settling(), timeout=5)
        release.set()
        wait_for(lambda: len(seen) >= 3 and seen[-1] is False, timeout=5)
    finally:
        release.set()
        s.stop()
