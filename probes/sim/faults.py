"""What every simulated library face shares: fault injection, the API-call marker and what
happens on entry to every call (``Face``).

``faults.add("nvmlDeviceGetPowerUsage", device=1, error=3)`` makes that call fail with the
library's error 3 on the second GPU of the face's vendor; ``hang=threading.Event()`` blocks
it until the event is set (or ``hang=0.5`` for half a second); ``garbage=True`` lets it
succeed and then fills what it returns by reference with all-ones bytes (a library bug, a
firmware field never written); ``times=1`` only once. Each face decides what an error code
becomes (an ``NVMLError``, an ``AmdSmiLibraryException``).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Fault:
    function: str  # an nvml* name, or "*" for every call
    device: int | None  # index among the NVIDIA GPUs, None for any
    error: int | None = None
    hang: float | threading.Event | None = None
    times: int | None = None  # None: every call
    garbage: bool = False


class Faults:
    def __init__(self) -> None:
        self._rules: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, function: str, device: int | None = None, *, error: int | None = None,
            hang: float | threading.Event | None = None, times: int | None = None,
            garbage: bool = False) -> Fault:
        rule = Fault(function, device, error, hang, times, garbage)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def match(self, function: str, device: int | None) -> Fault | None:
        with self._lock:
            for rule in self._rules:
                if rule.function not in ("*", function):
                    continue
                if rule.device is not None and rule.device != device:
                    continue
                if rule.times is not None:
                    if rule.times <= 0:
                        continue
                    rule.times -= 1
                return rule
        return None

    def trigger(self, function: str, device: int | None,
                error: Callable[[int], Exception]) -> Fault | None:
        """Apply the first matching rule: hang, then raise ``error(code)``; the rule (for
        a garbage one, to :func:`scribble` on the call's results)."""
        rule = self.match(function, device)
        fire(rule, error)
        return rule


def fire(rule: Fault | None, error: Callable[[int], Exception]) -> None:
    """What a matched rule does to its call: hang, then raise ``error(code)``."""
    if rule is None:
        return
    if isinstance(rule.hang, threading.Event):
        rule.hang.wait()
    elif rule.hang:
        time.sleep(rule.hang)
    if rule.error is not None:
        raise error(rule.error)


def scribble(args: tuple) -> None:
    """Fill every output of a call (what is passed ``byref``, and arrays) with all-ones
    bytes; handles and values passed by value are left alone."""
    for arg in args:
        obj = getattr(arg, "_obj", None) if type(arg).__name__ == "CArgObject" else arg
        if isinstance(obj, ctypes.Array | ctypes.Structure | ctypes.Union) or (
                obj is not None and obj is not arg and isinstance(obj, ctypes._SimpleCData)):
            ctypes.memset(ctypes.addressof(obj), 0xFF, ctypes.sizeof(obj))


class Face:
    """A simulated library's entry to each of its calls: the call is counted, fails as the
    library fails while it is missing or not initialized, then the faults injected for it
    apply. A face sets its error codes and says which GPU a call is about."""

    _WITHOUT_INIT: frozenset[str] = frozenset()  # functions that need no init
    _NOT_INITIALIZED: int  # the error of a call before init

    calls: Counter
    calls_by_device: Counter  # (function, the vendor's index of the GPU or None)
    faults: Faults
    library_missing: bool
    _init_count: int
    _world: Any

    @staticmethod
    def _err(code: int) -> Exception:
        """The library's exception for error ``code``."""
        raise NotImplementedError

    def _missing_error(self, name: str) -> int:
        """The error of call ``name`` while the library is not there."""
        raise NotImplementedError

    def _device_of(self, name: str, args: tuple) -> int | None:
        """The GPU call ``name`` with ``args`` is about, None for none."""
        raise NotImplementedError

    def _enter(self, name: str, args: tuple) -> Fault | None:
        self.calls[name] += 1
        if self.library_missing:
            raise self._err(self._missing_error(name))
        if name not in self._WITHOUT_INIT and self._init_count <= 0:
            raise self._err(self._NOT_INITIALIZED)
        device = self._device_of(name, args)
        self.calls_by_device[(name, device)] += 1
        return self.faults.trigger(name, device, self._err)

    def _t(self) -> float:
        return self._world.now()
