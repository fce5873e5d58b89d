"""A vendor library's lifetime in the daemon: init with backoff, discovery, losing devices."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from gpuprobe.daemon.core.model import BackendStatus
from gpuprobe.daemon.core.workers import Job, Worker
from gpuprobe.probes.backend.devices import Device, lose
from gpuprobe.probes.backend.errors import TRANSIENT, LibraryDown
from gpuprobe.probes.backend.query import Query

D = TypeVar("D", bound=Device)


@dataclass(frozen=True)
class Names:
    vendor: str  # the vendor label, and the logger's name under gpuprobe
    brand: str  # the backend in log lines ("NVIDIA backend unavailable")
    gpu: str  # one of its GPUs in log lines
    library: str  # the library in log lines ("no longer enumerated by NVML")
    threads: str  # the threads of its devices are named after it


class Retries(Protocol):
    """The part of a vendor's configuration the lifetime reads."""

    @property
    def retry_initial(self) -> float: ...

    @property
    def retry_max(self) -> float: ...

    @property
    def discovery_interval(self) -> float: ...


class Lifetime(Generic[D]):
    """A vendor library's lifetime in the daemon: init with backoff, discovery when due.

    The telemetry collector drives it (``ensure(drive=True)``); the other collectors of the
    vendor wait until that has settled (devices found, or the library known to be down).
    Subclasses map the library's errors (``classify``), bring it up in ``_bring_up`` (ending
    with ``_now_up``), enumerate in ``_discover`` (gathering with ``_gather`` and ending with
    ``_end_discovery``), name a failure in ``_library_down`` (calling ``_down``), shut it down
    in ``_library_shutdown``, and look a lost device up again in ``refind``. The device
    bookkeeping (losing, families, workers) is the same for all.
    """

    lib: Any  # the vendor library (a module, or the simulated face with its names)
    names: Names  # how the vendor's backend is named in labels, logs and threads
    keeps_partitions_of_gone: bool  # a GPU no longer enumerated keeps its partitions listed

    def __init__(self, config: Retries) -> None:
        self.config = config
        self.log = logging.getLogger(f"gpuprobe.{self.names.vendor}")
        self.up = False
        self.absent = False  # no such library on this host: normal, not a fault
        self.reason: str | None = "not initialised yet"
        self.generation = 0  # how many times the library came up
        self.driven = False  # True once the telemetry collector exists to drive discovery
        self.devices: dict[str, D] = {}
        self._discovered = threading.Event()  # set while devices from a discovery are known
        self._settled = threading.Event()  # set once discovery or a failure has been seen
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._next_discovery = 0.0
        self._backoff = config.retry_initial
        self._logged_reason: str | None = None
        self._workers: dict[str, Worker] = {}
        self._closers: list[Callable[[], None]] = []

    @property
    def initialising(self) -> bool:
        """Bringing the library up is under way (not a failure yet)."""
        return False

    def ensure(self, errors: Counter, deadline: float, drive: bool = True) -> bool:
        """Initialise (or re-initialise after backoff) and discover devices when due;
        whether the library is up. Waits for init or discovery under way only until
        ``deadline`` (an init can hang on a wedged GPU); then it reports what is known."""
        if not drive and self.driven:
            self._settled.wait(max(0.0, deadline - time.monotonic()))
            return self.up and self._discovered.is_set()
        now = time.monotonic()
        if self.up and now < self._next_discovery:
            return True
        if not self.up and now < self._retry_at:
            return False
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return self.up
        try:
            if not self.up:
                self._settled.clear()  # the other collectors wait for this attempt
                self._bring_up(errors, deadline)
            now = time.monotonic()
            if self.up and now >= self._next_discovery:
                try:
                    # Half the time left, so a GPU that hangs in discovery leaves the
                    # others time to be read.
                    self._discover(self.query(errors), now + (deadline - now) / 2)
                except LibraryDown as e:
                    self._library_down(e.__cause__ or e)
            return self.up
        finally:
            self._lock.release()

    def mark_down(self, exc: BaseException) -> None:
        with self._lock:
            self._library_down(exc)

    def rediscover_soon(self) -> None:
        """Enumerate again at the next collection (a device came back, partitions changed)."""
        self._next_discovery = 0.0

    def _discovery_done(self, next_in: float) -> None:
        self._next_discovery = time.monotonic() + next_in
        self._discovered.set()
        self._settled.set()

    def _failure_seen(self) -> None:
        self._discovered.clear()
        self._settled.set()

    def _now_up(self) -> None:
        """The library has come up: a new generation, discovered at once."""
        self.up, self.absent, self.reason = True, False, None
        self.generation += 1
        self._backoff = self.config.retry_initial
        self._next_discovery = 0.0

    def _down(self, reason: str, absent: bool = False) -> None:
        """The library is down (``absent``: not on this host); it is brought up again after
        a backoff that doubles per failure. A reason is logged once."""
        self.absent = absent
        self.reason = reason
        was_up, self.up = self.up, False
        self._failure_seen()
        if was_up:
            self._shut_down()
        for dev in self.devices.values():
            dev.state.clear()
        self._retry_at = time.monotonic() + self._backoff
        if reason != self._logged_reason:
            self._logged_reason = reason
            self.log.log(logging.INFO if absent else logging.WARNING,
                         "%s backend unavailable: %s; retrying every %.0fs at most",
                         self.names.brand, reason, self.config.retry_max)
        self._backoff = min(self._backoff * 2, self.config.retry_max)

    def on_shutdown(self, closer: Callable[[], None]) -> None:
        """Run ``closer`` before the library is shut down (to free GPM samples)."""
        self._closers.append(closer)

    def _shut_down(self) -> None:
        for closer in self._closers:
            closer()
        try:
            self._library_shutdown()
        except Exception:
            pass

    def close(self) -> None:
        with self._lock:
            if self.up:
                self._shut_down()
                self.up = False
            for w in self._all_workers():
                w.stop()

    def _all_workers(self) -> list[Worker]:
        return list(self._workers.values())

    def _worker(self, name: str) -> Worker:
        """The worker of one GPU (by a name that stays the GPU's), made when first asked."""
        if name not in self._workers:
            self._workers[name] = Worker(f"{self.names.threads}-{name}")
        return self._workers[name]

    # -- devices ----------------------------------------------------------------------------

    def known(self) -> list[D]:
        return list(self.devices.values())

    def physical(self) -> list[D]:
        return [d for d in self.devices.values() if d.parent is None]

    def family(self, dev: D) -> list[D]:
        """``dev`` and its instances or partitions."""
        return [dev, *(c for c in self.devices.values() if c.parent is dev)]

    def lose(self, dev: D, reason: str) -> None:
        """Mark ``dev`` down, to be looked up again with backoff (:func:`.devices.lose`)."""
        lose(dev, reason, self.config.retry_initial, self.config.retry_max)

    def _gather(self, jobs: list[tuple[D | None, tuple[Job, Counter] | None]], q: Query,
                deadline: float) -> tuple[dict[str, D], bool]:
        """What discovery's per-GPU jobs found, by UUID, and whether to look again soon.

        A job (on the GPU's worker, with its own error counter) gives the GPU's family, or
        None when the GPU could not be reached; a job is None when the GPU's worker is hung.
        A GPU we knew (the job's first member) whose job gave nothing in time stays as it
        was, and the next look comes soon, as it does after a transient failure."""
        found: dict[str, D] = {}
        retry_soon = False
        failure: LibraryDown | None = None
        for known, job in jobs:
            result: list[D] | None = None
            if job is not None:
                fut, errors = job
                try:
                    result = fut.result(timeout=max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    fut.cancel()
                except LibraryDown as e:
                    failure = e
                q.errors.update(errors)
                retry_soon |= TRANSIENT in errors
            if result is not None:
                found.update((d.uuid, d) for d in result)
                continue
            retry_soon = True
            if known is not None:
                found.update((d.uuid, d) for d in self.family(known))
        if failure is not None:
            raise failure
        return found, retry_soon

    def _end_discovery(self, found: dict[str, D], retry_soon: bool, whole: bool = True,
                       replaced: Callable[[D], bool] | None = None) -> None:
        """Make ``found`` the devices known. A physical GPU that disappeared stays known,
        and down (lost when the enumeration was ``whole``), so alerts see it; one
        ``replaced`` by another in its place is dropped. The next discovery is soon after
        ``retry_soon``, else after the discovery interval."""
        for uuid, dev in self.devices.items():
            if dev.parent is None and uuid not in found and not (replaced and replaced(dev)):
                if not dev.lost and whole:
                    self.lose(dev, f"no longer enumerated by {self.names.library}")
                kept = self.family(dev) if self.keeps_partitions_of_gone else [dev]
                found.update((d.uuid, d) for d in kept)
        self.devices = found
        self._discovery_done(self.config.retry_initial if retry_soon
                             else self.config.discovery_interval)

    # -- for the vendor ----------------------------------------------------------------------

    def classify(self, exc: BaseException) -> str | None:
        """The error class of an exception from a library call; None if not the library's."""
        raise NotImplementedError

    def quietly_unsupported(self, exc: BaseException) -> bool:
        """True for an unsupported error worth an INFO line (a missing permission)."""
        raise NotImplementedError

    def query(self, errors: Counter) -> Query:
        """The choke point for one collection, counting into ``errors``."""
        return Query(self, errors, self.log)

    def refind(self, dev: D, q: Query) -> bool:
        """Look a lost device up again when its backoff has passed; True when it answers
        (then it is read in this poll)."""
        raise NotImplementedError

    def status(self) -> BackendStatus:
        raise NotImplementedError

    def _bring_up(self, errors: Counter, deadline: float) -> None:
        raise NotImplementedError

    def _discover(self, q: Query, deadline: float) -> None:
        raise NotImplementedError

    def _library_down(self, exc: BaseException) -> None:
        """The library failed (``exc``): call :meth:`_down` with a reason."""
        raise NotImplementedError

    def _library_shutdown(self) -> None:
        raise NotImplementedError
