"""The simulated devices themselves, vendor-neutral: state as a function of scenario time.

A :class:`SimWorld` turns a :class:`~.scenario.Scenario` into devices whose memory,
utilization, temperatures, clocks, link state and throttling follow from their processes and
scheduled events, and whose counters (energy, PCIe bytes, throttle time, activity time, ECC,
replays, XIDs) only ever grow. The vendor faces (simulated NVML, simulated amdsmi) read it and
answer in their library's units and shapes. Scenario time runs ``time_acceleration`` times
faster than the wall clock; with a ``duration`` the scenario repeats, and its processes come
back with new pids, as restarted jobs do.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from gpuprobe.daemon.core.model import pcie_link_bytes_per_second
from gpuprobe.probes.sim.scenario import DeviceSpec, EventSpec, ProcessSpec, Scenario

PID_CYCLE_STRIDE = 100_000
CLOCK_TICKS = 100  # USER_HZ used for start times in the fake /proc
STATE_RESOLUTION = 0.02  # wall seconds within which repeated queries see one state
MAX_INTEGRATION_STEPS = 40
INTEGRATED = ("energy_j", "pcie_tx", "pcie_rx", "graphics_engine", "sm_active",
              "sm_occupancy", "tensor_active", "dram_active", "thr_power_cap", "thr_sw_thermal",
              "thr_hw_thermal", "thr_hw_slowdown", "thr_idle")


class SimClock:
    """Scenario seconds: wall time since start, times the acceleration."""

    def __init__(self, acceleration: float = 1.0, start: float = 0.0) -> None:
        self.acceleration = acceleration
        self._t0 = time.monotonic()
        self._start = start

    def now(self) -> float:
        return self._start + (time.monotonic() - self._t0) * self.acceleration


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 0.0, acceleration: float = 1.0) -> None:
        self.t = start
        self.acceleration = acceleration

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# NVML event types the simulated driver delivers (nvmlEventType*)
EVENT_XID, EVENT_UNAVAILABLE, EVENT_RECOVERY_ACTION = 0x8, 0x4000, 0x8000


@dataclass(frozen=True)
class SimProcess:
    pid: int
    spec: ProcessSpec
    started: float  # scenario time this incarnation started
    memory: float  # bytes
    utilization: float

    @property
    def start_ticks(self) -> int:
        return int(self.started * CLOCK_TICKS) + 1


@dataclass(frozen=True)
class DeviceState:
    t: float
    lost: bool
    processes: tuple[SimProcess, ...]
    used: float
    instance_used: tuple[float, ...]
    utilization: float
    instance_utilization: tuple[float, ...]
    temperature: float
    memory_temperature: float
    power_watts: float
    sm_hz: float
    memory_hz: float
    throttle: frozenset[str]
    generation: int
    width: int
    pstate: int
    fan: float = 0.0  # share of the fans' maximum speed (on a board with fans)


def _uuid(seed: int, index: int, vendor: str) -> str:
    h = hashlib.sha256(f"gpuprobe-sim/{seed}/{vendor}/{index}".encode()).hexdigest()
    core = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
    return f"GPU-{core}" if vendor == "nvidia" else core


class SimDevice:
    def __init__(self, spec: DeviceSpec, index: int, scenario: Scenario) -> None:
        self.spec = spec
        self.index = index
        self.seed = scenario.seed
        self.duration = scenario.duration
        self.uuid = spec.uuid or _uuid(scenario.seed, index, spec.vendor)
        self.pci_bus_id = spec.pci_bus_id or f"00000000:{0x18 + 0x10 * index:02X}:00.0"
        self.instance_uuids = tuple(
            f"MIG-{_uuid(scenario.seed, index * 100 + j + 1, 'nvidia')[4:]}"
            if spec.vendor == "nvidia" else _uuid(scenario.seed, index * 100 + j + 1, "amd")
            for j in range(len(spec.instances)))
        self._state_cache: DeviceState | None = None
        self._link_keys = tuple(f"link_{d}_{i}" for i in range(spec.links.count)
                                for d in ("tx", "rx"))
        self._totals = dict.fromkeys(INTEGRATED + self._link_keys, 0.0)
        self._instance_totals = [dict.fromkeys(INTEGRATED, 0.0) for _ in spec.instances]
        self._t_integrated: float | None = None
        self._lock = threading.RLock()

    # -- time helpers -------------------------------------------------------------------------

    def _cycle(self, t: float) -> tuple[int, float]:
        if not self.duration:
            return 0, t
        k = math.floor(t / self.duration)
        return k, t - k * self.duration

    def _active(self, kind: str, local: float) -> EventSpec | None:
        for e in self.spec.events:
            if e.kind == kind and e.at <= local < e.at + e.duration:
                return e
        return None

    def lost_at(self, t: float) -> bool:
        return self._active("fall_off_bus", self._cycle(t)[1]) is not None

    def generation_at(self, t: float) -> int:
        """How many times the device has come back from falling off the bus by ``t``;
        handles from before a return are stale, as after a driver re-bind."""
        k, local = self._cycle(t)
        falls = [e for e in self.spec.events if e.kind == "fall_off_bus"]
        return k * len(falls) + sum(1 for e in falls if e.at + e.duration <= local)

    # -- state ----------------------------------------------------------------------------------

    def processes_at(self, t: float) -> tuple[SimProcess, ...]:
        k, local = self._cycle(t)
        out = []
        for p in self.spec.processes:
            if local < p.start or (p.end is not None and local >= p.end):
                continue
            age = local - p.start
            pid = p.pid + PID_CYCLE_STRIDE * k
            pid = 2 + (pid - 2) % 4_000_000
            out.append(SimProcess(pid, p, t - age, p.memory.at(age, self.seed, p.pid),
                                  p.utilization))
        return tuple(out)

    def state(self, t: float) -> DeviceState:
        with self._lock:
            c = self._state_cache
            if c is not None and abs(c.t - t) < 1e-9:
                return c
            s = self._compute(t)
            self._state_cache = s
            return s

    def partition_memory(self, t: float, index: int) -> tuple[int, int]:
        """(total, used) bytes an AMD partition's handle reports: its own share, or, with
        ``partition_memory: pool``, the whole GPU's pool on every partition (ROCm/ROCm#4750)."""
        s = self.state(t)
        if self.spec.partition_memory == "pool":
            return int(self.spec.memory), int(min(self.spec.memory, s.used + self.spec.reserved))
        return int(self.spec.instances[index].memory), int(s.instance_used[index])

    def _compute(self, t: float) -> DeviceState:
        spec = self.spec
        _, local = self._cycle(t)
        lost = self._active("fall_off_bus", local) is not None
        procs = self.processes_at(t)
        capacity = spec.memory - spec.reserved
        n_inst = len(spec.instances)
        inst_used = [0.0] * n_inst
        inst_util = [0.0] * n_inst
        for p in procs:
            if n_inst and p.spec.instance is not None:
                inst_used[p.spec.instance] += p.memory
                inst_util[p.spec.instance] += p.utilization if p.memory > 0 else 0.0
        used = min(capacity, sum(p.memory for p in procs))
        util = min(1.0, sum(p.utilization for p in procs if p.memory > 0))
        throttle = set()
        thermal = self._active("thermal_throttle", local) is not None
        power = spec.idle_watts + (spec.max_watts - spec.idle_watts) * util
        temp = spec.idle_celsius + (spec.busy_celsius - spec.idle_celsius) * util
        sm = spec.sm_idle_hz + (spec.sm_max_hz - spec.sm_idle_hz) * min(1.0, util * 1.5)
        if thermal:
            temp = spec.slowdown_celsius + 1.0
            throttle |= {"sw_thermal", "hw_thermal", "hw_slowdown"}
            sm *= 0.6
            power *= 0.7
        if self._active("power_cap", local) is not None or power > spec.limit_watts:
            throttle.add("power_cap")
            power = min(power, spec.limit_watts)
            sm *= 0.85
        if util == 0:
            throttle.add("gpu_idle")
        gen = spec.generation
        if spec.idle_downtrain and util == 0:
            gen = 1
        return DeviceState(
            t=t, lost=lost, processes=procs, used=used,
            instance_used=tuple(min(i.memory, u) for i, u in zip(spec.instances, inst_used,
                                                                   strict=True)),
            utilization=util, instance_utilization=tuple(min(1.0, u) for u in inst_util),
            temperature=temp, memory_temperature=temp + spec.memory_offset_celsius,
            power_watts=power, sm_hz=sm, memory_hz=spec.memory_hz,
            throttle=frozenset(throttle), generation=gen, width=spec.width,
            pstate=0 if util > 0 else spec.idle_pstate,
            fan=min(1.0, 0.3 + 0.7 * max(0.0, temp - spec.idle_celsius)
                    / max(1.0, spec.slowdown_celsius - spec.idle_celsius)))

    # -- counters -------------------------------------------------------------------------------

    def _rates(self, s: DeviceState, util: float) -> dict[str, float]:
        link = pcie_link_bytes_per_second(s.generation, s.width) or 0.0
        return {
            "energy_j": s.power_watts,
            "pcie_tx": util * 0.10 * link,
            "pcie_rx": util * 0.18 * link,
            "graphics_engine": util,
            "sm_active": util * 0.92,
            "sm_occupancy": util * 0.38,
            "tensor_active": util * 0.30,
            "dram_active": util * 0.45,
            "thr_power_cap": 1.0 if "power_cap" in s.throttle else 0.0,
            "thr_sw_thermal": 1.0 if "sw_thermal" in s.throttle else 0.0,
            "thr_hw_thermal": 1.0 if "hw_thermal" in s.throttle else 0.0,
            "thr_hw_slowdown": 1.0 if "hw_slowdown" in s.throttle else 0.0,
            "thr_idle": 1.0 if util == 0 else 0.0,
        }

    def _link_rates(self, s: DeviceState) -> dict[str, float]:
        """Bytes per second over each up link, both ways (its totals are link_tx_N, link_rx_N
        in :meth:`totals`)."""
        links = self.spec.links
        if not links.count or s.lost:
            return {}
        rate = s.utilization * links.busy_share * links.rate
        _, local = self._cycle(s.t)
        out = {}
        for i in range(links.count):
            up = self._link_down(local, i) is None
            out[f"link_tx_{i}"] = rate * (1.0 + 0.01 * i) if up else 0.0
            out[f"link_rx_{i}"] = rate * (0.98 + 0.01 * i) if up else 0.0
        return out

    def _link_down(self, local: float, link: int) -> EventSpec | None:
        for e in self.spec.events:
            if e.kind == "link_down" and e.link == link and e.at <= local < e.at + e.duration:
                return e
        return None

    def link_up(self, t: float, link: int) -> bool:
        """Whether ``link`` is up at ``t`` (every link of a lost GPU is down)."""
        _, local = self._cycle(t)
        return not self.lost_at(t) and self._link_down(local, link) is None

    def link_errors(self, t: float, link: int, kind: str) -> int:
        """Errors of ``kind`` on ``link`` up to ``t`` (link_errors events), over cycles."""
        k, local = self._cycle(t)
        events = [e for e in self.spec.events
                  if e.kind == "link_errors" and e.link == link and e.error == kind]
        return k * sum(e.count for e in events) + sum(e.count for e in events if e.at <= local)

    def reset_required(self, t: float) -> bool:
        """A reset_required event is in progress: the GPU must be reset."""
        return self._active("reset_required", self._cycle(t)[1]) is not None

    def totals(self, t: float, instance: int | None = None) -> dict[str, float]:
        """Counters integrated from the start of the scenario to ``t`` (and, of the whole
        device, each link's bytes: link_tx_N, link_rx_N)."""
        with self._lock:
            if self._t_integrated is None:
                self._t_integrated = t
            elif t > self._t_integrated:
                t0 = self._t_integrated
                steps = min(MAX_INTEGRATION_STEPS, max(1, math.ceil((t - t0) / 5.0)))
                dt = (t - t0) / steps
                for i in range(steps):
                    s = self._compute(t0 + (i + 0.5) * dt)
                    for key, rate in self._rates(s, s.utilization).items():
                        self._totals[key] += rate * dt
                    for key, rate in self._link_rates(s).items():
                        self._totals[key] += rate * dt
                    for j, tot in enumerate(self._instance_totals):
                        for key, rate in self._rates(s, s.instance_utilization[j]).items():
                            tot[key] += rate * dt
                self._t_integrated = t
            return dict(self._totals if instance is None else self._instance_totals[instance])

    def _count(self, t: float, kind: str, value: str) -> int:
        """A cumulative count of scheduled events of ``kind`` up to ``t``, over cycles."""
        k, local = self._cycle(t)
        per_cycle = sum(getattr(e, value) for e in self.spec.events if e.kind == kind)
        now = sum(getattr(e, value) for e in self.spec.events if e.kind == kind and e.at <= local)
        return k * per_cycle + now

    def ecc(self, t: float) -> tuple[int, int]:
        return self._count(t, "ecc", "corrected"), self._count(t, "ecc", "uncorrected")

    def remapped_rows(self, t: float) -> tuple[int, int, bool]:
        """(correctable, uncorrectable, pending) row remaps."""
        unc = self._count(t, "row_remap", "count")
        pending = self._active("row_remap", self._cycle(t)[1]) is not None
        return 0, unc, pending

    def replays(self, t: float) -> int:
        return int(self.spec.replay_rate * max(t, 0.0))

    def has_events(self) -> bool:
        """Whether the scenario gives this device any driver event: an XID (a fall off the
        bus included) or a reset it needs."""
        return any(e.kind in ("xid", "fall_off_bus", "reset_required") for e in self.spec.events)

    def events_between(self, t0: float, t1: float,
                       types: int = EVENT_XID) -> list[tuple[float, int, int]]:
        """Driver events (time, NVML event type, data) in (t0, t1] of the ``types`` asked:
        XIDs (data: the code; a fall off the bus is XID 79 and makes the GPU unavailable)
        and, when a reset is needed, a recovery action (data: 1, GPU reset)."""
        out: list[tuple[float, int, int]] = []
        spans = []
        for e in self.spec.events:
            if e.kind == "xid":
                spans.append((e.at, EVENT_XID, e.code, e.count, e.spacing))
            elif e.kind == "fall_off_bus":
                spans += [(e.at, EVENT_XID, 79, 1, 0.0), (e.at, EVENT_UNAVAILABLE, 0, 1, 0.0)]
            elif e.kind == "reset_required":
                spans.append((e.at, EVENT_RECOVERY_ACTION, 1, 1, 0.0))
        spans = [span for span in spans if span[1] & types]
        if not spans or t1 <= t0:
            return out
        k0 = self._cycle(max(t0, 0.0))[0]
        k1 = self._cycle(t1)[0]
        for k in range(k0, k1 + 1):
            base = k * (self.duration or 0.0)
            for at, kind, data, count, spacing in spans:
                # only the repeats that can fall in (t0, t1], not all `count` of them
                first, last = 0, count - 1
                if spacing > 0:
                    first = max(0, math.floor((t0 - base - at) / spacing))
                    last = min(count - 1, math.ceil((t1 - base - at) / spacing))
                for n in range(first, last + 1):
                    te = base + at + n * spacing
                    if t0 < te <= t1:
                        out.append((te, kind, data))
        return sorted(out)


class SimProcTree:
    """A fake ``/proc`` with ``stat`` and ``cgroup`` for each simulated process."""

    def __init__(self) -> None:
        # In memory where the host has it: on a disk-backed /tmp, writing the entries of
        # 8,192 processes took 17 s; in /dev/shm, 0.3 s.
        shm = "/dev/shm"
        fast = shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None
        self.base = tempfile.mkdtemp(prefix="gpuprobe-sim-", dir=fast)
        self.root = os.path.join(self.base, "proc")
        os.makedirs(self.root)
        # the kubelet's /var/log/pods: a directory per pod, named <namespace>_<name>_<uid>
        self.pod_logs = os.path.join(self.base, "pods")
        os.makedirs(self.pod_logs)
        self._present: dict[int, dict[int, int]] = {}  # device index: {pid: start ticks}
        self._lock = threading.Lock()

    def sync(self, procs: Iterable[SimProcess], owner: int) -> None:
        """Make the entries of device ``owner``'s processes match ``procs`` (only the asking
        device's: on a host of 64 GPUs x 128 processes, syncing every device's on each call
        made the simulation, not the daemon, the cost of a poll). A scenario's pids are
        unique, so no two devices own one entry."""
        want = {p.pid: p for p in procs}
        with self._lock:
            present = self._present.setdefault(owner, {})
            for pid in [pid for pid, start in present.items()
                        if pid not in want or want[pid].start_ticks != start]:
                shutil.rmtree(os.path.join(self.root, str(pid)), ignore_errors=True)
                del present[pid]
            for pid, p in want.items():
                if pid in present:
                    continue
                d = os.path.join(self.root, str(pid))
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "stat"), "w") as f:
                    f.write(f"{pid} ({p.spec.name}) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 "
                            f"0 20 0 1 0 {p.start_ticks} 0 0 18446744073709551615 0 0 0\n")
                with open(os.path.join(d, "cgroup"), "w") as f:
                    f.write(_cgroup(p.spec) + "\n")
                if p.spec.pod and p.spec.pod_name and p.spec.namespace:
                    # made before the pod's containers start, as the kubelet does; kept
                    # after they end (until the pod would be removed: here, never)
                    os.makedirs(os.path.join(self.pod_logs, "_".join(
                        (p.spec.namespace, p.spec.pod_name, p.spec.pod))), exist_ok=True)
                present[pid] = p.start_ticks

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def _cgroup(spec: ProcessSpec) -> str:
    if spec.pod:
        pod = spec.pod.replace("-", "_")
        cid = spec.container or "0" * 64
        return (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod}.slice"
                f"/cri-containerd-{cid}.scope")
    if spec.container:
        return f"0::/system.slice/docker-{spec.container}.scope"
    return "0::/user.slice/user-1000.slice/session-1.scope"


class SimWorld:
    def __init__(self, scenario: Scenario, clock: SimClock | ManualClock | None = None,
                 proc_tree: bool = True) -> None:
        self.scenario = scenario
        self.clock = clock or SimClock(scenario.time_acceleration)
        self.devices = [SimDevice(spec, i, scenario) for i, spec in enumerate(scenario.devices)]
        self.procfs = SimProcTree() if proc_tree else None
        self._synced_at: dict[int, float] = {}  # device index: the t its processes were synced at
        self._sync_lock = threading.Lock()

    def now(self) -> float:
        """Scenario time, quantised so one poll's calls see one state."""
        t = self.clock.now()
        q = STATE_RESOLUTION * getattr(self.clock, "acceleration", 1.0)
        return math.floor(t / q) * q if q > 0 else t

    def vendor_devices(self, vendor: str) -> list[SimDevice]:
        return [d for d in self.devices if d.spec.vendor == vendor]

    def sync_processes(self, t: float, device: SimDevice) -> None:
        """Make the fake /proc match ``device``'s processes alive at ``t`` (before a face
        lists them, so the daemon finds each in /proc)."""
        if self.procfs is None:
            return
        if self._synced_at.get(device.index) == t:
            return
        processes = device.state(t).processes  # cached per t; not under the lock
        with self._sync_lock:  # a second face asking for the same t waits until it is written
            if self._synced_at.get(device.index) == t:
                return
            self.procfs.sync(processes, device.index)
            self._synced_at[device.index] = t

    def close(self) -> None:
        if self.procfs is not None:
            self.procfs.close()
