"""The relay (daemon/core/relay.py): one poll's shares run in turn by one thread, each in its
GPU's lane, with another thread only where a share is slow or hung."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from gpuprobe.daemon.core import relay
from gpuprobe.daemon.core.workers import Worker

from .conftest import wait_for


@pytest.fixture
def lanes():
    made: list[Worker] = []

    def make(n: int) -> list[Worker]:
        made.extend(Worker(f"lane-{len(made) + i}") for i in range(n))
        return made[-n:]

    yield make
    for w in made:
        w.stop()


def test_fast_shares_run_in_turn_on_one_thread(lanes) -> None:
    ran: list[tuple[int, str]] = []

    def work(i: int):
        return lambda: ran.append((i, threading.current_thread().name)) or i * 10

    shares = [(lane, work(i)) for i, lane in enumerate(lanes(8))]
    done, not_done = relay.run(shares, time.monotonic() + 5)
    assert done == {i: i * 10 for i in range(8)} and not_done == set()
    assert [i for i, _ in ran] == list(range(8))  # in order
    threads = {name for _, name in ran}
    assert len(threads) == 1 and threads != {threading.current_thread().name}, threads


def test_a_hung_share_costs_only_itself(lanes) -> None:
    release = threading.Event()
    hung, *rest = lanes(4)
    shares = [(hung, release.wait)] + [(lane, lambda: "read") for lane in rest]
    t0 = time.monotonic()
    try:
        done, not_done = relay.run(shares, t0 + 2.0, patience=0.05)
        took = time.monotonic() - t0
        assert not_done == {0}
        assert done == {1: "read", 2: "read", 3: "read"}
        assert took >= 1.9  # the hung share was waited for until the deadline, no longer
        assert hung.running_for() > 1.5  # and its lane shows it, for the next poll's check
    finally:
        release.set()
    wait_for(lambda: hung.running_for() == 0, timeout=5)


def test_the_rest_is_taken_over_soon_after_a_share_hangs(lanes) -> None:
    release = threading.Event()
    finished: dict[int, float] = {}
    hung, *rest = lanes(4)

    def read(i: int):
        return lambda: finished.setdefault(i, time.monotonic())

    shares = [(hung, release.wait)] + [(lane, read(i + 1)) for i, lane in enumerate(rest)]
    t0 = time.monotonic()
    try:
        relay.run(shares, t0 + 2.0, patience=0.05)
    finally:
        release.set()
    assert sorted(finished) == [1, 2, 3]
    assert max(finished.values()) - t0 < 1.0  # taken over at patience, not at the deadline


def test_calls_on_one_gpu_never_overlap(lanes) -> None:
    """A lane held by another caller (a probe, another collector) is waited for; when it is
    held past the deadline the share is not done and its work never runs."""
    lane, other = lanes(2)
    ran: list[str] = []
    assert lane.enter(1.0)
    try:
        _done, not_done = relay.run([(lane, lambda: ran.append("lane")),
                                    (other, lambda: ran.append("other"))],
                                   time.monotonic() + 0.5)
    finally:
        lane.leave()
    assert not_done == {0} and ran == ["other"]
    time.sleep(0.2)
    assert ran == ["other"]  # not run late, after the lane came free
    # Free, the lane is taken by the relay and held while its share runs.
    seen: list[bool] = []
    relay.run([(lane, lambda: seen.append(lane.running_for() > 0))], time.monotonic() + 5)
    assert seen == [True] and lane.running_for() == 0


def test_slow_shares_overlap(lanes) -> None:
    shares = [(lane, lambda: time.sleep(0.3)) for lane in lanes(4)]
    t0 = time.monotonic()
    done, not_done = relay.run(shares, t0 + 5, patience=0.05)
    assert len(done) == 4 and not not_done
    assert time.monotonic() - t0 < 0.9  # four in turn would take 1.2 s


def test_a_base_exception_from_a_share_reaches_the_caller(lanes) -> None:
    class Stop(BaseException):
        pass

    def stop():
        raise Stop

    with pytest.raises(Stop):
        relay.run([(lane, stop) for lane in lanes(2)], time.monotonic() + 5)


def test_no_thread_for_a_driver_costs_the_poll_not_the_caller(lanes, monkeypatch,
                                                             caplog) -> None:
    """Out of threads: the shares are not done by the deadline, the caller is not raised
    to, the driver is logged once, and the next run starts it once threads are back."""
    refused = {"on": True}
    real = threading.Thread.start

    def start(self):
        if refused["on"] and self.name.startswith("relay-"):
            raise RuntimeError("can't start new thread")
        return real(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    monkeypatch.setattr(relay, "_idle", [])  # no driver from earlier tests
    shares = [(lane, lambda: "read") for lane in lanes(3)]
    with caplog.at_level("INFO", logger="gpuprobe"):
        done, not_done = relay.run(shares, time.monotonic() + 0.5, patience=0.05)
        assert done == {} and not_done == {0, 1, 2}
        refused["on"] = False
        done, not_done = relay.run(shares, time.monotonic() + 5)
    assert done == {0: "read", 1: "read", 2: "read"} and not not_done
    said = [r.getMessage() for r in caplog.records]
    assert sum("cannot start thread relay-" in m for m in said) == 1, said


def test_an_idle_worker_keeps_nothing_of_its_last_job() -> None:
    """A pooled driver waits for its next job holding none of the last one's callable,
    arguments or result (it kept a poll's closures, and through them a daemon, alive)."""
    import gc
    import weakref

    class Held:
        pass

    worker = Worker("test-idle")
    try:
        def returning(value: Held) -> Callable[[Held], Held]:
            return lambda _: value  # a closure, as the relay submits

        arg, out = Held(), Held()
        refs = [weakref.ref(x) for x in (arg, out)]
        assert worker.submit(returning(out), arg).result(timeout=5) is out
        del arg, out
        wait_for(lambda: (gc.collect(), all(r() is None for r in refs))[1], timeout=5)
    finally:
        worker.stop()
