"""The snapshot's view: supplements fill what a device's own sample lacks, nothing more."""

from __future__ import annotations

from gpuprobe.daemon.core.model import (
    CollectorResult,
    DeviceIdentity,
    DeviceSample,
    Pcie,
    Throttle,
)
from gpuprobe.daemon.core.state import CollectorHealth, Store

GPU = DeviceIdentity(uuid="GPU-1", vendor="amd", index="0")


def publish(store: Store, name: str, result: CollectorResult, stalled: bool = False) -> None:
    store.publish(name, result, CollectorHealth(name, 5.0, up=True, stalled=stalled))


def slow(throttle: Throttle | None = None) -> CollectorResult:
    return CollectorResult(supplements=(DeviceSample(
        GPU, up=True, pcie=Pcie(sampled_bytes_per_second={"rx": 5.0}),
        throttle=throttle or Throttle()),))


def test_a_supplement_fills_only_the_absent_readings():
    store = Store()
    own = DeviceSample(GPU, up=True, pcie=Pcie(generation=4, width=16),
                       throttle=Throttle(seconds_total={"power_cap": 2.0}))
    publish(store, "amd", CollectorResult(devices=(own,)))
    publish(store, "amd_slow", slow(Throttle(supported=frozenset({"sw_thermal"}),
                                             active=frozenset({"sw_thermal"}),
                                             seconds_total={"sw_thermal": 9.0})))
    (d,) = store.view().devices()
    assert d.pcie.generation == 4 and d.pcie.width == 16
    assert d.pcie.sampled_bytes_per_second == {"rx": 5.0}
    assert d.throttle.supported == {"sw_thermal"} and d.throttle.active == {"sw_thermal"}
    assert d.throttle.seconds_total == {"power_cap": 2.0}  # the device's own reading stays
    assert store.view().devices(supplemented=False) == [own]


def test_supplements_of_a_down_device_or_from_a_stalled_collector_are_left_out():
    store = Store()
    publish(store, "amd", CollectorResult(devices=(DeviceSample(GPU, up=False,
                                                                down_reason="lost"),)))
    publish(store, "amd_slow", slow())
    assert store.view().devices()[0].pcie == Pcie()
    publish(store, "amd", CollectorResult(devices=(DeviceSample(GPU, up=True),)))
    publish(store, "amd_slow", slow(), stalled=True)
    (d,) = store.view().devices()
    assert d.up and d.pcie == Pcie()


def test_a_supplement_without_its_device_adds_no_device():
    store = Store()
    publish(store, "amd_slow", slow())
    assert store.view().devices() == []


def test_every_publish_tells_the_subscribers_after_the_view_is_swapped():
    store = Store()
    seen: list[tuple[str, ...]] = []
    store.subscribe(lambda: seen.append(tuple(store.view().health)))
    store.publish("a", None, CollectorHealth("a", 1.0))
    store.publish("b", None, CollectorHealth("b", 1.0))
    assert seen == [("a",), ("a", "b")]
