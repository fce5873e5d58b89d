"""Active probes, daemon side: what ties the schedule, the gates and the child together.

A probe runs in a short-lived child process (``probes/active/child.py``) that sees one GPU
(``CUDA_VISIBLE_DEVICES``/``HIP_VISIBLE_DEVICES`` set to its UUID) and a private, empty MPS
pipe directory, so the daemon never holds a GPU context and never appears as a GPU process
between probes. Which GPU is due is the schedule's (``schedule.py``: duty cycle, jitter,
backoff); whether it may be probed the gates' (``gates.py``); what a kind asks of the child
and makes of its result its spec's (``specs.py``). A run is thrown away if a process
appeared on the GPU while it ran. Only one probe runs at a time on the host, so no two GPUs
behind one PCIe switch are ever probed together.
"""

from __future__ import annotations

import functools
import random
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from gpuprobe.daemon.core.collectors import ProcessLister
from gpuprobe.daemon.core.config import ProbesConfig
from gpuprobe.daemon.core.model import CollectorResult, DeviceSample, ProcessSample
from gpuprobe.daemon.core.state import View
from gpuprobe.probes.active.child import Children, Outcome, Runtime, describe, run_child
from gpuprobe.probes.active.gates import gate
from gpuprobe.probes.active.schedule import ProbeState, Schedule
from gpuprobe.probes.active.specs import SPECS


class Orchestrator:
    def __init__(self, cfg: ProbesConfig, snapshot: Callable[[], View], children: set[int],
                 listers: Mapping[str, ProcessLister], *,
                 sim_environment: Callable[[str, str | None], dict[str, Any] | None]
                 | None = None, runtime: Runtime | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        """``snapshot`` gives the devices and processes the gates judge; ``children`` is
        where the pids of running probe children are kept, for the process collectors;
        ``listers`` ask a vendor backend who holds a GPU now; ``sim_environment`` is the
        simulation's, which probes simulated GPUs. ``runtime`` replaces the child process
        (tests); by default a real child, which :meth:`close` ends."""
        self.cfg = cfg
        self.snapshot = snapshot
        self.sim_environment = sim_environment
        self.running = Children()
        # Found now, while descriptors are free: finding it opens a test file, and without a
        # descriptor mkdtemp would fail with a misleading "no usable temporary directory".
        tempfile.gettempdir()
        self.runtime: Runtime = runtime or functools.partial(run_child,
                                                             children=self.running)
        self.clock = clock
        self.rng = rng or random.Random()
        self.children = children
        self.listers = listers
        self._lock = threading.Lock()  # one probe at a time on this host
        self.schedule = Schedule(cfg, lambda probe: SPECS[probe].every(cfg), clock, self.rng)

    def gate(self, d: DeviceSample, devices: list[DeviceSample],
             processes: list[ProcessSample], force: bool = False) -> str | None:
        """Why this device must not be probed now, or None (``gates.gate``)."""
        return gate(self.cfg, d, devices, processes, self.children,
                    lambda dev: self._target(dev) is not None, force)

    def _target(self, d: DeviceSample) -> tuple[dict[str, Any], dict[str, str]] | None:
        """(the request's fields naming the GPU and its runtime, the child's environment),
        or None if nothing can probe this GPU."""
        uuid = d.identity.uuid
        if self.sim_environment is not None:
            env = self.sim_environment(uuid, d.identity.pci_bus_id)
            if env is None:
                return None
            return {"backend": "sim", "sim": env, "seed": self.rng.randrange(2**31)}, {}
        if d.identity.vendor == "nvidia":
            return {"backend": "cuda"}, {"CUDA_VISIBLE_DEVICES": uuid}
        if d.identity.vendor == "amd":
            return {"backend": "hip"}, {"HIP_VISIBLE_DEVICES": uuid, "ROCR_VISIBLE_DEVICES": uuid}
        return None

    def _request(self, d: DeviceSample, probe: str) -> tuple[dict, dict[str, str]] | None:
        """(request for the child, its environment), or None if nothing can probe it."""
        target = self._target(d)
        if target is None:
            return None
        fields, env = target
        req: dict[str, Any] = {"probe": probe, "uuid": d.identity.uuid,
                               **SPECS[probe].child_request(self.cfg), **fields}
        return req, env

    def _run(self, probe: str, d: DeviceSample, state: ProbeState,
             progress: Callable[[str], None] | None) -> Outcome:
        uuid = d.identity.uuid
        built = self._request(d, probe)
        assert built is not None
        req, env = built
        lister = self.listers.get(d.identity.vendor)
        deadline = self.clock() + 5.0
        before = lister(uuid, deadline) if lister else None

        spawned: list[int] = []

        def started(pid: int) -> None:  # kept out of the process metrics while it runs
            spawned.append(pid)
            self.children.add(pid)

        try:
            out = self.runtime(req, env, self.cfg.timeout, progress, started)
        except (OSError, RuntimeError) as e:  # out of fds or threads: this run only
            out = Outcome("failed", f"cannot run the probe: {describe(e)}")
        finally:
            self.children.difference_update(spawned)
        if out.outcome == "ok" and before is not None and lister is not None:
            after = lister(uuid, self.clock() + 5.0)
            appeared = (after or set()) - before - {out.pid}
            if appeared:
                out = Outcome("discarded", f"process(es) {sorted(appeared)} appeared during "
                              "the probe", gpu_seconds=out.gpu_seconds,
                              wall_seconds=out.wall_seconds, pid=out.pid)
        self.schedule.ran(state, probe, out, SPECS[probe].values, uuid, d.identity.name)
        return out

    def _view(self) -> tuple[list[DeviceSample], list[ProcessSample]]:
        view = self.snapshot()
        return view.devices(), view.processes()

    def tick(self, probe: str) -> CollectorResult:
        """Run at most one due probe of this kind; skip, with a reason, the due ones that
        must not run; report every device's probe state."""
        devices, processes = self._view()
        physical = [d for d in devices if d.identity.parent_uuid is None]
        now = self.clock()
        due = sorted(((self.schedule.state(probe, d.identity.uuid), d) for d in physical),
                     key=lambda x: x[0].next_due)
        ran = False
        for state, d in due:
            if state.next_due > now:
                break
            reason = self.gate(d, devices, processes)
            if reason is not None:
                self.schedule.skipped(state, reason, probe)
                continue
            if ran or not self._lock.acquire(blocking=False):
                continue  # one run per tick, one probe at a time: it stays due
            try:
                self._run(probe, d, state, None)
                ran = True
            finally:
                self._lock.release()
        return CollectorResult(probes=self.schedule.samples(probe))

    def run_now(self, probe: str, uuid: str, force: bool = False,
                progress: Callable[[str], None] | None = None) -> Outcome:
        """Probe one GPU now, whatever the schedule (the CLI); the safety gates still hold,
        except that ``force`` probes a GPU that is busy or has processes."""
        devices, processes = self._view()
        d = next(x for x in devices if x.identity.uuid == uuid)
        state = self.schedule.state(probe, uuid)
        reason = self.gate(d, devices, processes, force)
        if reason is not None:
            self.schedule.skipped(state, reason, probe)
            return Outcome("skipped", reason)
        with self._lock:
            return self._run(probe, d, state, progress)

    def close(self) -> None:
        """End a probe child still running (the daemon is stopping) and remove its private
        directory; the run it belonged to ends as failed."""
        self.running.close()
