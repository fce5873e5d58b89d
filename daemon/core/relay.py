"""One poll's work on many GPUs, done by one thread in turn, with another thread only where a
GPU is slow to answer.

Handing each GPU's share of a poll to that GPU's own worker thread costs two thread switches
per GPU per collector. On a 2-CPU VM that is about 25 us of CPU each time (a submit and a
wait against the same work done in place), more than a third of what gpuprobe adds to the
library calls themselves at 8 GPUs (benchmarks/overhead.py). A relay runs the shares one after
another on a single driver thread instead, each inside its GPU's lane (:meth:`Worker.enter`),
so calls on one GPU still never overlap.

The thread that waits for the relay watches it: when every driver has been inside one share
for ``patience`` seconds and shares are left, it starts another driver on them. So a GPU that
hangs costs only its own share, as with a thread per GPU, and slow shares (AMD's slow calls)
still overlap. Drivers are kept in a pool and reused; one stuck in a hung call goes back to the
pool when the call returns.
"""

from __future__ import annotations

import _thread
import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from gpuprobe.daemon.core.workers import Worker

# How long a share may run before the waiter adds a driver for the shares not yet taken.
# Reading one GPU takes well under a millisecond to a few milliseconds.
PATIENCE = 0.05
IDLE_DRIVERS = 16  # drivers kept for reuse; more are stopped when they finish

_idle: list[Worker] = []
_pool_lock = threading.Lock()
_names = itertools.count()
os.register_at_fork(after_in_child=_idle.clear)  # a fork has none of these threads


class _Relay:
    __slots__ = ("closed", "deadline", "done", "error", "finished", "lock", "next", "results",
                 "running", "shares")

    def __init__(self, shares: Sequence[tuple[Worker, Callable[[], Any]]],
                 deadline: float) -> None:
        self.shares = shares
        self.deadline = deadline
        self.next = 0  # the first share no driver has taken
        self.finished = 0
        self.results: dict[int, Any] = {}
        self.running: dict[int, float] = {}  # share -> when its driver took it
        self.closed = False  # past the deadline: what is still running is not waited for
        self.error: BaseException | None = None
        self.lock = _thread.allocate_lock()
        self.done = _thread.allocate_lock()
        self.done.acquire()  # released when the last share finishes

    def drive(self) -> None:
        """Take shares in order until none is left (on a driver thread)."""
        while True:
            with self.lock:
                if self.closed or self.next >= len(self.shares):
                    return
                i = self.next
                self.next += 1
                self.running[i] = time.monotonic()
            lane, work = self.shares[i]
            done, result = False, None
            if lane.enter(self.deadline - time.monotonic()):  # else busy until the deadline
                try:
                    result, done = work(), True
                except BaseException as e:  # re-raised by the waiter
                    self.error = e
                finally:
                    lane.leave()
            with self.lock:
                del self.running[i]
                if done and not self.closed:
                    self.results[i] = result
                self.finished += 1
                if self.finished == len(self.shares) and not self.closed:
                    self.done.release()

    def wanted(self, patience: float) -> bool:
        """Shares are left and no driver is making headway: each has been inside one share
        for ``patience`` seconds (or none is running at all: it could not start)."""
        now = time.monotonic()
        with self.lock:
            return (not self.closed and self.next < len(self.shares)
                    and all(now - t >= patience for t in self.running.values()))


def _add_driver(relay: _Relay) -> None:
    with _pool_lock:
        worker = _idle.pop() if _idle else Worker(f"relay-{next(_names)}")
    worker.submit(_drive, worker, relay)
    if not worker.started:  # out of threads: this one is tried again (and logged once)
        with _pool_lock:
            _idle.append(worker)


def _drive(worker: Worker, relay: _Relay) -> None:
    try:
        relay.drive()
    finally:
        with _pool_lock:
            if len(_idle) < IDLE_DRIVERS:
                _idle.append(worker)
            else:
                worker.stop()


def run(shares: Sequence[tuple[Worker, Callable[[], Any]]], deadline: float,
        patience: float = PATIENCE) -> tuple[dict[int, Any], set[int]]:
    """Run each ``(lane, work)`` share's ``work()`` inside its lane; wait until ``deadline``.

    Returns (share index -> what its work returned, the indexes not done by the deadline).
    Re-raises a BaseException a share's work raised (Exceptions are the work's to catch)."""
    if not shares:
        return {}, set()
    relay = _Relay(shares, deadline)
    _add_driver(relay)
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or relay.done.acquire(timeout=min(patience, left)):
            break
        if relay.wanted(patience):
            _add_driver(relay)
    with relay.lock:
        relay.closed = True
        results = dict(relay.results)
    if relay.error is not None:
        raise relay.error
    return results, set(range(len(shares))) - results.keys()
