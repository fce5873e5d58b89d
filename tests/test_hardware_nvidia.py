"""Issue 16's NVIDIA families through the real pynvml binding over the simulated library:
power limit bounds, fans, the policy throttle counters, PCIe error kinds, reset and recovery
state, and NVLink state, traffic and errors, each absent where the board has no source."""

from __future__ import annotations

import time

from .conftest import make_daemon, wait_for
from .test_nvidia_backend import _metric

PROC = {"pid": 4100, "name": "trainer", "utilization": 0.8,
        "memory": {"pattern": "constant", "size": "4GiB"}}


def _run(d, cycles: int = 3, step: float = 60.0) -> None:
    for _ in range(cycles):
        d.scheduler.run_once()
        time.sleep(0.12)
        d.simulation.world.clock.advance(step)


def _by(samples: dict, **labels: str) -> dict:
    return {k: v for k, v in samples.items() if all((n, w) in k for n, w in labels.items())}


def test_power_limit_bounds_fans_and_policy_counters():
    d = make_daemon({"seed": 4, "devices": [
        {"vendor": "nvidia", "power": {"max": 450, "limit": 300, "min": 150, "default": 450},
         "fans": 2, "processes": [PROC]},
        {"vendor": "nvidia"},  # a data-centre board: no fans, idle
    ]})
    try:
        _run(d)
        assert set(_metric(d, "gpuprobe_power_limit_min_watts").values()) == {150.0, 280.0}
        assert set(_metric(d, "gpuprobe_power_limit_max_watts").values()) == {450.0, 700.0}
        assert set(_metric(d, "gpuprobe_power_limit_default_watts").values()) == {450.0, 700.0}
        fans = _metric(d, "gpuprobe_fan_speed_ratio")
        assert {dict(k)["gpu"] for k in fans} == {"0"}  # none on the passive board
        assert sorted(dict(k)["fan"] for k in fans) == ["0", "1"]
        assert all(0.2 < v <= 1.5 for v in fans.values())
        low = _by(_metric(d, "gpuprobe_throttle_seconds_total"), reason="low_utilization")
        idle = {dict(k)["gpu"]: v for k, v in low.items()}
        assert idle["1"] >= 100 and idle["0"] == 0  # the idle GPU counts ~2 minutes
    finally:
        d.stop()


def test_pcie_error_kinds_and_rollovers():
    d = make_daemon({"seed": 4, "devices": [
        {"vendor": "nvidia", "pcie": {"replays_per_minute": 60}, "processes": [PROC]}]})
    try:
        _run(d)
        errors = {dict(k)["kind"]: v for k, v in _metric(d, "gpuprobe_pcie_errors_total").items()}
        assert set(errors) == {"correctable", "receiver_error", "bad_tlp", "bad_dllp",
                               "non_fatal", "fatal", "unsupported_request", "lcrc", "lane"}
        assert errors["correctable"] > 0 and errors["fatal"] == 0
        assert list(_metric(d, "gpuprobe_pcie_replay_rollovers_total").values()) == [0.0]
    finally:
        d.stop()


def test_a_gpu_that_needs_a_reset_says_so_and_then_does_not():
    d = make_daemon({"seed": 4, "duration": "1h", "devices": [
        {"vendor": "nvidia", "events": [{"at": "2m", "kind": "reset_required",
                                         "duration": "3m"}]},
        {"vendor": "nvidia"}]})
    try:
        _run(d, cycles=1, step=120.0)  # t = 1 min: no reset needed yet
        assert set(_metric(d, "gpuprobe_reset_required").values()) == {0.0}
        assert {dict(k)["action"] for k in _metric(d, "gpuprobe_recovery_action")} == {"none"}
        _run(d, cycles=1)  # t = 3 min
        actions = {dict(k)["gpu"]: dict(k)["action"]
                   for k in _metric(d, "gpuprobe_recovery_action")}
        assert actions == {"0": "gpu_reset", "1": "none"}
        reset = {dict(k)["gpu"]: v for k, v in _metric(d, "gpuprobe_reset_required").items()}
        assert reset == {"0": 1.0, "1": 0.0}
        assert set(_metric(d, "gpuprobe_drain_recommended").values()) == {0.0}
        _run(d, cycles=1, step=240.0)  # t = 4 min, then 8 min: over
        _run(d, cycles=1)
        assert set(_metric(d, "gpuprobe_reset_required").values()) == {0.0}
    finally:
        d.stop()


def test_nvlink_state_traffic_and_errors():
    d = make_daemon({"seed": 4, "duration": "2h", "devices": [
        {"vendor": "nvidia", "architecture": "hopper", "processes": [PROC], "events": [
            {"at": "2m", "kind": "link_down", "link": 3, "duration": "30m"},
            {"at": "2m", "kind": "link_errors", "link": 5, "error": "replay", "count": 40},
            {"at": "2m", "kind": "link_errors", "link": 5, "error": "recovery", "count": 2}]},
        {"vendor": "nvidia", "architecture": "ampere"},  # 12 links, idle
        {"vendor": "nvidia", "architecture": "ada"},  # no NVLink
    ]})
    try:
        _run(d, cycles=1)
        links = {dict(k)["gpu"]: (dict(k)["type"], v)
                 for k, v in _metric(d, "gpuprobe_interconnect_links").items()}
        assert links == {"0": ("nvlink", 18.0), "1": ("nvlink", 12.0)}  # absent on the Ada
        assert {dict(k)["gpu"]: v for k, v in
                _metric(d, "gpuprobe_interconnect_version").items()} == {"0": 4.0, "1": 3.0}
        tx0 = _by(_metric(d, "gpuprobe_link_transmit_bytes_total"), gpu="0")
        _run(d, cycles=2)  # t = 3 min: link 3 down, link 5's errors counted
        up = {dict(k)["link"]: v for k, v in
              _by(_metric(d, "gpuprobe_link_up"), gpu="0").items()}
        assert len(up) == 18 and up["3"] == 0.0 and sum(up.values()) == 17
        assert list(_by(_metric(d, "gpuprobe_interconnect_links_up"), gpu="0").values()) == [17]
        errors = {(dict(k)["link"], dict(k)["kind"]): v for k, v in
                  _by(_metric(d, "gpuprobe_link_errors_total"), gpu="0").items()}
        assert errors[("5", "replay")] == 40 and errors[("5", "recovery")] == 2
        assert errors[("4", "replay")] == 0 and errors[("5", "crc")] == 0
        totals = {dict(k)["kind"]: v for k, v in
                  _by(_metric(d, "gpuprobe_interconnect_errors_total"), gpu="0").items()}
        assert totals == {"crc": 0, "replay": 40, "recovery": 2}
        tx1 = _by(_metric(d, "gpuprobe_link_transmit_bytes_total"), gpu="0")
        grown = {dict(k)["link"]: tx1[k] - tx0[k] for k in tx0}
        # busy: 0.8 x 25% of 25 GB/s for 2 min, about 600 GB per link; the down link, less
        assert all(5e11 < g < 8e11 for link, g in grown.items() if link != "3"), grown
        assert grown["3"] < min(g for link, g in grown.items() if link != "3")
        idle = _by(_metric(d, "gpuprobe_interconnect_transmit_bytes_total"), gpu="1")
        assert list(idle.values()) == [0.0]  # an idle GPU sends nothing, but has the counter
    finally:
        d.stop()


def test_the_per_link_families_go_with_exporter_link_metrics_off():
    d = make_daemon({"seed": 4, "devices": [{"vendor": "nvidia", "processes": [PROC]}]},
                    config={"exporter": {"link_metrics": False}})
    try:
        _run(d, cycles=1)
        assert not _metric(d, "gpuprobe_link_up")
        assert not _metric(d, "gpuprobe_link_transmit_bytes_total")
        assert list(_metric(d, "gpuprobe_interconnect_links_up").values()) == [18.0]
        assert _metric(d, "gpuprobe_interconnect_transmit_bytes_total")
    finally:
        d.stop()


def _busy(d) -> dict[int, float | None]:
    return {p.pid: p.busy_ratio for p in d.store.view().processes()}


def test_process_busy_ratio_from_the_newer_call_then_the_older():
    """Each process's SM share of the driver's latest sample period; a listed process the
    driver has no sample of was idle (0); on a driver without the newer call, the older
    one; a MIG instance cannot tell (absent)."""
    idle = {"pid": 4200, "name": "idle", "utilization": 0.0,
            "memory": {"pattern": "constant", "size": "1GiB"}}
    d = make_daemon({"seed": 4, "devices": [
        {"vendor": "nvidia", "processes": [PROC, dict(PROC, pid=4101, utilization=0.4), idle]},
        {"vendor": "nvidia", "architecture": "ampere",
         "instances": [{"profile": "3g.40gb", "memory": "40GiB"}],
         "processes": [dict(PROC, pid=4300, instance=0)]},
    ]})
    try:
        _run(d, cycles=2)
        busy = _busy(d)
        # 0.8 and 0.4 ask 1.2 of the SMs: the driver shares them out, 67% and 33%
        assert busy[4100] == 0.67 and busy[4101] == 0.33 and busy[4200] == 0.0
        assert busy[4300] is None
        ratio = {dict(k)["pid"]: v
                 for k, v in _metric(d, "gpuprobe_process_utilization_ratio").items()}
        assert ratio == {"4100": 0.67, "4101": 0.33, "4200": 0.0}
        # the older call only where the newer one is unsupported: on the MIG instance
        calls = d.simulation.libnvml.calls_by_device
        assert calls[("nvmlDeviceGetProcessUtilization", 0)] == 0
        assert calls[("nvmlDeviceGetProcessUtilization", 1)] == 1
    finally:
        d.stop()
    d = make_daemon({"seed": 4, "devices": [{"vendor": "nvidia", "processes": [PROC]}]})
    try:
        # FUNCTION_NOT_FOUND: a driver older than the call
        d.simulation.libnvml.faults.add("nvmlDeviceGetProcessesUtilizationInfo", error=13)
        _run(d, cycles=2)
        assert _busy(d) == {4100: 0.8}
        before = d.simulation.libnvml.calls["nvmlDeviceGetProcessesUtilizationInfo"]
        _run(d, cycles=2)
        assert d.simulation.libnvml.calls["nvmlDeviceGetProcessesUtilizationInfo"] == before
        assert d.simulation.libnvml.calls["nvmlDeviceGetProcessUtilization"] >= 2
    finally:
        d.stop()


def test_no_newer_sample_reads_idle_and_a_failure_reads_absent():
    """The driver's NOT_FOUND (no sample since the last seen) is an answer: the processes
    were idle. A transient failure is not: their ratio is absent that poll, and comes back."""
    d = make_daemon({"seed": 4, "devices": [{"vendor": "nvidia", "processes": [PROC]}]})
    try:
        _run(d, cycles=1)
        d.scheduler.run_once()
        assert _busy(d) == {4100: 0.8}
        d.scheduler.run_once()  # the same instant: no newer sample
        assert _busy(d) == {4100: 0.0}
        d.simulation.libnvml.faults.add("nvmlDeviceGetProcessesUtilizationInfo",
                                        error=999, times=1)  # NVML_ERROR_UNKNOWN
        d.simulation.world.clock.advance(60)
        d.scheduler.run_once()
        assert _busy(d) == {4100: None}
        _run(d, cycles=1)
        assert _busy(d) == {4100: 0.8}
    finally:
        d.stop()


def test_recovery_action_and_unavailable_events_counted_from_zero():
    """The event set carries nvmlEventTypeGpuRecoveryAction and ...GpuUnavailableError
    beside XIDs where the GPU supports them: each kind starts at 0 on a registered GPU and
    counts its events; a GPU without event support has none."""
    d = make_daemon({"seed": 4, "duration": "1h", "devices": [
        {"vendor": "nvidia", "events": [{"at": "2m", "kind": "reset_required",
                                         "duration": "3m"}]},
        {"vendor": "nvidia", "events": [{"at": "2m", "kind": "fall_off_bus",
                                         "duration": "1m"}]},
        {"vendor": "nvidia", "unsupported": ["xid_events"]}]})

    def counts() -> dict[tuple[str, str], float]:
        return {(dict(k)["gpu"], dict(k)["event"]): v
                for k, v in _metric(d, "gpuprobe_device_events_total").items()}
    try:
        wait_for(lambda: (d.scheduler.run_once(), counts())[1], timeout=5)
        assert counts() == {(g, e): 0.0 for g in ("0", "1")
                            for e in ("unavailable", "recovery_action")}
        d.simulation.world.clock.advance(120.0)
        # the event thread takes both before a poll finds GPU 1 gone
        watcher = d.sources.xid_watcher()
        uuids = {s.identity.index: s.identity.uuid for s in d.store.view().devices()}
        wait_for(lambda: watcher.event_counts()[uuids["1"]]["unavailable"] == 1, timeout=5)
        d.scheduler.run_once()
        c = counts()
        assert c[("0", "recovery_action")] == 1 and c[("1", "unavailable")] == 1
        assert c[("0", "unavailable")] == 0 and c[("1", "recovery_action")] == 0
        assert not any(g == "2" for g, _ in c)
    finally:
        d.stop()
