"""The four error classes of a vendor call, the exceptions two of them raise, and text.

A backend sorts each failure of a vendor call into one of four classes (as nvitop's
``nvmlQuery`` does for its TUI); only the way a library's errors map to the classes differs
per vendor, so that mapping is the backend session's ``classify``:

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

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

UNSUPPORTED = "unsupported"
TRANSIENT = "transient"
DEVICE_FATAL = "device_fatal"
LIBRARY_FATAL = "library_fatal"


@dataclass(frozen=True)
class ErrorCodes:
    """A library's error codes by class; any other code of the library's is transient."""

    unsupported: Collection[int]
    device_fatal: Collection[int]
    library_fatal: Collection[int]

    def class_of(self, code: int | None) -> str:
        if code in self.unsupported:
            return UNSUPPORTED
        if code in self.device_fatal:
            return DEVICE_FATAL
        if code in self.library_fatal:
            return LIBRARY_FATAL
        return TRANSIENT


class DeviceLost(Exception):
    """A device-fatal error: the device is down until it is found again."""


class LibraryDown(Exception):
    """A library-fatal error: the whole backend is down until re-initialised."""


class NotFound(Exception):
    """A look-up (an enumeration, a handle by index or UUID) failed in a way that leaves the
    library up; ``cls`` is the error's class, the library's exception the ``__cause__``."""

    def __init__(self, cls: str, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.cls = cls


class Classifier(Protocol):
    lib: Any

    def classify(self, exc: BaseException) -> str | None:
        """The error class of an exception from a vendor call; None if not the library's."""
        ...

    def quietly_unsupported(self, exc: BaseException) -> bool:
        """True for an unsupported error worth an INFO line (a missing permission)."""
        ...


def text(value: Any) -> Any:
    """A library's text as str: bytes (what older pynvml returns for strings, and what
    ctypes gives for a char array such as ``busId``) decoded, anything else as it is."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def within(value: Any, low: float, high: float) -> float | None:
    """``value`` as a float where it is a number in [low, high], else None: what a library
    returns outside what the hardware can have (all-ones "not available" words, a field
    the firmware never wrote) is absent, not exported."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if low <= v <= high else None
