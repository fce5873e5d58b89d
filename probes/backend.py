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
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpuprobe.daemon.model import DeviceIdentity
from gpuprobe.daemon.workers import Worker

UNSUPPORTED = "unsupported"
TRANSIENT = "transient"
DEVICE_FATAL = "device_fatal"
LIBRARY_FATAL = "library_fatal"

DEVICE_RETRY_MAX = 60.0
# A device whose worker has run one call for this long is treated as hung: nothing more is
# queued for it until that call returns. Normal vendor calls take microseconds to
# milliseconds.
STUCK_SECONDS = 2.0


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
    state: dict[str, Any] = field(default_factory=dict)  # per-device state of readers

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


class Query:
    """Call a vendor library for one collection, classifying and counting errors."""

    def __init__(self, session: Classifier, errors: Counter,
                 log: logging.Logger | None = None) -> None:
        self.session = session
        self.lib = session.lib
        self.errors = errors
        self.log = log or logging.getLogger("gpuprobe")

    def __call__(self, dev: Device, key: str, fn: Callable[..., Any], *args: Any,
                 **kwargs: Any) -> Any:
        """``fn(*args)`` or None when it failed in a way that leaves the metric absent."""
        if key in dev.unsupported:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            return self._failed(dev, key, e)

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
        if cls == UNSUPPORTED:
            dev.unsupported.add(key)
            level = logging.INFO if self.session.quietly_unsupported(e) else logging.DEBUG
            self.log.log(level, "GPU %s (%s): %s unavailable (%s); not asked again",
                         dev.identity.index, dev.uuid, key, e)
            return None
        if cls == TRANSIENT:
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


def lose(dev: Device, reason: str, retry_initial: float, retry_max: float) -> None:
    """Mark a device down; it is looked up again after a backoff that doubles per failure."""
    if not dev.lost:
        logging.getLogger(f"gpuprobe.{dev.identity.vendor}").warning(
            "GPU %s (%s) is down: %s", dev.identity.index, dev.uuid, reason)
        dev.backoff = retry_initial
    dev.lost = True
    dev.lost_reason = reason
    dev.retry_at = time.monotonic() + dev.backoff
    dev.backoff = min(dev.backoff * 2, retry_max, DEVICE_RETRY_MAX)
    dev.state.clear()
