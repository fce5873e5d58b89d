"""The active probe kinds, vendor-neutral: each one's name, collector and metrics.

What the daemon's other layers need to know of a probe kind lives here, below them all: the
config check (which collectors run probes), the CLI (which kinds there are) and the metric
catalogue (the metrics a kind's values become). How a kind is run (its child request, how
its result is shaped into values, what the CLI prints) is its spec in
``probes/active/specs.py``. A new probe kind is an entry here, a spec and a kernel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeMetric:
    """One gauge from a probe kind's values (``ProbeSample.values``).

    ``key`` names the value; with ``label``, it is a template (``{label}_ratio``) filled in
    with each of ``label_values``, one series each, labelled ``label=value``. An absent
    value yields no series."""

    name: str
    help: str
    unit: str
    nvidia: str
    amd: str
    key: str
    label: str | None = None
    label_values: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        return () if self.label is None else (self.label,)

    def series(self, values: Mapping[str, float]) -> Iterable[tuple[dict[str, str], float]]:
        if self.label is None:
            if self.key in values:
                yield {}, values[self.key]
            return
        for v in self.label_values:
            key = self.key.format(**{self.label: v})
            if key in values:
                yield {self.label: v}, values[key]


@dataclass(frozen=True)
class ProbeKind:
    name: str  # as in ProbeSample.probe, the config's probes.<name> and `gpuprobe probe`
    collector: str  # its collector, in daemon/core/collectors.py
    summary: str  # what it measures, for the CLI's help
    metrics: tuple[ProbeMetric, ...]


DIRECTIONS = ("host_to_device", "device_to_host")

PCIE = ProbeKind("pcie", "pcie_probe", "host-device bandwidth", (
    ProbeMetric(
        "gpuprobe_probe_pcie_bandwidth_bytes_per_second",
        "Bandwidth the last successful PCIe probe measured, per direction (a cached "
        "measurement, refreshed every probes.pcie.every; not a poll).", "bytes",
        "probe child: pinned host memory, cuMemcpyHtoDAsync_v2 / cuMemcpyDtoHAsync_v2 timed "
        "with events, median of repetitions",
        "probe child: hipHostMalloc, hipMemcpyHtoDAsync / hipMemcpyDtoHAsync timed with events",
        "{direction}", "direction", DIRECTIONS),
    ProbeMetric(
        "gpuprobe_probe_pcie_link_bytes_per_second",
        "Theoretical per-direction rate of the link as trained during the last PCIe probe "
        "(generation and width, after line encoding; Gen5 x16 is 63 GB/s). Cached.", "bytes",
        "nvmlDeviceGetCurrPcieLinkGeneration/Width read by the probe child while "
        "its copies run", "the device's last reported link (amdsmi)",
        "link_bytes_per_second"),
    ProbeMetric(
        "gpuprobe_probe_pcie_bandwidth_ratio",
        "Measured bandwidth over the trained link's theoretical rate, per direction; about "
        "0.85-0.9 is normal (packet overhead). Cached.", "ratio",
        "the two metrics above", "the two metrics above",
        "{direction}_ratio", "direction", DIRECTIONS),
))

LAUNCH = ProbeKind("launch", "launch_probe", "kernel launch latency", (
    ProbeMetric(
        "gpuprobe_probe_launch_latency_seconds",
        "Time from a kernel launch to its first block starting, from the last launch probe "
        "(cached). Microseconds on an idle GPU; a time-sliced GPU makes work wait longer.",
        "seconds", "probe child: PTX kernel reading %globaltimer, related to the host "
        "clock by minimum-round-trip calibration", "probe child: hipRTC kernel reading "
        "wall_clock64(), rate calibrated against the host clock",
        "launch_latency_seconds"),
    ProbeMetric(
        "gpuprobe_probe_sm_reach_ratio",
        "Share of the SMs (compute units) that the launch probe's blocks reached within "
        "probes.launch.reach_bound of the first block (cached).", "ratio",
        "%smid of each block of 2 x SM-count one-warp blocks", "__smid() of each block",
        "sm_reach_ratio"),
))

PROBE_KINDS: tuple[ProbeKind, ...] = (PCIE, LAUNCH)
BY_NAME: dict[str, ProbeKind] = {k.name: k for k in PROBE_KINDS}
