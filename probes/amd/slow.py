"""The ``amd_slow`` collector: amdsmi calls that block by design, on their own schedule.

``amdsmi_get_gpu_pci_throughput`` reads sysfs ``pcie_bw``, which sleeps a second in the
driver; ``amdsmi_get_violation_status`` samples the firmware twice at least 100 ms apart.
Made from the telemetry poll they would hold every GPU's poll up by that much, so they run
here, every minute by default, each GPU on its own thread (a GPU's telemetry worker is never
used), and leave their latest figures in the session for the ``amd`` collector to merge.
Violation status is only asked where gpu_metrics has no residency accumulators, which carry
the same information for free.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from gpuprobe.daemon.core.model import CollectorResult
from gpuprobe.daemon.core.workers import Job, Worker
from gpuprobe.probes.amd.session import AmdDevice, AmdSession
from gpuprobe.probes.backend import STUCK_SECONDS, DeviceLost, LibraryDown, Query


def read_slow(session: AmdSession, dev: AmdDevice, q: Query) -> dict[str, Any]:
    lib = session.lib
    out: dict[str, Any] = {}
    throughput = q(dev, "slow.throughput", lib.amdsmi_get_gpu_pci_throughput, dev.handle)
    if isinstance(throughput, dict):
        out["throughput"] = throughput
    if "residency" not in dev.state:
        violation = q(dev, "slow.violation", lib.amdsmi_get_violation_status, dev.handle)
        if isinstance(violation, dict):
            out["violation"] = violation
    out["at"] = time.monotonic()
    return out


class AmdSlow:
    name = "amd_slow"

    def __init__(self, session: AmdSession) -> None:
        self.session = session
        self._workers: dict[str, Worker] = {}

    def _worker(self, dev: AmdDevice) -> Worker:
        if dev.bdf not in self._workers:
            self._workers[dev.bdf] = Worker(f"amdsmi-slow-{dev.bdf}")
        return self._workers[dev.bdf]

    def _one(self, dev: AmdDevice, q: Query) -> dict[str, Any] | None:
        try:
            return read_slow(self.session, dev, q)
        except DeviceLost as e:
            self.session.lose(dev, str(e))
            return None

    def collect(self, deadline: float) -> CollectorResult:
        errors: Counter = Counter()
        session = self.session
        if not session.ensure(errors, deadline, drive=False):
            return CollectorResult(ok=session.absent or session.initialising, errors=errors)
        q = session.query(errors)
        jobs: list[tuple[AmdDevice, Job]] = []
        for dev in session.physical():
            worker = self._worker(dev)
            if dev.up and worker.running_for() <= STUCK_SECONDS:
                jobs.append((dev, worker.submit(self._one, dev, q)))
        for dev, job in jobs:
            try:
                result = job.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                job.cancel()
                continue
            except LibraryDown as e:
                session.mark_down(e.__cause__ or e)
                return CollectorResult(ok=False, errors=errors)
            if result is not None:
                session.slow[dev.uuid] = result
        return CollectorResult(ok=True, errors=errors)

    def close(self) -> None:
        for w in self._workers.values():
            w.stop()
