"""A single daemon thread that runs submitted calls in order.

Each collector and each physical GPU gets one. A vendor call that hangs blocks only its own
worker: the caller stops waiting at its deadline and submits nothing more to that worker
until the hung call returns. Python cannot kill a thread, so this is the most a thread can do;
the threads are daemonic so a call stuck in the driver does not keep the process from exiting.

Completion is signalled with a bare lock rather than ``concurrent.futures.Future``: a poll
hands work to a thread about twenty times, and a Future costs twice the CPU per hand-off
(measured by ``benchmarks/overhead.py``'s scenario: 33 against 15 microseconds).
"""

from __future__ import annotations

import _thread
import queue
import threading
import time
from collections.abc import Callable
from typing import Any


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
        self.busy_since: float | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Job:
        job = Job()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self.name,
                                                    daemon=True)
                    self._thread.start()
        self._queue.put((job, fn, args))
        return job

    def running_for(self) -> float:
        """Seconds the current call has been running; 0 when idle."""
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, fn, args = item
            if job._cancelled:
                continue
            job._started = True
            self.busy_since = time.monotonic()
            try:
                result = fn(*args)
            except BaseException as e:  # handed to whoever waits on the job
                job._finish(None, e)
            else:
                job._finish(result, None)
            finally:
                self.busy_since = None
