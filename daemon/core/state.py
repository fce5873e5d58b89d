"""The latest result and health of every collector, swapped atomically.

Collector threads publish; the exporter, the HTTP health endpoints and the CLI read a
consistent :class:`View`. Nothing here calls a vendor library.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from gpuprobe.daemon.core.model import (
    BackendStatus,
    CollectorResult,
    DeviceSample,
    LeakSample,
    ProbeSample,
    ProcessSample,
)


@dataclass(frozen=True)
class CollectorHealth:
    name: str
    interval: float
    up: bool = False
    stalled: bool = False
    runs: int = 0
    last_success: float | None = None  # wall-clock seconds
    last_duration: float | None = None
    errors_total: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class View:
    results: Mapping[str, CollectorResult] = field(default_factory=dict)
    health: Mapping[str, CollectorHealth] = field(default_factory=dict)

    def devices(self, supplemented: bool = True) -> list[DeviceSample]:
        """Every device of every collector (in ``DeviceIdentity.order``), with devices of a
        stalled collector marked down, and (unless not ``supplemented``) what a device's
        sample lacks filled from other collectors' supplements of it (those of a stalled
        collector left out)."""
        out = []
        extra: dict[str, list[DeviceSample]] = {}
        for name, result in self.results.items():
            health = self.health.get(name, None)
            stalled = health is not None and health.stalled
            for d in result.devices:
                if stalled and d.up:
                    d = DeviceSample(identity=d.identity, up=False, down_reason="stalled")
                out.append(d)
            if supplemented and not stalled:
                for s in result.supplements:
                    extra.setdefault(s.identity.uuid, []).append(s)
        if extra:
            for i, d in enumerate(out):
                for s in extra.get(d.identity.uuid, ()) if d.up else ():
                    d = fill(d, s)
                out[i] = d
        return sorted(out, key=lambda d: d.identity.order)

    # What every collector's result holds, gathered in the order the collectors published.
    def processes(self) -> list[ProcessSample]:
        return [p for r in self.results.values() for p in r.processes]

    def xid_counts(self) -> list[tuple[str, Mapping[int, int]]]:
        """(device uuid, {xid code: count}) pairs."""
        return [item for r in self.results.values() for item in r.xid_counts.items()]

    def event_counts(self) -> list[tuple[str, Mapping[str, int]]]:
        """(device uuid, {event: count}) pairs."""
        return [item for r in self.results.values() for item in r.event_counts.items()]

    def backends(self) -> dict[str, BackendStatus]:
        """Each backend's latest status, by name."""
        return {b.name: b for r in self.results.values() for b in r.backends}

    def probes(self) -> list[ProbeSample]:
        return [p for r in self.results.values() for p in r.probes]

    def leaks(self) -> list[LeakSample]:
        return [leak for r in self.results.values() for leak in r.leaks]


R = TypeVar("R")
_KEPT = frozenset({"identity", "up", "down_reason"})


def fill(record: R, supplement: R) -> R:
    """``record`` with each of its absent readings (None, or an empty mapping or set) taken
    from ``supplement``, record by record (a device's pcie, throttle, ...); who the device is
    and whether it is up stay the record's."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        if f.name in _KEPT:
            continue
        mine, theirs = getattr(record, f.name), getattr(supplement, f.name)
        if dataclasses.is_dataclass(mine):
            merged = fill(mine, theirs)
            if merged is not mine:
                changes[f.name] = merged
        elif (mine is None or (isinstance(mine, Mapping | frozenset) and not mine)) and theirs:
            changes[f.name] = theirs
    return dataclasses.replace(record, **changes) if changes else record  # type: ignore


class Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._view = View()
        self._listeners: list[Callable[[], None]] = []

    def view(self) -> View:
        return self._view

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every publish, on the publishing thread; it must return
        at once (the exposition only notes that there is a new view to encode)."""
        self._listeners.append(listener)

    def publish(self, name: str, result: CollectorResult | None, health: CollectorHealth) -> None:
        with self._lock:
            results = dict(self._view.results)
            if result is not None:
                results[name] = result
            healths = dict(self._view.health)
            healths[name] = health
            self._view = View(MappingProxyType(results), MappingProxyType(healths))
        for listener in self._listeners:
            listener()
