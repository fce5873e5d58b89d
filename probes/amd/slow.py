"""The ``amd_slow`` collector: amdsmi calls that block by design, on their own schedule.

``amdsmi_get_gpu_pci_throughput`` reads sysfs ``pcie_bw``, which sleeps a second in the
driver; ``amdsmi_get_violation_status`` samples the firmware twice at least 100 ms apart.
Made from the telemetry poll they would hold every GPU's poll up by that much, so they run
here, every minute by default, each GPU in a lane of its own through the backends'
``run_on_devices`` (its telemetry lane is not held; the relay gives each slow GPU a thread
of its own within 50 ms per GPU, daemon/core/relay.py). Their figures are published as
supplements of the ``amd`` collector's samples, which the snapshot fills in with them
(daemon/core/state.py), for up to ``SLOW_MAX_AGE`` intervals after they were read. Violation
status is only asked where the published sample has no throttle time (gpu_metrics' residency
accumulators carry the same information for free), and its reasons are only published where
the sample has no reasons of its own (the raw throttle mask, where the binding can read it,
comes first).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from gpuprobe.daemon.core.model import CollectorResult, DeviceSample, Pcie, Throttle
from gpuprobe.daemon.core.state import View
from gpuprobe.daemon.core.workers import Worker
from gpuprobe.probes.amd.library import clean, number
from gpuprobe.probes.amd.session import AmdDevice, AmdSession
from gpuprobe.probes.backend import DeviceLost, LibraryDown, Query, run_on_devices

# amdsmi_get_violation_status active_* flags -> reason
VIOLATIONS = (("active_ppt_pwr", "power_cap"), ("active_socket_thrm", "sw_thermal"),
              ("active_hbm_thrm", "memory_thermal"), ("active_prochot_thrm", "hw_slowdown"))
SLOW_MAX_AGE = 3.0  # figures older than this many intervals are no longer published


def read_slow(session: AmdSession, dev: AmdDevice, q: Query, violation: bool,
              reasons: bool) -> DeviceSample:
    """One GPU's slow figures, in the model's units: PCIe bytes per second sampled over a
    second and, if ``violation``, the throttle reasons of the violation flags (published
    if ``reasons``)."""
    lib = session.lib
    pcie = Pcie()
    throughput = q(dev, "slow.throughput", lib.amdsmi_get_gpu_pci_throughput, dev.handle)
    if isinstance(throughput, dict):
        pcie = Pcie(sampled_bytes_per_second={
            d: float(v) for d, key in (("tx", "sent"), ("rx", "received"))
            if (v := number(throughput.get(key), 64)) is not None})
    throttle = Throttle()
    if violation:
        got = q(dev, "slow.violation", lib.amdsmi_get_violation_status, dev.handle)
        if isinstance(got, dict) and reasons:
            flags = {reason: clean(got.get(key)) for key, reason in VIOLATIONS}
            flags = {r: f for r, f in flags.items() if isinstance(f, bool)}
            throttle = Throttle(supported=frozenset(flags),
                                active=frozenset(r for r, f in flags.items() if f))
    return DeviceSample(identity=dev.identity, up=True, pcie=pcie, throttle=throttle)


class AmdSlow:
    name = "amd_slow"

    def __init__(self, session: AmdSession, snapshot: Callable[[], View],
                 interval: float) -> None:
        """``snapshot`` tells which GPUs' published samples lack throttle reasons;
        ``interval`` is this collector's, for the age of what it publishes."""
        self.session = session
        self.snapshot = snapshot
        self.max_age = SLOW_MAX_AGE * interval
        self._workers: dict[str, Worker] = {}
        self._latest: dict[str, tuple[float, DeviceSample]] = {}  # uuid -> (monotonic, figures)

    def _worker(self, dev: AmdDevice) -> Worker:
        if dev.bdf not in self._workers:
            self._workers[dev.bdf] = Worker(f"amdsmi-slow-{dev.bdf}")
        return self._workers[dev.bdf]

    def _one(self, dev: AmdDevice, q: Query, throttle: Throttle | None) -> DeviceSample | None:
        """``throttle``: the GPU's published throttle reading, None before the first."""
        violation = throttle is None or not throttle.seconds_total
        try:
            return read_slow(self.session, dev, q, violation,
                             reasons=throttle is None or not throttle.supported)
        except DeviceLost as e:
            self.session.lose(dev, str(e))
            return None

    def _fresh(self) -> tuple[DeviceSample, ...]:
        now = time.monotonic()
        return tuple(s for at, s in self._latest.values() if now - at <= self.max_age)

    def collect(self, deadline: float) -> CollectorResult:
        errors: Counter = Counter()
        session = self.session
        if not session.ensure(errors, deadline, drive=False):
            return CollectorResult(ok=session.absent or session.initialising, errors=errors)
        # The samples as their collector published them, without this collector's figures.
        published = {d.identity.uuid: d.throttle
                     for d in self.snapshot().devices(supplemented=False) if d.up}
        q = session.query(errors)
        gpus = [d for d in session.physical() if d.up]
        results, _ = run_on_devices(gpus, lambda d: self._one(d, q, published.get(d.uuid)),
                                    deadline, worker_of=self._worker)
        for dev in gpus:
            r = results.get(dev.uuid)
            if isinstance(r, LibraryDown):
                session.mark_down(r.__cause__ or r)
                return CollectorResult(ok=False, errors=errors)
            if isinstance(r, BaseException):
                raise r
            if r is not None:
                self._latest[dev.uuid] = (time.monotonic(), r)
        return CollectorResult(ok=True, supplements=self._fresh(), errors=errors)

    def close(self) -> None:
        for w in self._workers.values():
            w.stop()
