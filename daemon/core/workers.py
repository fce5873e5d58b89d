"""A single daemon thread that runs submitted calls in order, and the lane it guards.

Each collector and each physical GPU gets one. A vendor call that hangs blocks only its own
worker: the caller stops waiting at its deadline and submits nothing more to that worker
until the hung call returns. Python cannot kill a thread, so this is the most a thread can do;
the threads are daemonic so a call stuck in the driver does not keep the process from exiting.

A GPU's worker is also its lane: every call on that GPU, made by the worker's own thread or by
another thread inside :meth:`Worker.enter` / :meth:`Worker.leave` (a poll's relay,
daemon/core/relay.py), runs with the lane held, so calls on one GPU never overlap, and
:meth:`Worker.running_for` tells how long the current one has run, whoever makes it.

Completion is signalled with a bare lock rather than ``concurrent.futures.Future``: a poll
hands work to a thread about twenty times, and a Future costs twice the CPU per hand-off
(measured by ``benchmarks/overhead.py``'s scenario: 33 against 15 microseconds).
"""

from __future__ import annotations

import _thread
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gpuprobe")


class ThreadUnavailable(TimeoutError):
    """The worker's thread could not be started (``can't start new thread``: out of threads
    or memory). A TimeoutError, so every caller treats the call as one that did not answer in
    time: it costs that call's reading, and the next submit tries to start the thread again."""


class Job:
    """The outcome of a submitted call: ``result(timeout)``, ``done()``, ``cancel()``."""

    __slots__ = ("_cancelled", "_done", "_error", "_lock", "_result", "_started")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()  # released when the call finishes
        self._done = self._started = self._cancelled = False
        self._result: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def cancel(self) -> bool:
        """Drop the call if it has not started (a racing start may still run it)."""
        if self._started:
            return False
        self._cancelled = True
        return True

    def result(self, timeout: float | None = None) -> Any:
        """The call's return value; re-raises its exception; TimeoutError if not done."""
        if not self._done:
            if not self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
                raise TimeoutError
            self._lock.release()  # let any other waiter through too
        if self._error is not None:
            raise self._error
        return self._result

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self._result, self._error, self._done = result, error, True
        self._lock.release()


class Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Job, Callable[..., Any], tuple] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._lane = _thread.allocate_lock()  # held by whoever is calling on this GPU
        self.busy_since: float | None = None
        self._start_failed = False  # logged once until a start succeeds

    def submit(self, fn: Callable[..., Any], *args: Any) -> Job:
        job = Job()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    try:
                        thread.start()
                    except RuntimeError as e:  # a thread that never started would take
                        self._cannot_start(e)  # jobs that never run: try again next time
                        job._finish(None, ThreadUnavailable(f"thread {self.name}: {e}"))
                        return job
                    self._thread = thread
                    if self._start_failed:
                        self._start_failed = False
                        log.info("thread %s started", self.name)
        self._queue.put((job, fn, args))
        return job

    def _cannot_start(self, e: RuntimeError) -> None:
        if not self._start_failed:
            self._start_failed = True
            log.warning("cannot start thread %s (%s: out of threads or memory); what it "
                        "would run is not read until a thread can be started", self.name, e)

    @property
    def started(self) -> bool:
        """Its thread is running (it is started at the first submit that can start it)."""
        return self._thread is not None

    def running_for(self) -> float:
        """Seconds the current call on the lane has been running; 0 when idle."""
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    def enter(self, timeout: float) -> bool:
        """Hold the lane (wait at most ``timeout`` seconds for the call on it to end) to call
        on this GPU from the calling thread; False if it stayed busy. :meth:`leave` after."""
        if not self._lane.acquire(timeout=max(0.0, timeout)):
            return False
        self.busy_since = time.monotonic()
        return True

    def leave(self) -> None:
        self.busy_since = None
        self._lane.release()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._do(*item)
            # Nothing of the job stays bound while the thread waits for the next one: an
            # idle driver would otherwise keep its last job's closures (and what they hold,
            # a daemon in the tests) alive until its next job.
            del item

    def _do(self, job: Job, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Runs one job and hands its outcome to whoever waits on it."""
        if job._cancelled:
            return
        job._started = True
        self._lane.acquire()
        self.busy_since = time.monotonic()
        try:
            result = fn(*args)
        except BaseException as e:  # handed to whoever waits on the job
            job._finish(None, e)
        else:
            job._finish(result, None)
        finally:
            self.leave()
