"""The one prometheus_client collector: renders the latest published view, never a library.

Families are built fresh on every scrape from the immutable view, so concurrent scrapes
cannot race and series of vanished processes or devices cannot linger. Labels that a device
or process does not have (``parent_uuid`` on a whole GPU, ``container_id`` outside a
container) are left out rather than exported empty.
"""

from __future__ import annotations

import platform
from collections import defaultdict
from collections.abc import Iterator
from importlib import metadata

from prometheus_client.metrics_core import Metric

from gpuprobe.daemon.catalog import CATALOG, DEVICE_LABELS, MetricSpec
from gpuprobe.daemon.config import ExporterConfig
from gpuprobe.daemon.model import DeviceIdentity, LeakSample, ProbeSample, ProcessSample
from gpuprobe.daemon.state import Store

PROBE_OUTCOMES = ("ok", "skipped", "failed", "timeout", "discarded")
ERROR_CLASSES = ("unsupported", "transient", "device_fatal", "library_fatal", "timeout",
                 "internal")


def version() -> str:
    try:
        return metadata.version("gpuprobe")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _sample_name(spec: MetricSpec) -> str:
    return spec.family + {"counter": "_total", "info": "_info"}.get(spec.type, "")


def device_labels(identity: DeviceIdentity) -> dict[str, str]:
    labels = dict(zip(DEVICE_LABELS, (identity.index, identity.uuid, identity.vendor),
                      strict=True))
    if identity.parent_uuid:
        labels["parent_uuid"] = identity.parent_uuid
    return labels


def _process_labels(base: dict[str, str], pid: int, name: str | None,
                    container_id: str | None, pod_uid: str | None) -> dict[str, str]:
    labels = {**base, "pid": str(pid)}
    if name:
        labels["process_name"] = name
    if container_id:
        labels["container_id"] = container_id
    if pod_uid:
        labels["pod_uid"] = pod_uid
    return labels


class _Families:
    def __init__(self) -> None:
        self.metrics = {m.name: Metric(m.family, m.help, m.type) for m in CATALOG
                        if m.scope != "http"}
        self._names = {m.name: _sample_name(m) for m in CATALOG}

    def add(self, name: str, labels: dict[str, str], value: float) -> None:
        """Add a sample whose label values are all non-empty strings."""
        self.metrics[name].add_sample(self._names[name], labels, float(value))

    def add_optional(self, name: str, labels: dict[str, str | None], value: float) -> None:
        """Add a sample, leaving out labels without a value."""
        self.add(name, {k: str(v) for k, v in labels.items() if v is not None and v != ""},
                 value)


class SnapshotCollector:
    def __init__(self, store: Store, config: ExporterConfig) -> None:
        self.store = store
        self.config = config
        self.build = {"version": version(), "python_version": platform.python_version()}
        self._device_specs = [(m.name, m.values, m.labels) for m in CATALOG
                              if m.scope == "device" and m.values]

    @staticmethod
    def _probe(f: _Families, base: dict[str, str], ps: ProbeSample) -> None:
        v = ps.values
        if ps.probe == "pcie":
            for direction in ("host_to_device", "device_to_host"):
                if direction in v:
                    d = {**base, "direction": direction}
                    f.add("gpuprobe_probe_pcie_bandwidth_bytes_per_second", d, v[direction])
                    if f"{direction}_ratio" in v:
                        f.add("gpuprobe_probe_pcie_bandwidth_ratio", d, v[f"{direction}_ratio"])
            if "link_bytes_per_second" in v:
                f.add("gpuprobe_probe_pcie_link_bytes_per_second", base,
                      v["link_bytes_per_second"])
        else:
            if "launch_latency_seconds" in v:
                f.add("gpuprobe_probe_launch_latency_seconds", base, v["launch_latency_seconds"])
            if "sm_reach_ratio" in v:
                f.add("gpuprobe_probe_sm_reach_ratio", base, v["sm_reach_ratio"])
        p = {**base, "probe": ps.probe}
        if ps.duration_seconds is not None:
            f.add("gpuprobe_probe_duration_seconds", p, ps.duration_seconds)
        if ps.last_success is not None:
            f.add("gpuprobe_probe_last_success_timestamp_seconds", p, ps.last_success)
        for outcome in PROBE_OUTCOMES:
            f.add("gpuprobe_probe_runs_total", {**p, "outcome": outcome},
                  ps.runs.get(outcome, 0))
        for reason, n in sorted(ps.skips.items()):
            f.add("gpuprobe_probe_skips_total", {**p, "reason": reason}, n)
        f.add("gpuprobe_probe_gpu_seconds_total", p, ps.gpu_seconds_total)

    def _leak(self, f: _Families, base: dict[str, str], leak: LeakSample,
              shown: dict[tuple[str, int], dict[str, str]]) -> None:
        if leak.kind == "device":
            prefix, labels = "gpuprobe_", base
        else:
            # Processes beyond the cap have no series, unless they are suspected of leaking.
            if not self.config.process_metrics or leak.pid is None:
                return
            found = shown.get((leak.device_uuid, leak.pid))
            if found is None:
                if not leak.suspected:
                    return
                found = _process_labels(base, leak.pid, leak.name, leak.container_id,
                                        leak.pod_uid)
            prefix, labels = "gpuprobe_process_", found
        f.add(prefix + "memory_leak_suspected", labels, leak.suspected)
        # A device's rate always; a process's only while growth is seen: hosts run hundreds
        # of GPU processes, and a flat one's rate says nothing its memory series does not.
        growing = leak.growth_seconds > 0 or leak.suspected
        if leak.kind == "device" or growing:
            f.add(prefix + "memory_growth_bytes_per_second", labels,
                  leak.growth_bytes_per_second)
        if growing:
            f.add(prefix + "memory_leak_confidence_ratio", labels, leak.confidence)
            f.add(prefix + "memory_growth_duration_seconds", labels, leak.growth_seconds)
        if leak.exhaustion_seconds is not None:
            f.add(prefix + "memory_exhaustion_seconds", labels, leak.exhaustion_seconds)

    def describe(self) -> Iterator[Metric]:
        for m in CATALOG:
            if m.scope != "http":  # the HTTP server's own collector (http.py) has those
                yield Metric(m.family, m.help, m.type)

    def collect(self) -> Iterator[Metric]:
        view = self.store.view()
        f = _Families()
        devices = view.devices()
        ids = {}
        for d in devices:
            ident = d.identity
            base = device_labels(ident)
            ids[ident.uuid] = base
            f.add_optional("gpuprobe_device_info", {
                **base, "model": ident.model, "pci_bus_id": ident.pci_bus_id,
                "serial": ident.serial, "driver_version": ident.driver_version,
                "firmware_version": ident.firmware_version, "architecture": ident.architecture,
                "compute_capability": ident.compute_capability,
                "parent_uuid": ident.parent_uuid, "partition": ident.partition,
                "memory_partition": ident.memory_partition}, 1)
            for spec, values, names in self._device_specs:
                for extra, value in values(d):
                    if not extra:
                        f.add(spec, base, value)
                    elif len(extra) == 1:
                        f.add(spec, {**base, names[0]: extra[0]}, value)
                    else:
                        f.add(spec, {**base, **dict(zip(names, extra, strict=True))}, value)

        processes: dict[str, list[ProcessSample]] = defaultdict(list)
        for result in view.results.values():
            for p in result.processes:
                processes[p.device_uuid].append(p)
            for uuid, codes in result.xid_counts.items():
                if uuid in ids:
                    for code, count in sorted(codes.items()):
                        f.add("gpuprobe_xid_errors_total", {**ids[uuid], "xid": str(code)},
                              count)
            for uuid, events in result.event_counts.items():
                if uuid in ids:
                    for event, count in sorted(events.items()):
                        f.add("gpuprobe_device_events_total", {**ids[uuid], "event": event},
                              count)
        # (device uuid, pid) -> labels, for processes with per-process series
        shown: dict[tuple[str, int], dict[str, str]] = {}
        for uuid, procs in processes.items():
            if uuid not in ids:
                continue
            f.add("gpuprobe_device_processes", ids[uuid], len(procs))
            if not self.config.process_metrics:
                continue
            procs.sort(key=lambda p: (-(p.used_memory_bytes or 0), p.pid))
            for p in procs[: self.config.max_processes_per_device]:
                if p.used_memory_bytes is None:
                    continue
                labels = _process_labels(ids[uuid], p.pid, p.name, p.container_id, p.pod_uid)
                shown[(uuid, p.pid)] = labels
                f.add("gpuprobe_process_memory_used_bytes", labels, p.used_memory_bytes)
                if p.busy_ratio is not None:
                    f.add("gpuprobe_process_utilization_ratio", labels, p.busy_ratio)

        for result in view.results.values():
            for leak in result.leaks:
                if leak.device_uuid in ids:
                    self._leak(f, ids[leak.device_uuid], leak, shown)

        for result in view.results.values():
            for ps in result.probes:
                if ps.device_uuid in ids:
                    self._probe(f, ids[ps.device_uuid], ps)

        for name, h in sorted(view.health.items()):
            c = {"collector": name}
            f.add("gpuprobe_collector_up", c, h.up)
            f.add("gpuprobe_collector_stalled", c, h.stalled)
            if h.last_success is not None:
                f.add("gpuprobe_collector_last_success_timestamp_seconds", c, h.last_success)
            if h.last_duration is not None:
                f.add("gpuprobe_collector_duration_seconds", c, h.last_duration)
            for cls in ERROR_CLASSES:
                f.add("gpuprobe_collector_errors_total", {**c, "class": cls},
                      h.errors_total.get(cls, 0))

        backends = {}
        for result in view.results.values():
            for b in result.backends:
                backends[b.name] = b
        for name, b in sorted(backends.items()):
            f.add("gpuprobe_backend_up", {"backend": name}, b.up)
            f.add_optional("gpuprobe_backend_info", {
                "backend": name, "library_version": b.library_version,
                "driver_version": b.driver_version, "binding_version": b.binding_version}, 1)
            if b.version_mismatch is not None:
                f.add("gpuprobe_backend_version_mismatch", {"backend": name},
                      b.version_mismatch)
        f.add("gpuprobe_build_info", self.build, 1)
        yield from (m for m in f.metrics.values() if m.samples)
