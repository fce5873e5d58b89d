"""The latest result and health of every collector, swapped atomically.

Collector threads publish; the exporter, the HTTP health endpoints and the CLI read a
consistent :class:`View`. Nothing here calls a vendor library.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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

    def devices(self) -> list[DeviceSample]:
        """Every device of every collector, with devices of a stalled collector marked down."""
        out = []
        for name, result in self.results.items():
            health = self.health.get(name, None)
            stalled = health is not None and health.stalled
            for d in result.devices:
                if stalled and d.up:
                    d = DeviceSample(identity=d.identity, up=False, down_reason="stalled")
                out.append(d)
        return out

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


class Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._view = View()

    def view(self) -> View:
        return self._view

    def publish(self, name: str, result: CollectorResult | None, health: CollectorHealth) -> None:
        with self._lock:
            results = dict(self._view.results)
            if result is not None:
                results[name] = result
            healths = dict(self._view.health)
            healths[name] = health
            self._view = View(MappingProxyType(results), MappingProxyType(healths))
