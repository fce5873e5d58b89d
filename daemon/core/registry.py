"""Collectors registered by name, as node_exporter's collectors are.

A collector is one file under ``probes/`` whose class has a ``name`` and a
``collect(deadline) -> CollectorResult`` method, and registers itself here under its name in
daemon/core/collectors.py, which holds its module and default schedule. The config enables,
disables and re-times collectors by these names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gpuprobe.daemon.core.collectors import BUILTIN

if TYPE_CHECKING:
    from gpuprobe.daemon.core.context import Context
    from gpuprobe.daemon.core.model import CollectorResult


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


def register(name: str) -> Callable[[Callable[[Context], Collector]],
                                    Callable[[Context], Collector]]:
    """Class decorator: the collector ``name`` of daemon/core/collectors.py, whose table holds
    its module and default schedule."""
    builtin = BUILTIN.get(name)
    if builtin is None:
        raise ValueError(f"collector {name!r} is not in daemon/core/collectors.py's table")

    def wrap(factory: Callable[[Context], Collector]) -> Callable[[Context], Collector]:
        if name in COLLECTORS and COLLECTORS[name].factory is not factory:
            raise ValueError(f"collector {name!r} registered twice")
        COLLECTORS[name] = CollectorInfo(name, factory, builtin.interval, builtin.timeout,
                                         builtin.enabled, builtin.description)
        return factory

    return wrap


def load_builtin(names: Iterable[str] | None = None) -> dict[str, CollectorInfo]:
    """The built-in collectors ``names`` (all by default), in the table's order, importing
    only their modules: a disabled backend is never imported."""
    wanted = [n for n in BUILTIN if names is None or n in set(names)]
    for n in wanted:
        importlib.import_module(BUILTIN[n].module)
    missing = [n for n in wanted if n not in COLLECTORS]
    if missing:
        raise RuntimeError(f"collectors {missing} did not register")  # a bug in gpuprobe
    return {n: COLLECTORS[n] for n in wanted}
