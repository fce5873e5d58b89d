"""On a machine with an NVIDIA GPU: the backend against the real NVML. Skipped elsewhere."""

from __future__ import annotations

import time

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuprobe.daemon.core import config
from gpuprobe.daemon.service.app import Daemon

pytestmark = pytest.mark.gpu


def _nvml_available() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


requires_gpu = pytest.mark.skipif(not _nvml_available(), reason="no NVIDIA GPU or driver")


def _probe_gpu0(probe: str, **request):
    """Run one probe child with the CUDA backend on GPU 0 (named by its NVML UUID); it must
    succeed."""
    import pynvml

    from gpuprobe.probes.active.child import run_child

    pynvml.nvmlInit()
    uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0))
    pynvml.nvmlShutdown()
    uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
    req = {"probe": probe, "backend": "cuda", "uuid": uuid, **request}
    out = run_child(req, {"CUDA_VISIBLE_DEVICES": uuid}, 60)
    assert out.outcome == "ok", out.detail
    return out


@requires_gpu
def test_real_gpu_reports():
    d = Daemon(config.from_mapping({}))
    try:
        d.scheduler.run_once()
        time.sleep(0.3)
        d.scheduler.run_once()
        view = d.store.view()
        devices = view.devices()
        assert devices and all(s.up for s in devices)
        for s in devices:
            if s.identity.parent_uuid is None:
                assert s.memory.total_bytes and s.memory.used_bytes is not None
                assert s.power.draw_watts is not None and s.power.draw_watts > 0
                assert s.thermal.temperatures.get("gpu") is not None
                assert s.pcie.max_generation and s.pcie.max_width
        assert view.health["nvidia"].up
        text = generate_latest(d.registry).decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert "gpuprobe_memory_used_bytes" in names
    finally:
        d.stop()


@requires_gpu
def test_real_pcie_probe():
    from gpuprobe.probes.active.specs import probe_values

    out = _probe_gpu0("pcie", size=64 * 2**20, copies=4, repetitions=3)
    v = probe_values("pcie", out.values)
    assert v["host_to_device"] > 1e9 and v["device_to_host"] > 1e9
    assert v["link_generation"] >= 1 and 0.3 < v["host_to_device_ratio"] < 1.0


@requires_gpu
def test_real_launch_probe():
    out = _probe_gpu0("launch", spin_ns=20_000, reach_bound_ns=100_000, calibrations=20)
    assert 0 < out.values["launch_latency_seconds"] < 0.1
    assert out.values["sm_reach_ratio"] > 0.5
    assert out.values["blocks"] == 2 * out.values["sm_count"]
