"""The exporter: names, units, labels, absence, caps, and the catalogue kept true."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuprobe.daemon.core.config import ExporterConfig
from gpuprobe.daemon.core.model import (
    CollectorResult,
    DeviceIdentity,
    DeviceSample,
    Memory,
    Power,
    ProcessSample,
    Thermal,
    Throttle,
)
from gpuprobe.daemon.core.state import CollectorHealth, Store
from gpuprobe.daemon.export import catalog
from gpuprobe.daemon.export.exporter import SnapshotCollector

from .conftest import ROOT

GPU0 = DeviceIdentity("GPU-aaaa", "nvidia", "0", model="NVIDIA H100 80GB HBM3",
                      pci_bus_id="00000000:18:00.0")
MIG = DeviceIdentity("MIG-bbbb", "nvidia", "0/7", parent_uuid="GPU-aaaa", partition="1g.10gb")
LOST = DeviceIdentity("GPU-cccc", "nvidia", "1")


def render(results: dict, health: dict | None = None, **cfg) -> dict:
    store = Store()
    for name, result in results.items():
        h = (health or {}).get(name, CollectorHealth(name, 5.0, up=True, runs=1,
                                                     last_success=1700000000.0,
                                                     last_duration=0.01))
        store.publish(name, result, h)
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(store, ExporterConfig(**cfg)))
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def samples(families, name):
    # The text format names a counter family without _total and shows info as a gauge.
    fam = families.get(name) or families[catalog.BY_NAME[name].family]
    return [(s.labels, s.value) for s in fam.samples if s.name == name]


def device(identity, up=True, **kw) -> DeviceSample:
    return DeviceSample(identity=identity, up=up, **kw)


def test_values_units_and_labels():
    gpu = device(GPU0, memory=Memory(total_bytes=80 * 2**30, used_bytes=2**30),
                 power=Power(draw_watts=350.5, energy_joules=1234.5),
                 thermal=Thermal(temperatures={"gpu": 51.0},
                                 thresholds={("gpu", "slowdown"): 87.0}),
                 throttle=Throttle(supported=frozenset({"power_cap", "hw_thermal"}),
                                   active=frozenset({"hw_thermal"}),
                                   seconds_total={"hw_thermal": 12.5}))
    devices = (gpu, device(MIG), device(LOST, up=False))
    fams, text = render({"nvidia": CollectorResult(devices=devices)})
    base = {"gpu": "0", "uuid": "GPU-aaaa", "vendor": "nvidia"}
    assert samples(fams, "gpuprobe_memory_used_bytes") == [(base, 2**30)]
    assert samples(fams, "gpuprobe_power_draw_watts") == [(base, 350.5)]
    assert samples(fams, "gpuprobe_energy_joules_total") == [(base, 1234.5)]
    assert fams["gpuprobe_energy_joules"].type == "counter"
    assert samples(fams, "gpuprobe_temperature_celsius") == [({**base, "sensor": "gpu"}, 51.0)]
    assert samples(fams, "gpuprobe_temperature_threshold_celsius") == [
        ({**base, "sensor": "gpu", "threshold": "slowdown"}, 87.0)]
    assert sorted(samples(fams, "gpuprobe_throttle_active"), key=str) == sorted([
        ({**base, "reason": "hw_thermal"}, 1.0), ({**base, "reason": "power_cap"}, 0.0)], key=str)
    assert samples(fams, "gpuprobe_throttle_seconds_total") == [
        ({**base, "reason": "hw_thermal"}, 12.5)]
    up = {s[0]["gpu"]: s[1] for s in samples(fams, "gpuprobe_device_up")}
    assert up == {"0": 1.0, "0/7": 1.0, "1": 0.0}
    # A MIG instance names its parent; a whole GPU has no empty parent_uuid label.
    info = {s[0]["gpu"]: s[0] for s in samples(fams, "gpuprobe_device_info")}
    assert info["0/7"]["parent_uuid"] == "GPU-aaaa"
    assert "parent_uuid" not in info["0"] and 'parent_uuid=""' not in text
    assert info["0"]["model"] == "NVIDIA H100 80GB HBM3"
    # Absent values are absent, never 0: the MIG instance and the lost GPU have no power.
    assert {s[0]["gpu"] for s in samples(fams, "gpuprobe_power_draw_watts")} == {"0"}
    assert not any(s[0]["gpu"] == "1" for s in samples(fams, "gpuprobe_memory_used_bytes"))
    assert "timestamp" not in text.lower() or "_timestamp_seconds" in text
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert len(line.rsplit(" ", 1)) == 2  # no sample timestamps


def test_processes_capped_largest_first_and_dead_pids_disappear():
    procs = tuple(ProcessSample("GPU-aaaa", pid, used_memory_bytes=pid * 2**20,
                                name=f"p{pid}", container_id="ab" * 32 if pid == 9 else None)
                  for pid in range(1, 10))
    result = CollectorResult(devices=(device(GPU0),))
    fams, _ = render({"nvidia": result,
                      "nvidia_processes": CollectorResult(processes=procs)},
                     max_processes_per_device=3)
    got = samples(fams, "gpuprobe_process_memory_used_bytes")
    assert [s[0]["pid"] for s in got] == ["9", "8", "7"]
    assert got[0][0]["container_id"] == "ab" * 32
    assert "container_id" not in got[1][0]
    assert samples(fams, "gpuprobe_device_processes")[0][1] == 9
    fams, _ = render({"nvidia": result,
                      "nvidia_processes": CollectorResult(processes=procs[:2])},
                     max_processes_per_device=3)
    assert [s[0]["pid"] for s in samples(fams, "gpuprobe_process_memory_used_bytes")] == [
        "2", "1"]


def test_xid_and_self_metrics():
    result = CollectorResult(devices=(device(GPU0),))
    events = CollectorResult(xid_counts={"GPU-aaaa": {79: 0, 31: 2}, "GPU-unknown": {13: 1}})
    health = {"nvidia_events": CollectorHealth("nvidia_events", 5.0, up=False, stalled=True,
                                               runs=3, errors_total={"timeout": 1})}
    fams, _ = render({"nvidia": result, "nvidia_events": events}, health)
    xids = {s[0]["xid"]: s[1] for s in samples(fams, "gpuprobe_xid_errors_total")}
    assert xids == {"31": 2.0, "79": 0.0}  # a device no collector reports is skipped
    stalled = dict((s[0]["collector"], s[1]) for s in samples(fams, "gpuprobe_collector_stalled"))
    assert stalled == {"nvidia": 0.0, "nvidia_events": 1.0}
    errors = {(s[0]["collector"], s[0]["class"]): s[1]
              for s in samples(fams, "gpuprobe_collector_errors_total")}
    assert errors[("nvidia_events", "timeout")] == 1.0
    # internal exists from the start (a bug's first error shows as an increase); the other
    # classes appear with their first error
    assert errors[("nvidia", "internal")] == 0.0 and ("nvidia", "library_fatal") not in errors
    assert ("nvidia_events", "transient") not in errors
    assert len(samples(fams, "gpuprobe_build_info")) == 1


def test_probe_outcomes_an_alert_counts_start_at_zero_the_others_with_their_first_run():
    from gpuprobe.daemon.core.model import ProbeSample

    result = CollectorResult(devices=(device(GPU0),), probes=(
        ProbeSample(GPU0.uuid, "pcie", runs={"ok": 3}),
        ProbeSample(GPU0.uuid, "launch", runs={"ok": 1, "skipped": 2, "discarded": 1},
                    skips={"busy": 2})))
    fams, _ = render({"pcie_probe": result})
    runs = {(s[0]["probe"], s[0]["outcome"]): s[1]
            for s in samples(fams, "gpuprobe_probe_runs_total")}
    assert runs == {("pcie", "ok"): 3.0, ("pcie", "failed"): 0.0, ("pcie", "timeout"): 0.0,
                    ("launch", "ok"): 1.0, ("launch", "failed"): 0.0,
                    ("launch", "timeout"): 0.0, ("launch", "skipped"): 2.0,
                    ("launch", "discarded"): 1.0}


def test_catalogue_follows_prometheus_naming():
    units = {"bytes": "_bytes", "celsius": "_celsius", "watts": "_watts", "joules": "_joules",
             "hertz": "_hertz", "seconds": "_seconds", "ratio": "_ratio"}
    names = [m.name for m in catalog.CATALOG]
    assert len(names) == len(set(names))
    for m in catalog.CATALOG:
        assert re.fullmatch(r"gpuprobe_[a-z0-9_]+", m.name), m.name
        assert m.help.strip(), m.name
        assert m.name.endswith("_total") == (m.type == "counter"), m.name
        assert m.name.endswith("_info") == (m.type == "info"), m.name
        if m.unit:
            assert units[m.unit] in m.family, m.name
        assert "hostname" not in m.labels and "instance" not in m.labels


def test_docs_metrics_md_is_up_to_date():
    path = ROOT / "docs" / "metrics.md"
    text = path.read_text(encoding="utf-8")
    assert catalog.render_doc(text) == text, (
        "docs/metrics.md is stale: run "
        "python -m gpuprobe.daemon.export.catalog --write docs/metrics.md")
    for m in catalog.CATALOG:
        assert f"`{m.name}`" in text
