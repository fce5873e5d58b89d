"""What a probe kind is to the daemon: :class:`ProbeSpec`.

A spec names its kind (``daemon/core/probekinds.py``: name, collector, metrics), its config
section (``probes.<name>``), builds the child's request from that section, shapes the
child's result into the values its metrics read, and says what ``gpuprobe probe <name>``
prints. The orchestrator, the collector and the CLI look a kind up here instead of asking
which kind it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from gpuprobe.daemon.core.config import ProbesConfig
from gpuprobe.daemon.core.probekinds import ProbeKind


class ProbeSection(Protocol):
    """A probe kind's config section (``probes.pcie``, ``probes.launch``)."""

    @property
    def every(self) -> float: ...


S = TypeVar("S", bound=ProbeSection)


@dataclass(frozen=True)
class ProbeSpec(Generic[S]):
    kind: ProbeKind
    section: Callable[[ProbesConfig], S]  # its config section
    request: Callable[[S], dict[str, Any]]  # the child request's fields for this kind
    values: Callable[[Mapping[str, Any]], dict[str, float]]  # a child's result, shaped
    header: tuple[str, ...]  # `gpuprobe probe`'s table: the columns after GPU, MODEL, OUTCOME
    row: Callable[[Mapping[str, Any], float], list[str]]  # (result, GPU seconds) -> columns

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def collector(self) -> str:
        return self.kind.collector

    def every(self, cfg: ProbesConfig) -> float:
        return self.section(cfg).every

    def child_request(self, cfg: ProbesConfig) -> dict[str, Any]:
        return self.request(self.section(cfg))
