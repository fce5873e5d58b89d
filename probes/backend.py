"""What every vendor backend shares: devices on their own workers, and the error choke point.

A backend sorts each failure of a vendor call into one of four classes (as nvitop's
``nvmlQuery`` does for its TUI); only the way a library's errors map to the classes differs
per vendor, so that mapping is the backend's ``classify``:

* ``unsupported``: the device or library cannot answer this call (NOT_SUPPORTED, no
  permission, a binding too old for the call). Remembered per device and metric; the metric
  is absent and never asked again.
* ``transient``: anything else a device can answer (timeout, retry, busy, ...). The metric is
  absent this cycle and asked again next cycle.
* ``device_fatal``: the device is gone (lost, reset, not found). It reports down, the others
  go on, and it is looked up again with backoff.
* ``library_fatal``: the library itself is unusable (not initialised, driver not loaded).
  The backend reports down and is re-initialised with backoff; the daemon keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpuprobe.daemon.core.model import DeviceIdentity, DeviceSample
from gpuprobe.daemon.core.workers import Worker

UNSUPPORTED = "unsupported"
TRANSIENT = "transient"
DEVICE_FATAL = "device_fatal"
LIBRARY_FATAL = "library_fatal"

DEVICE_RETRY_MAX = 60.0
# A device whose worker has run one call for this long is treated as hung: nothing more is
# queued for it until that call returns. Normal vendor calls take microseconds to
# milliseconds.
STUCK_SECONDS = 2.0
# The down reason of a device that answered none of the calls of a poll.
NO_ANSWER = "no call answered"


class DeviceLost(Exception):
    """A device-fatal error: the device is down until it is found again."""


class LibraryDown(Exception):
    """A library-fatal error: the whole backend is down until re-initialised."""


@dataclass(eq=False)
class Device:
    """A device a backend knows, by UUID; it stays known (and down) after it is lost."""

    uuid: str
    handle: Any
    identity: DeviceIdentity
    worker: Worker
    parent: Device | None = None
    lost: bool = False
    lost_reason: str | None = None
    retry_at: float = 0.0
    backoff: float = 1.0
    unsupported: set[str] = field(default_factory=set)
    static: dict[str, Any] = field(default_factory=dict)
    # per-device state of readers, by name (Query.first keys its choices ("alt", key))
    state: dict[str | tuple[str, str], Any] = field(default_factory=dict)
    unanswered: bool = False  # its last poll asked it calls and none was answered
    up_since: float = field(default_factory=time.monotonic)  # when last found (or made)
    flaps: int = 0  # times lost since it last stayed up for a whole settle period
    logged_step: float | None = None  # the backoff of the last loss that was logged
    loss_logged: bool = False  # whether its latest loss was logged (then so is its return)

    @property
    def physical(self) -> Device:
        return self.parent or self

    @property
    def up(self) -> bool:
        return not self.lost and not (self.parent is not None and self.parent.lost)


class Classifier(Protocol):
    lib: Any

    def classify(self, exc: BaseException) -> str | None:
        """The error class of an exception from a vendor call; None if not the library's."""
        ...

    def quietly_unsupported(self, exc: BaseException) -> bool:
        """True for an unsupported error worth an INFO line (a missing permission)."""
        ...


@dataclass
class Tally:
    """What one device was asked in one collection, and how much of it it answered (a value,
    or "not supported": both are answers; a transient failure is not)."""

    asked: int = 0
    answered: int = 0
    last_error: str | None = None


class Query:
    """Call a vendor library for one collection, classifying and counting errors.

    It also tallies per device what was asked and answered, so that a device that answered
    none of its calls in a poll reads down (:meth:`verdict`) instead of up with its static
    facts only. Each device's calls run on its own worker, so the tallies of different
    devices are written from different threads, never one tally from two."""

    def __init__(self, session: Classifier, errors: Counter,
                 log: logging.Logger | None = None) -> None:
        self.session = session
        self.lib = session.lib
        self.errors = errors
        self.log = log or logging.getLogger("gpuprobe")
        self.tallies: dict[str, Tally] = {}

    def __call__(self, dev: Device, key: str, fn: Callable[..., Any], *args: Any,
                 **kwargs: Any) -> Any:
        """``fn(*args)`` or None when it failed in a way that leaves the metric absent."""
        if key in dev.unsupported:
            return None
        try:
            value = fn(*args, **kwargs)
        except Exception as e:
            return self._failed(dev, key, e)
        tally = self._tally(dev)
        tally.asked += 1
        tally.answered += 1
        return value

    def _tally(self, dev: Device) -> Tally:
        tally = self.tallies.get(dev.uuid)
        if tally is None:
            tally = self.tallies[dev.uuid] = Tally()
        return tally

    def verdict(self, dev: Device, sample: DeviceSample) -> DeviceSample:
        """``sample`` (of ``dev``, read with this query), or ``dev`` down when it was asked
        calls in this poll and answered none: a GPU that answers nothing is not up. It is
        asked again next poll and reads up as soon as a call is answered. A change either
        way is logged once."""
        tally = self.tallies.get(dev.uuid)
        silent = tally is not None and tally.asked > 0 and tally.answered == 0
        log = logging.getLogger(f"gpuprobe.{dev.identity.vendor}")
        if silent and tally is not None:
            if not dev.unanswered:
                log.warning("GPU %s (%s) answered none of the %d calls of this poll (last "
                            "error: %s); reported down until it answers", dev.identity.index,
                            dev.uuid, tally.asked, tally.last_error)
            dev.unanswered = True
            return DeviceSample(identity=sample.identity, up=False,
                                down_reason=f"{NO_ANSWER} ({tally.last_error})")
        if dev.unanswered and tally is not None and tally.answered:
            log.info("GPU %s (%s) answers calls again", dev.identity.index, dev.uuid)
            dev.unanswered = False
        return sample

    def first(self, dev: Device, key: str,
              calls: list[tuple[str | Callable[..., Any], tuple]]) -> Any:
        """The first of alternative calls that is supported (a newer API, then an older);
        a call is a function or the name of one in the library. The one that worked is
        remembered per device, so later polls go straight to it."""
        chosen = dev.state.get(("alt", key))
        if chosen is not None:
            fn, args = calls[chosen]
            if isinstance(fn, str):
                fn = getattr(self.lib, fn)
            return self(dev, f"{key}#{chosen}", fn, *args)
        for i, (fn, args) in enumerate(calls):
            sub = f"{key}#{i}"
            if isinstance(fn, str):
                fn = getattr(self.lib, fn, None)
            if fn is None:  # this binding does not have the function
                dev.unsupported.add(sub)
            if sub in dev.unsupported:
                continue
            value = self(dev, sub, fn, *args)
            if value is not None:
                dev.state[("alt", key)] = i
                return value
            if sub not in dev.unsupported:
                return None  # a transient failure: try this one again next time
        return None

    def system(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A call about the library, not a device: every failure but an unsupported one is
        library-fatal (raises LibraryDown)."""
        try:
            return fn(*args)
        except Exception as e:
            cls = self.session.classify(e)
            if cls is None:
                raise
            self.errors[cls] += 1
            if cls == UNSUPPORTED:
                return None
            raise LibraryDown(e) from e

    def _failed(self, dev: Device, key: str, e: Exception) -> None:
        cls = self.session.classify(e)
        if cls is None:
            raise e
        self.errors[cls] += 1
        tally = self._tally(dev)
        tally.asked += 1
        if cls == UNSUPPORTED:
            tally.answered += 1  # the device (or library) answered: it cannot do this
            dev.unsupported.add(key)
            level = logging.INFO if self.session.quietly_unsupported(e) else logging.DEBUG
            self.log.log(level, "GPU %s (%s): %s unavailable (%s); not asked again",
                         dev.identity.index, dev.uuid, key, e)
            return None
        if cls == TRANSIENT:
            tally.last_error = f"{key}: {' '.join(str(e).split())[:200]}"
            self.log.debug("GPU %s: %s failed (%s); will retry", dev.identity.index, key, e)
            return None
        if cls == DEVICE_FATAL:
            raise DeviceLost(f"{key}: {e}") from e
        raise LibraryDown(e) from e


def _each(fn: Callable[[Device], Any], devices: list[Device]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dev in devices:
        try:
            out[dev.uuid] = fn(dev)
        except Exception as e:
            out[dev.uuid] = e
    return out


def run_on_devices(devices: list[Any], fn: Callable[[Any], Any], deadline: float
                   ) -> tuple[dict[str, Any], set[str]]:
    """Run ``fn(dev)`` for each device on its physical GPU's own worker; wait until
    ``deadline``.

    Returns (uuid -> result or exception, uuids not done). The work queues behind another
    collector's call to the same GPU; a GPU whose worker has been inside one call for
    STUCK_SECONDS is hung, is not called again until that call returns, and counts as not
    done, with its instances or partitions. Work not started by the deadline is cancelled.
    """
    groups: dict[Worker, list[Device]] = {}
    for dev in devices:
        groups.setdefault(dev.worker, []).append(dev)
    futures = []
    stuck: set[str] = set()
    for worker, devs in groups.items():
        if worker.running_for() > STUCK_SECONDS:
            stuck.update(d.uuid for d in devs)
        else:
            futures.append((devs, worker.submit(_each, fn, devs)))
    results: dict[str, Any] = {}
    for devs, fut in futures:
        try:
            results.update(fut.result(timeout=max(0.0, deadline - time.monotonic())))
        except TimeoutError:
            fut.cancel()
            stuck.update(d.uuid for d in devs)
    return results, stuck


def settle_seconds(retry_max: float) -> float:
    """How long a device found again must stay up before its backoff starts afresh: the
    longest wait between look-ups, so a GPU that flaps is looked at no more often than that."""
    return min(retry_max, DEVICE_RETRY_MAX)


def lose(dev: Device, reason: str, retry_initial: float, retry_max: float,
         now: float | None = None) -> None:
    """Mark a device down; it is looked up again after a backoff that doubles per failed
    look-up, and per flap: a device lost again before it has stayed up for
    ``settle_seconds`` keeps the backoff it had (it is not found again on every poll), and
    its losses and returns are logged at most once per backoff step."""
    now = time.monotonic() if now is None else now
    log = logging.getLogger(f"gpuprobe.{dev.identity.vendor}")
    cap = min(retry_max, DEVICE_RETRY_MAX)
    if not dev.lost:
        if dev.flaps == 0 or now - dev.up_since >= settle_seconds(retry_max):
            dev.flaps = 0  # it had settled (or was never lost): a new episode
            dev.backoff = retry_initial
            dev.logged_step = None
        dev.flaps += 1
        dev.loss_logged = dev.backoff != dev.logged_step
        if dev.loss_logged:
            dev.logged_step = dev.backoff
            if dev.flaps == 1:
                log.warning("GPU %s (%s) is down: %s", dev.identity.index, dev.uuid, reason)
            else:
                log.warning("GPU %s (%s) is down again %.0fs after it came back (lost %d "
                            "times without staying up %gs in between): %s; next look in %gs%s",
                            dev.identity.index, dev.uuid, now - dev.up_since, dev.flaps,
                            settle_seconds(retry_max), reason, dev.backoff,
                            "; not logged again while it keeps flapping"
                            if dev.backoff >= cap else "")
    dev.lost = True
    dev.lost_reason = reason
    dev.retry_at = now + dev.backoff
    dev.backoff = min(dev.backoff * 2, cap)
    dev.state.clear()


def found_again(dev: Device, how: str = "found again", now: float | None = None) -> None:
    """A lost device answers again: it is up, and its backoff is kept until it has stayed up
    for a while (see :func:`lose`); logged when its loss was."""
    dev.lost, dev.lost_reason = False, None
    dev.up_since = time.monotonic() if now is None else now
    if dev.loss_logged:
        logging.getLogger(f"gpuprobe.{dev.identity.vendor}").info(
            "GPU %s (%s) %s", dev.identity.index, dev.uuid, how)


def down_sample(dev: Device, reason: str) -> DeviceSample:
    """What a device that did not answer reports: its identity, down, and why."""
    return DeviceSample(identity=dev.identity, up=False, down_reason=reason)


class Lifetime:
    """A vendor library's lifetime in the daemon: init with backoff, discovery when due.

    The telemetry collector drives it (``ensure(drive=True)``); the other collectors of the
    vendor wait until that has settled (devices found, or the library known to be down).
    Subclasses bring the library up in ``_bring_up`` (setting ``up``), enumerate in
    ``_discover`` (ending with ``_discovery_done``), and mark it down in ``_library_down``
    (which must call ``_failure_seen``).
    """

    def __init__(self) -> None:
        self.up = False
        self.driven = False  # True once the telemetry collector exists to drive discovery
        self._discovered = threading.Event()  # set while devices from a discovery are known
        self._settled = threading.Event()  # set once discovery or a failure has been seen
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._next_discovery = 0.0

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

    # -- for the vendor ----------------------------------------------------------------------

    def query(self, errors: Counter) -> Query:
        raise NotImplementedError

    def _bring_up(self, errors: Counter, deadline: float) -> None:
        raise NotImplementedError

    def _discover(self, q: Query, deadline: float) -> None:
        raise NotImplementedError

    def _library_down(self, exc: BaseException) -> None:
        raise NotImplementedError


class EventWatcher:
    """A thread that counts a library's device events; collectors publish its snapshot, so
    a poll never blocks on events. Subclasses implement ``_run`` (until ``_stop`` is set)."""

    thread_name = "events"

    def __init__(self, session: Classifier) -> None:
        self.session = session
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.errors: Counter = Counter()
        self.healthy = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_failed = False
        self.attempted = threading.Event()  # set once registration has been tried

    def ensure_running(self) -> None:
        """Start the thread if it is not running; when no thread can be started (out of
        threads or memory) the events go uncounted until a later poll can start it."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self.thread_name,
                                            daemon=True)
            try:
                self._thread.start()
            except RuntimeError as e:
                if not self._start_failed:
                    self._start_failed = True
                    logging.getLogger("gpuprobe").warning(
                        "cannot start the %s thread (%s); retried at each poll",
                        self.thread_name, e)
                return
            self._start_failed = False

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> tuple[dict[str, dict], Counter]:
        with self._lock:
            counts = {uuid: dict(c) for uuid, c in self.counts.items()}
            errors, self.errors = self.errors, Counter()
        return counts, errors

    def _failed(self, e: Exception) -> str:
        cls = self.session.classify(e)
        if cls is None:
            raise e
        with self._lock:
            self.errors[cls] += 1
        return cls

    def _run(self) -> None:
        raise NotImplementedError
