"""What both vendor backends share (probes/backend/): device backoff across flaps."""

from __future__ import annotations

import logging
import time

import pynvml
import pytest

from gpuprobe.daemon.core.model import DeviceIdentity
from gpuprobe.daemon.core.workers import Worker
from gpuprobe.probes.backend import DEVICE_RETRY_MAX, Device, found_again, lose

from .conftest import make_daemon
from .test_amd_backend import AMD_FAST, AMD_SCENARIO

GPU_LOG = "gpuprobe.nvidia"


def _device() -> Device:
    return Device("GPU-x", None, DeviceIdentity("GPU-x", "nvidia", "3"), Worker("test"),
                  backoff=1.0)


def test_a_flapping_device_backs_off_and_logs_once_per_step(caplog) -> None:
    """Issue 11, defect 9: lose() reset the backoff, so a GPU lost again as soon as it was
    found was looked up on every poll with two log lines each time. Across flaps the wait
    doubles up to the cap; each step is logged at most once; it starts afresh only after
    the device has stayed up for the settle period (the cap)."""
    dev = _device()
    t = 1000.0
    waits = []
    with caplog.at_level(logging.INFO, logger=GPU_LOG):
        for _ in range(12):
            lose(dev, "GPU is lost", 1.0, 300.0, now=t)
            waits.append(dev.retry_at - t)
            t = dev.retry_at
            found_again(dev, now=t)
            t += 5.0  # lost again at the next poll
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60]
    downs = [r for r in caplog.records if "is down" in r.getMessage()]
    backs = [r for r in caplog.records if "found again" in r.getMessage()]
    assert len(downs) == len(backs) == 7  # one per step: 1 ... 32 and the cap
    assert "not logged again while it keeps flapping" in downs[-1].getMessage()

    # Up for less than the settle period: still flapping, still at the cap, quiet.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=GPU_LOG):
        t += DEVICE_RETRY_MAX - 10
        lose(dev, "GPU is lost", 1.0, 300.0, now=t)
        assert dev.retry_at - t == 60
        t = dev.retry_at
        found_again(dev, now=t)
    assert caplog.records == []

    # Up for the settle period: the next loss is a new episode, logged, with a short wait.
    with caplog.at_level(logging.INFO, logger=GPU_LOG):
        t += DEVICE_RETRY_MAX
        lose(dev, "GPU is lost", 1.0, 300.0, now=t)
    assert dev.retry_at - t == 1
    assert [r.getMessage() for r in caplog.records] == ["GPU 3 (GPU-x) is down: GPU is lost"]


def test_failed_lookups_double_the_wait_without_logging(caplog) -> None:
    dev = _device()
    with caplog.at_level(logging.INFO, logger=GPU_LOG):
        lose(dev, "gone", 1.0, 10.0, now=0.0)
        for t in (1.0, 3.0, 7.0, 15.0):  # each look-up fails again
            lose(dev, "gone", 1.0, 10.0, now=t)
    assert dev.retry_at == 25.0  # waits 1, 2, 4, 8, then the cap (retry_max) 10
    assert len(caplog.records) == 1


def _cycles(d, n: int) -> None:
    for _ in range(n):
        d.scheduler.run_once()
        time.sleep(0.02)


@pytest.mark.parametrize("vendor", ["nvidia", "amd"])
def test_a_gpu_that_flaps_in_the_daemon_is_not_refound_every_poll(vendor, caplog) -> None:
    """A GPU whose look-up answers but whose poll then finds it lost (a flap on every poll
    with the old backoff reset): over 40 polls it is looked at a handful of times, and
    logged at most once per backoff step. The other GPUs carry on."""
    retry = {"retry_initial": "10ms", "retry_max": "10s", "discovery_interval": "1h"}
    if vendor == "nvidia":
        d = make_daemon(config={"nvidia": retry})
        face, fn, target, code = d.simulation.libnvml, "nvmlDeviceGetPowerUsage", 1, \
            pynvml.NVML_ERROR_GPU_IS_LOST
    else:
        d = make_daemon(AMD_SCENARIO, {**AMD_FAST, "amd": {**AMD_FAST["amd"], **retry}})
        face, fn, target, code = d.simulation.amdsmi, "amdsmi_get_power_info", 1, 31
        face.violation_latency = face.throughput_latency = 0.01
    try:
        _cycles(d, 2)
        face.faults.add(fn, target, error=code)
        with caplog.at_level(logging.INFO, logger="gpuprobe"):
            _cycles(d, 40)
        looks = face.calls_by_device[(fn, target)]
        said = [r.getMessage() for r in caplog.records
                if r.name == f"gpuprobe.{vendor}" and ("is down" in r.getMessage()
                                                       or "again" in r.getMessage())]
        # 40 polls within at most a few seconds: waits of 10, 20, 40, ... ms allow about
        # log2(elapsed / 10 ms) looks; the old code looked (and logged twice) every poll
        # (on AMD every second poll, the look being a rediscovery).
        assert looks <= 12, looks
        assert len(said) <= 2 * 11, said
        others = [s for s in d.store.view().devices()
                  if s.identity.vendor != vendor or s.identity.index.split("/")[0]
                  != str(target)]
        assert others and all(s.up for s in others)
    finally:
        d.stop()
