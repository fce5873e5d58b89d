"""The error choke point: every vendor call of a collection goes through :class:`Query`."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpuprobe.daemon.core.model import DeviceSample
from gpuprobe.probes.backend.devices import Device
from gpuprobe.probes.backend.errors import (
    DEVICE_FATAL,
    LIBRARY_FATAL,
    TRANSIENT,
    UNSUPPORTED,
    Classifier,
    DeviceLost,
    LibraryDown,
    NotFound,
    text,
)

# The down reason of a device that answered none of the calls of a poll.
NO_ANSWER = "no call answered"


@dataclass(slots=True)
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
    facts only. Each device's calls run inside its GPU's lane, one thread at a time, so the
    tallies of different devices may be written from different threads, never one tally
    from two at once."""

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
            return self.failed(dev, key, e)
        # The tally and text() inlined: this runs for every call of every poll.
        tally = self.tallies.get(dev.uuid)
        if tally is None:
            tally = self.tallies[dev.uuid] = Tally()
        tally.asked += 1
        tally.answered += 1
        return value.decode(errors="replace") if type(value) is bytes else value

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
        if tally is None or (tally.answered and not dev.unanswered):
            return sample  # the usual case: it answered, as it did before
        log = logging.getLogger(f"gpuprobe.{dev.identity.vendor}")
        if tally.asked > 0 and tally.answered == 0:
            if not dev.unanswered:
                log.warning("GPU %s (%s) answered none of the %d calls of this poll (last "
                            "error: %s); reported down until it answers", dev.identity.name,
                            dev.uuid, tally.asked, tally.last_error)
            dev.unanswered = True
            return DeviceSample(identity=sample.identity, up=False,
                                down_reason=f"{NO_ANSWER} ({tally.last_error})")
        if dev.unanswered and tally.answered:
            log.info("GPU %s (%s) answers calls again", dev.identity.name, dev.uuid)
            dev.unanswered = False
        return sample

    def first(self, dev: Device, key: str,
              calls: list[tuple[str | Callable[..., Any], tuple]]) -> Any:
        """The first of alternative calls that is supported (a newer API, then an older);
        a call is a function or the name of one in the library. The one that worked is
        remembered per device, so later polls go straight to it."""
        chosen = dev.state.get(("alt", key))
        if chosen is not None:
            i, sub = chosen
            fn, args = calls[i]
            if isinstance(fn, str):
                fn = getattr(self.lib, fn)
            return self(dev, sub, fn, *args)
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
                dev.state[("alt", key)] = (i, sub)
                return value
            if sub not in dev.unsupported:
                return None  # a transient failure: try this one again next time
        return None

    def system(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A call about the library, not a device: every failure but an unsupported one is
        library-fatal (raises LibraryDown)."""
        try:
            return text(fn(*args))
        except Exception as e:
            cls = self._class(e)
            self.errors[cls] += 1
            if cls == UNSUPPORTED:
                return None
            raise LibraryDown(e) from e

    def init(self, fn: Callable[..., Any], *args: Any) -> None:
        """The library's own initialisation: any failure leaves it down (raises LibraryDown)
        and counts as library-fatal, an unsupported one (a binding without the call) as
        unsupported."""
        try:
            fn(*args)
        except Exception as e:
            cls = self._class(e)
            self.errors[LIBRARY_FATAL if cls != UNSUPPORTED else cls] += 1
            raise LibraryDown(e) from e

    def find(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A call that looks devices up (the enumeration, a handle by index or UUID) before
        there is a device to charge it to: its failure is counted by class, and raises
        LibraryDown when library-fatal, NotFound (with the class) otherwise."""
        try:
            return text(fn(*args, **kwargs))
        except Exception as e:
            cls = self._class(e)
            self.errors[cls] += 1
            if cls == LIBRARY_FATAL:
                raise LibraryDown(e) from e
            raise NotFound(cls, e) from e

    def _class(self, e: Exception) -> str:
        """The class of a library error; anything not the library's is raised again."""
        cls = self.session.classify(e)
        if cls is None:
            raise e
        return cls

    def failed(self, dev: Device, key: str, e: Exception) -> None:
        """Count and act on a failure of ``dev``'s call ``key`` as :meth:`__call__` does; for
        a call made outside (an error status in one entry of a batch, a call with an error
        code that means something else). Raises when device- or library-fatal."""
        cls = self._class(e)
        self.errors[cls] += 1
        tally = self._tally(dev)
        tally.asked += 1
        if cls == UNSUPPORTED:
            tally.answered += 1  # the device (or library) answered: it cannot do this
            dev.unsupported.add(key)
            level = logging.INFO if self.session.quietly_unsupported(e) else logging.DEBUG
            self.log.log(level, "GPU %s (%s): %s unavailable (%s); not asked again",
                         dev.identity.name, dev.uuid, key, e)
            return None
        if cls == TRANSIENT:
            tally.last_error = f"{key}: {' '.join(str(e).split())[:200]}"
            self.log.debug("GPU %s: %s failed (%s); will retry", dev.identity.name, key, e)
            return None
        if cls == DEVICE_FATAL:
            raise DeviceLost(f"{key}: {e}") from e
        raise LibraryDown(e) from e


