"""The one place that talks to amdsmi's lifetime: preflight, init, discovery, partitions.

Errors of every call go through :class:`~gpuprobe.probes.backend.Query` with amdsmi's
mapping (:func:`.library.classify`). Devices are keyed by PCI address, not UUID: many Radeon
and integrated parts have no unique id, and their amdsmi UUIDs repeat; such a device gets a
UUID made from its address.

Partitions (MI300 CPX/DPX/...): each partition is its own amdsmi handle, with the partition
number in the PCI function. The physical GPU becomes a device of its own, read through
partition 0's handle (the only one whose device-wide sensors mean anything), and each
partition a child device (``gpu="0/3"``) with its own memory, activity and processes, as a
MIG instance is on NVIDIA.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gpuprobe.daemon.core.config import AmdConfig
from gpuprobe.daemon.core.model import BackendStatus, DeviceIdentity
from gpuprobe.daemon.core.workers import Job, Worker
from gpuprobe.probes.amd.library import (
    STATUS_NO_PERM,
    Unavailable,
    Versions,
    binding_bug,
    classify,
    error_code,
    import_amdsmi,
    package_installed,
    text,
)
from gpuprobe.probes.amd.preflight import Preflight, describe, reap
from gpuprobe.probes.backend import (
    LIBRARY_FATAL,
    STUCK_SECONDS,
    TRANSIENT,
    Device,
    DeviceLost,
    LibraryDown,
    Lifetime,
    Query,
    found_again,
    lose,
)

log = logging.getLogger("gpuprobe.amd")

# gfx target -> architecture family, for the `architecture` label (the target itself goes
# into `compute_capability`, as it is what kernels are compiled for).
ARCHITECTURES = {"gfx908": "cdna", "gfx90a": "cdna2", "gfx940": "cdna3", "gfx941": "cdna3",
                 "gfx942": "cdna3", "gfx950": "cdna4", "gfx1030": "rdna2", "gfx1100": "rdna3",
                 "gfx1101": "rdna3", "gfx1102": "rdna3", "gfx1200": "rdna4", "gfx1201": "rdna4"}
# (sensor label, AmdSmiTemperatureType member)
SENSORS = (("edge", "EDGE"), ("hotspot", "HOTSPOT"), ("memory", "VRAM"))
# (threshold label, AmdSmiTemperatureMetric member): CRITICAL is the hwmon temp*_crit at
# which the SMU throttles hard; EMERGENCY the temp*_emergency at which the ASIC shuts down.
THRESHOLDS = (("slowdown", "CRITICAL"), ("shutdown", "EMERGENCY"))


@dataclass(eq=False)
class AmdDevice(Device):
    """A physical AMD GPU (read through partition 0's handle) or one of its partitions."""

    parent: AmdDevice | None = None
    bdf: str = ""
    partition_index: int | None = None
    children: list[AmdDevice] = field(default_factory=list)


def physical_bdf(bdf: str) -> str:
    """The address of partition 0 (function 0) of a partition's BDF."""
    return bdf[:-1] + "0" if re.fullmatch(r"[0-9a-fA-F:]+\.\d", bdf) else bdf


class AmdSession(Lifetime):
    """amdsmi's lifetime in the daemon, shared by the AMD collectors."""

    def __init__(self, face: Any, config: AmdConfig) -> None:
        """``face``: the simulated amdsmi, or None for the real package (imported only
        after an isolated child has shown that it loads and initialises)."""
        super().__init__()
        self.face = face
        self.lib: Any = None
        self.config = config
        self.absent = False
        self.reason: str | None = "not initialised yet"
        self.versions: Versions | None = None
        self.version_mismatch: bool | None = None
        self.driver_version: str | None = None
        self.generation = 0
        self.devices: dict[str, AmdDevice] = {}
        # The slow collector's latest figures per physical device uuid, read by telemetry.
        self.slow: dict[str, dict[str, Any]] = {}
        self._preflight: Preflight | None = None
        self._backoff = self.config.retry_initial
        self._logged_reason: str | None = None
        self._init_worker = Worker("amdsmi-init")
        self._discovery_worker = Worker("amdsmi-discovery")
        self._workers: dict[str, Worker] = {}
        self._indices: dict[str, int] = {}  # physical BDF -> the gpu label's number

    # -- error mapping (the Classifier protocol of probes/backend.py) ------------------------

    def classify(self, exc: BaseException) -> str | None:
        return classify(self.lib, exc)

    def quietly_unsupported(self, exc: BaseException) -> bool:
        return error_code(exc) == STATUS_NO_PERM or binding_bug(exc)

    def query(self, errors: Counter) -> Query:
        return Query(self, errors, log)

    @property
    def initialising(self) -> bool:
        """A preflight is under way (not a failure yet)."""
        return self._preflight is not None

    # -- lifetime ---------------------------------------------------------------------------

    def _bring_up(self, errors: Counter, deadline: float) -> None:
        """One step of bringing the library up: start a preflight, or act on its outcome."""
        if self.face is None and not package_installed():
            self._down("the amdsmi Python package is not installed", absent=True)
            return
        if self._init_worker.running_for() > 0:
            self.reason = "an in-process amdsmi_init is still hung; not retried until it returns"
            self._retry_at = time.monotonic() + self._backoff
            self._failure_seen()
            return
        if self._preflight is None:
            stuck = reap()
            if stuck:
                log.warning("%d earlier amdsmi preflight(s) could not be killed (stuck in the "
                            "kernel?)", stuck)
            try:
                self._preflight = Preflight(self.config.init_timeout, self.face)
            except RuntimeError as e:  # can't start new thread
                self._down(f"cannot start the amdsmi preflight: {e}")
                return
        outcome = self._preflight.result(wait=(deadline - time.monotonic()) / 2)
        if outcome is None:
            self.reason = "initialising (amdsmi preflight under way)"
            return
        self._preflight = None
        self.versions = Versions(outcome.binding, outcome.rocm, outcome.library)
        self.version_mismatch = self.versions.mismatch
        if not outcome.ok:
            if not outcome.absent:
                errors[LIBRARY_FATAL] += 1
            self._down(outcome.reason or "amdsmi preflight failed", absent=outcome.absent)
            return
        if self.version_mismatch and not self.config.allow_version_mismatch:
            errors[LIBRARY_FATAL] += 1
            self._down(f"the amdsmi Python binding {self.versions.binding} does not match the "
                       f"installed ROCm {self.versions.rocm} (library {self.versions.library}); "
                       f"its structures may not fit the library's, so it is not used (install "
                       f"the binding from /opt/rocm/share/amd_smi, or set "
                       f"amd.allow_version_mismatch)")
            return
        try:
            self.lib = self.face if self.face is not None else import_amdsmi()
        except Unavailable as e:
            self._down(e.reason, absent=e.absent)
            return
        job = self._init_worker.submit(self.lib.amdsmi_init,
                                       self.lib.AmdSmiInitFlags.INIT_AMD_GPUS)
        try:
            job.result(timeout=max(0.5, deadline - time.monotonic()))
        except TimeoutError:
            errors[LIBRARY_FATAL] += 1
            self._down("amdsmi_init hung in the daemon after a clean preflight (a GPU wedged "
                       "in between?)")
            return
        except Exception as e:
            errors[LIBRARY_FATAL] += 1
            self._down(f"amdsmi_init failed: {describe(e)}")
            return
        self.up, self.absent, self.reason = True, False, None
        self.generation += 1
        self._backoff = self.config.retry_initial
        self._next_discovery = 0.0
        self._logged_reason = None
        v = self.versions
        log.info("amdsmi initialised: ROCm %s, library %s, Python binding %s%s",
                 v.rocm or "unknown", v.library or "unknown", v.binding or "unknown",
                 " (MISMATCH allowed by amd.allow_version_mismatch)"
                 if self.version_mismatch else "")

    def _library_down(self, exc: BaseException) -> None:
        self._down(describe(exc))

    def _down(self, reason: str, absent: bool = False) -> None:
        self.absent = absent
        self.reason = reason
        was_up, self.up = self.up, False
        self._failure_seen()
        if was_up:
            try:
                self.lib.amdsmi_shut_down()
            except Exception:
                pass
        for dev in self.devices.values():
            dev.state.clear()
        if absent:
            self._backoff = self.config.retry_max
        self._retry_at = time.monotonic() + self._backoff
        if reason != self._logged_reason:
            self._logged_reason = reason
            log.log(logging.INFO if absent else logging.WARNING,
                    "AMD backend unavailable: %s; retrying every %.0fs at most", reason,
                    self.config.retry_max)
        self._backoff = min(self._backoff * 2, self.config.retry_max)

    def close(self) -> None:
        with self._lock:
            if self.up:
                try:
                    self.lib.amdsmi_shut_down()
                except Exception:
                    pass
                self.up = False
            for w in (*self._workers.values(), self._init_worker, self._discovery_worker):
                w.stop()

    def status(self) -> BackendStatus:
        v = self.versions
        return BackendStatus("amd", self.up, self.reason, v.library if v else None,
                             self.driver_version, v.binding if v else None,
                             self.version_mismatch)

    # -- devices ----------------------------------------------------------------------------

    def known(self) -> list[AmdDevice]:
        return list(self.devices.values())

    def physical(self) -> list[AmdDevice]:
        return [d for d in self.devices.values() if d.parent is None]

    def lose(self, dev: AmdDevice, reason: str) -> None:
        lose(dev, reason, self.config.retry_initial, self.config.retry_max)
        for child in dev.children:
            child.state.clear()

    def _worker(self, bdf: str) -> Worker:
        if bdf not in self._workers:
            self._workers[bdf] = Worker(f"amdsmi-{bdf}")
        return self._workers[bdf]

    def _discover(self, q: Query, deadline: float) -> None:
        """Enumerate handles, group partitions under their GPU, read static facts; each GPU
        on its own worker so that one hanging holds up only itself."""
        lib = self.lib
        if self._discovery_worker.running_for() > STUCK_SECONDS:
            self._next_discovery = time.monotonic() + self.config.retry_initial
            return
        job = self._discovery_worker.submit(lib.amdsmi_get_processor_handles)
        try:
            handles = job.result(timeout=max(0.0, (deadline - time.monotonic()) / 2))
        except TimeoutError:
            job.cancel()
            log.warning("amdsmi enumeration did not answer in time; keeping the devices known")
            self._next_discovery = time.monotonic() + self.config.retry_initial
            return
        except Exception as e:
            cls = classify(lib, e)
            if cls is None:
                raise
            if cls == LIBRARY_FATAL:
                raise LibraryDown(e) from e
            q.errors[cls] += 1
            self._next_discovery = time.monotonic() + self.config.retry_initial
            return
        addressed, unaddressed = self._addresses(
            handles, q, time.monotonic() + (deadline - time.monotonic()) / 2)
        groups: dict[str, list[tuple[int, str, Any]]] = {}
        for bdf, handle in addressed:
            fn = int(bdf[-1]) if bdf[-1:].isdigit() else 0
            groups.setdefault(physical_bdf(bdf), []).append((fn, bdf, handle))
        for pbdf in sorted(groups):  # a GPU keeps its index while the daemon runs
            self._indices.setdefault(pbdf, len(self._indices))
        found: dict[str, AmdDevice] = {}
        retry_soon = unaddressed
        failure: BaseException | None = None
        by_bdf = {d.bdf: d for d in self.physical()}
        jobs = []
        for pbdf in sorted(groups):
            index = self._indices[pbdf]
            handles = sorted(groups[pbdf], key=lambda h: h[0])
            worker = self._worker(pbdf)
            if worker.running_for() > STUCK_SECONDS:
                # its worker is inside a hung call: the GPU stays known (it reads down), as
                # one whose read times out below does; dropping it hid it from /metrics
                retry_soon = True
                known = by_bdf.get(pbdf)
                if known is not None:
                    found.update((d.uuid, d) for d in (known, *known.children))
                continue
            errors: Counter = Counter()
            jobs.append((pbdf, worker.submit(self._read_gpu, index, pbdf, handles,
                                              worker, self.query(errors)), errors))
        for pbdf, fut, errors in jobs:
            try:
                result = fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                fut.cancel()
                result = None
            except LibraryDown as e:
                failure, result = e, None
            q.errors.update(errors)
            retry_soon |= TRANSIENT in errors
            if result is None:
                retry_soon = True
                known = by_bdf.get(pbdf)
                if known is not None:
                    found.update((d.uuid, d) for d in (known, *known.children))
                continue
            found.update((d.uuid, d) for d in (result, *result.children))
        if failure is not None:
            raise failure
        for uuid, dev in self.devices.items():  # a GPU that went away stays known, down
            if dev.parent is None and uuid not in found and dev.bdf not in groups:
                if not dev.lost and not unaddressed:  # gone, not merely unanswered
                    self.lose(dev, "no longer enumerated by amdsmi")
                found[uuid] = dev
                found.update((c.uuid, c) for c in dev.children)
        self.devices = found
        delay = self.config.retry_initial if retry_soon else self.config.discovery_interval
        self._discovery_done(delay)

    def _addresses(self, handles: list[Any], q: Query, deadline: float
                   ) -> tuple[list[tuple[str, Any]], bool]:
        """(BDF, handle) of every handle whose address could be read, each read on a worker
        of its own (one hanging costs only its GPU), and whether any could not be."""
        lib = self.lib
        jobs: list[tuple[Any, Job]] = []  # each job with its own handle: a skipped
        missed = False  # (stuck) handle must not shift the later ones onto others' answers
        for i, h in enumerate(handles):
            worker = self._worker(f"handle{i}")
            if worker.running_for() > STUCK_SECONDS:
                missed = True
                continue
            jobs.append((h, worker.submit(lib.amdsmi_get_gpu_device_bdf, h)))
        out = []
        for h, job in jobs:
            try:
                out.append((str(job.result(timeout=max(0.0, deadline - time.monotonic())))
                            .lower(), h))
            except TimeoutError:
                job.cancel()
                missed = True
            except Exception as e:
                cls = classify(lib, e)
                if cls is None:
                    raise
                if cls == LIBRARY_FATAL:
                    raise LibraryDown(e) from e
                q.errors[cls] += 1
                missed = True
        return out, missed

    def _uuid(self, handle: Any, bdf: str, q: Query, probe: AmdDevice, taken: set[str]
              ) -> str:
        raw = text(q(probe, "uuid", self.lib.amdsmi_get_gpu_device_uuid, handle))
        digits = raw.replace("-", "").lower() if raw else ""
        # Parts without a unique_id report all zeros but the UUID version and variant.
        degenerate = sum(c not in "0f" for c in digits) <= 2 or set(digits) <= {"f", "x"}
        if not raw or degenerate or raw in taken:
            return f"AMD-{bdf}"  # no unique id (many Radeon and integrated parts)
        return raw

    def _read_gpu(self, index: int, pbdf: str, handles: list[tuple[int, str, Any]],
                  worker: Worker, q: Query) -> AmdDevice | None:
        """On the GPU's worker: identity, partitions and static facts of one physical GPU."""
        h0 = handles[0][2]
        known = next((d for d in self.physical() if d.bdf == pbdf), None)
        probe = known or AmdDevice("", h0, DeviceIdentity("", "amd", str(index)), worker)
        probe.handle = h0
        try:
            taken = {d.uuid for d in self.physical() if d.bdf != pbdf}
            uuid = self._uuid(h0, pbdf, q, probe, taken)
            if known is not None and known.uuid != uuid:
                known = None  # another GPU in that slot
            dev = known or AmdDevice(uuid, h0, probe.identity, worker, bdf=pbdf,
                                     backoff=self.config.retry_initial,
                                     unsupported=probe.unsupported)
            if known is None:
                log.info("AMD GPU %d: found %s at %s", index, uuid, pbdf)
            elif dev.lost:
                found_again(dev)
            dev.handle, dev.worker, dev.lost, dev.lost_reason = h0, worker, False, None
            self._read_static(dev, q, index, len(handles))
            children = self._partitions(dev, handles, q) if len(handles) > 1 else []
        except DeviceLost as e:
            if known is not None:
                self.lose(known, str(e))
                return known
            return None
        dev.children = children
        return dev

    def _partitions(self, dev: AmdDevice, handles: list[tuple[int, str, Any]], q: Query
                    ) -> list[AmdDevice]:
        old = {c.partition_index: c for c in dev.children}
        taken = {dev.uuid}
        out = []
        for fn, bdf, h in handles:
            child = old.get(fn)
            probe = child or AmdDevice("", h, dev.identity, dev.worker, parent=dev)
            raw = text(q(probe, "uuid", self.lib.amdsmi_get_gpu_device_uuid, h))
            uuid = raw if raw and raw not in taken else f"{dev.uuid}:{fn}"
            taken.add(uuid)
            p = dev.identity
            identity = DeviceIdentity(
                uuid, "amd", f"{p.index}/{fn}", model=p.model, pci_bus_id=bdf.upper(),
                serial=p.serial, driver_version=p.driver_version,
                firmware_version=p.firmware_version, architecture=p.architecture,
                compute_capability=p.compute_capability, parent_uuid=dev.uuid,
                partition=p.partition, memory_partition=p.memory_partition)
            if child is None or child.uuid != uuid:
                child = AmdDevice(uuid, h, identity, dev.worker, parent=dev, bdf=bdf,
                                  partition_index=fn, unsupported=probe.unsupported)
            child.handle, child.identity, child.lost = h, identity, False
            out.append(child)
        return out

    def _read_static(self, dev: AmdDevice, q: Query, index: int, partitions: int) -> None:
        lib, h = self.lib, dev.handle
        asic = q(dev, "asic", lib.amdsmi_get_gpu_asic_info, h) or {}
        board = q(dev, "board", lib.amdsmi_get_gpu_board_info, h) or {}
        driver = q(dev, "driver", lib.amdsmi_get_gpu_driver_info, h) or {}
        vbios = q(dev, "vbios", lib.amdsmi_get_gpu_vbios_info, h) or {}
        target = text(asic.get("target_graphics_version"))
        if target and "ffffffff" in target:  # 7.0.2 has no N/A handling for this field
            target = None
        compute = text(q(dev, "partition.compute", lib.amdsmi_get_gpu_compute_partition, h))
        memory = text(q(dev, "partition.memory", lib.amdsmi_get_gpu_memory_partition, h))
        self.driver_version = text(driver.get("driver_version")) or self.driver_version
        serial = text(board.get("product_serial")) or text(asic.get("asic_serial"))
        dev.identity = DeviceIdentity(
            dev.uuid, "amd", str(index), model=text(asic.get("market_name")),
            pci_bus_id=dev.bdf.upper(), serial=serial,
            driver_version=text(driver.get("driver_version")),
            firmware_version=text(vbios.get("version")),
            architecture=ARCHITECTURES.get(target or "", target),
            compute_capability=target, partition=compute, memory_partition=memory)
        thresholds: dict[tuple[str, str], float] = {}
        for sensor, member in SENSORS:
            for label, metric in THRESHOLDS:
                value = q(dev, f"threshold.{sensor}.{label}", lib.amdsmi_get_temp_metric, h,
                          getattr(lib.AmdSmiTemperatureType, member),
                          getattr(lib.AmdSmiTemperatureMetric, metric))
                if isinstance(value, int | float) and 0 < value < 0xFFFF:
                    thresholds[(sensor, label)] = float(value)
        cus = asic.get("num_compute_units")
        dev.static = {"thresholds": thresholds, "partitions": partitions,
                      "compute_units": cus if isinstance(cus, int) and cus > 0 else None}

