"""Collectors registered by name, as node_exporter's collectors are.

A collector is one file under ``probes/`` whose class has a ``name`` and a
``collect(deadline) -> CollectorResult`` method, and registers itself here with its default
schedule. The config enables, disables and re-times collectors by these names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gpuprobe.daemon.context import Context
    from gpuprobe.daemon.model import CollectorResult


class Collector(Protocol):
    name: str

    def collect(self, deadline: float) -> CollectorResult:
        """Read the source once. ``deadline`` is a ``time.monotonic()`` value to finish by."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CollectorInfo:
    name: str
    factory: Callable[[Context], Collector]
    interval: float
    timeout: float
    enabled: bool
    description: str


COLLECTORS: dict[str, CollectorInfo] = {}

# Modules whose import registers the built-in collectors.
BUILTIN_MODULES = (
    "gpuprobe.probes.nvidia.telemetry",
    "gpuprobe.probes.nvidia.processes",
    "gpuprobe.probes.nvidia.events",
    "gpuprobe.probes.amd.telemetry",
    "gpuprobe.probes.amd.processes",
    "gpuprobe.probes.amd.slow",
    "gpuprobe.probes.amd.events",
    "gpuprobe.probes.pcie_probe",
    "gpuprobe.probes.launch_probe",
    "gpuprobe.probes.memory_leaks",
)


def register(
    name: str, *, interval: float, timeout: float, enabled: bool = True, description: str
) -> Callable[[Callable[[Context], Collector]], Callable[[Context], Collector]]:
    """Class decorator: make a collector known under ``name`` with its default schedule."""

    def wrap(factory: Callable[[Context], Collector]) -> Callable[[Context], Collector]:
        if name in COLLECTORS and COLLECTORS[name].factory is not factory:
            raise ValueError(f"collector {name!r} registered twice")
        COLLECTORS[name] = CollectorInfo(name, factory, interval, timeout, enabled, description)
        return factory

    return wrap


def load_builtin() -> dict[str, CollectorInfo]:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return COLLECTORS
