"""The one place that talks to amdsmi's lifetime: preflight, init, discovery, partitions.

Errors of every call go through :class:`~gpuprobe.probes.backend.Query` with amdsmi's
mapping (:func:`classify`). Devices are keyed by PCI address, not UUID: many Radeon
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
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gpuprobe.daemon.core.config import AmdConfig
from gpuprobe.daemon.core.model import BackendStatus, DeviceIdentity
from gpuprobe.daemon.core.workers import Job, Worker
from gpuprobe.probes.amd.library import (
    STATUS_ADDRESS_FAULT,
    STATUS_DRIVER_NOT_LOADED,
    STATUS_FAIL_LOAD_MODULE,
    STATUS_FAIL_LOAD_SYMBOL,
    STATUS_FILE_ERROR,
    STATUS_FILE_NOT_FOUND,
    STATUS_INIT_ERROR,
    STATUS_NO_PERM,
    STATUS_NOT_FOUND,
    STATUS_NOT_INIT,
    STATUS_NOT_SUPPORTED,
    STATUS_NOT_YET_IMPLEMENTED,
    Unavailable,
    Versions,
    binding_bug,
    error_code,
    import_amdsmi,
    package_installed,
    text,
)
from gpuprobe.probes.amd.preflight import Preflight, describe, reap
from gpuprobe.probes.backend import (
    LIBRARY_FATAL,
    STUCK_SECONDS,
    UNSUPPORTED,
    Device,
    DeviceLost,
    ErrorCodes,
    Lifetime,
    Names,
    NotFound,
    Query,
    found_again,
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

_CODES = ErrorCodes(
    unsupported={STATUS_NOT_SUPPORTED, STATUS_NOT_YET_IMPLEMENTED, STATUS_NO_PERM,
                 STATUS_ADDRESS_FAULT, STATUS_FILE_ERROR, STATUS_FILE_NOT_FOUND},
    device_fatal={STATUS_NOT_FOUND},
    library_fatal={STATUS_FAIL_LOAD_MODULE, STATUS_FAIL_LOAD_SYMBOL, STATUS_INIT_ERROR,
                   STATUS_NOT_INIT, STATUS_DRIVER_NOT_LOADED},
)


def classify(lib: Any, exc: BaseException) -> str | None:
    """Error class of an exception raised by an amdsmi call; None if it is not amdsmi's."""
    library_exception = getattr(lib, "AmdSmiLibraryException", None)
    if library_exception is not None and isinstance(exc, library_exception):
        return _CODES.class_of(error_code(exc))  # else transient: RETRY, TIMEOUT, BUSY, ...
    base = getattr(lib, "AmdSmiException", None)
    if base is not None and isinstance(exc, base):
        return UNSUPPORTED  # a parameter the binding refuses (an enum it lacks)
    # The 7.0.2 binding's own bugs surface as Python errors: ValueError for values its enums
    # lack, TypeError and AttributeError in a few functions, KeyError in dict building. They
    # are permanent for that call on that device.
    if isinstance(exc, ValueError | TypeError | AttributeError | KeyError):
        return UNSUPPORTED
    return None


def unique_uuid(raw: str) -> bool:
    """Whether a UUID from amdsmi names one GPU. The library builds it as uuid_gen(serial,
    device_id, 0xff): a part without a unique serial (many Radeon and integrated parts)
    gets one from its device id alone, ``00ff7448-0000-1000-8000-000000000000`` on every
    W7900, and older libraries all zeros but the version and variant."""
    digits = raw.replace("-", "").lower()
    groups = raw.lower().split("-")
    if sum(c not in "0f" for c in digits) <= 2 or set(digits) <= {"f", "x"}:
        return False
    return not (len(groups) == 5 and groups[1] == "0000" and set(groups[4]) <= {"0"})


@dataclass(eq=False)
class AmdDevice(Device):
    """A physical AMD GPU (read through partition 0's handle) or one of its partitions."""

    parent: AmdDevice | None = None
    bdf: str = ""
    partition_index: int | None = None
    children: list[AmdDevice] = field(default_factory=list)

    @property
    def physical(self) -> AmdDevice:
        return self.parent or self


def physical_bdf(bdf: str) -> str:
    """The address of partition 0 (function 0) of a partition's BDF."""
    return bdf[:-1] + "0" if re.fullmatch(r"[0-9a-fA-F:]+\.\d", bdf) else bdf


class AmdSession(Lifetime[AmdDevice]):
    """amdsmi's lifetime in the daemon, shared by the AMD collectors."""

    names = Names("amd", "AMD", "AMD GPU", "amdsmi", "amdsmi")
    keeps_partitions_of_gone = True

    def __init__(self, face: Any, config: AmdConfig) -> None:
        """``face``: the simulated amdsmi, or None for the real package (imported only
        after an isolated child has shown that it loads and initialises)."""
        super().__init__(config)
        self.face = face
        self.lib: Any = None
        self.config: AmdConfig = config
        self.versions: Versions | None = None
        self.version_mismatch: bool | None = None
        self.driver_version: str | None = None
        self._preflight: Preflight | None = None
        self._init_worker = Worker("amdsmi-init")
        self._discovery_worker = Worker("amdsmi-discovery")
        self._indices: dict[str, int] = {}  # physical BDF -> the gpu label's number
        self._claimed: set[str] = set()  # UUIDs given out in the discovery under way
        self._claim_lock = threading.Lock()

    # -- error mapping (the Classifier protocol of probes/backend) ---------------------------

    def classify(self, exc: BaseException) -> str | None:
        return classify(self.lib, exc)

    def quietly_unsupported(self, exc: BaseException) -> bool:
        return error_code(exc) == STATUS_NO_PERM or binding_bug(exc)

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
        self._now_up()
        self._logged_reason = None
        v = self.versions
        log.info("amdsmi initialised: ROCm %s, library %s, Python binding %s%s",
                 v.rocm or "unknown", v.library or "unknown", v.binding or "unknown",
                 " (MISMATCH allowed by amd.allow_version_mismatch)"
                 if self.version_mismatch else "")

    def _library_down(self, exc: BaseException) -> None:
        self._down(describe(exc))

    def _down(self, reason: str, absent: bool = False) -> None:
        if absent:  # no AMD software on this host: look again only every retry_max
            self._backoff = self.config.retry_max
        super()._down(reason, absent)

    def _library_shutdown(self) -> None:
        self.lib.amdsmi_shut_down()

    def _all_workers(self) -> list[Worker]:
        return [*self._workers.values(), self._init_worker, self._discovery_worker]

    def status(self) -> BackendStatus:
        v = self.versions
        return BackendStatus("amd", self.up, self.reason, v.library if v else None,
                             self.driver_version, v.binding if v else None,
                             self.version_mismatch)

    # -- devices ----------------------------------------------------------------------------

    def family(self, dev: AmdDevice) -> list[AmdDevice]:
        return [dev, *dev.children]

    def lose(self, dev: AmdDevice, reason: str) -> None:
        """A partition is not lost alone: its GPU is, and what was read of its partitions
        is dropped with it."""
        dev = dev.physical
        super().lose(dev, reason)
        for child in dev.children:
            child.state.clear()

    def refind(self, dev: AmdDevice, q: Query) -> bool:
        """A lost GPU is looked for by enumerating again (its handles may have changed),
        once its backoff has passed; it is read once that discovery has found it."""
        if time.monotonic() >= dev.retry_at:
            self.rediscover_soon()
            dev.retry_at = time.monotonic() + dev.backoff
        return False

    def _discover(self, q: Query, deadline: float) -> None:
        """Enumerate handles, group partitions under their GPU, read static facts; each GPU
        on its own worker so that one hanging holds up only itself."""
        lib = self.lib
        if self._discovery_worker.running_for() > STUCK_SECONDS:
            self._next_discovery = time.monotonic() + self.config.retry_initial
            return
        job = self._discovery_worker.submit(lib.amdsmi_get_processor_handles)
        try:  # the enumeration's outcome, through the choke point
            handles = q.find(job.result, timeout=max(0.0, (deadline - time.monotonic()) / 2))
        except TimeoutError:
            job.cancel()
            log.warning("amdsmi enumeration did not answer in time; keeping the devices known")
            self._next_discovery = time.monotonic() + self.config.retry_initial
            return
        except NotFound:
            self._next_discovery = time.monotonic() + self.config.retry_initial
            return
        addressed, unaddressed = self._addresses(
            handles, q, time.monotonic() + (deadline - time.monotonic()) / 2)
        self._claimed = set()
        groups: dict[str, list[tuple[int, str, Any]]] = {}
        for bdf, handle in addressed:
            fn = int(bdf[-1]) if bdf[-1:].isdigit() else 0
            groups.setdefault(physical_bdf(bdf), []).append((fn, bdf, handle))
        for pbdf in sorted(groups):  # a GPU keeps its index while the daemon runs
            self._indices.setdefault(pbdf, len(self._indices))
        by_bdf = {d.bdf: d for d in self.physical()}
        jobs: list[tuple[AmdDevice | None, tuple[Job, Counter] | None]] = []
        for pbdf in sorted(groups):
            index = self._indices[pbdf]
            handles = sorted(groups[pbdf], key=lambda h: h[0])
            worker = self._worker(pbdf)
            read: tuple[Job, Counter] | None = None
            # a worker inside a hung call: the GPU stays known (it reads down), as one whose
            # read times out does; dropping it hid it from /metrics
            if worker.running_for() <= STUCK_SECONDS:
                errors: Counter = Counter()
                read = (worker.submit(self._read_gpu, index, pbdf, handles, worker,
                                      self.query(errors)), errors)
            jobs.append((by_bdf.get(pbdf), read))
        found, retry_soon = self._gather(jobs, q, deadline)
        # a GPU that went away stays known, down; lost only if every handle was addressed
        self._end_discovery(found, retry_soon or unaddressed, whole=not unaddressed,
                            replaced=lambda dev: dev.bdf in groups)

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
                bdf = q.find(job.result, timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                job.cancel()
                missed = True
            except NotFound:
                missed = True
            else:
                out.append((str(bdf).lower(), h))
        return out, missed

    def _uuid(self, handle: Any, bdf: str, q: Query, probe: AmdDevice, taken: set[str]
              ) -> str:
        raw = text(q(probe, "uuid", self.lib.amdsmi_get_gpu_device_uuid, handle))
        if not raw or not unique_uuid(raw):
            return f"AMD-{bdf}"  # the PCI address is the identity of last resort
        with self._claim_lock:  # GPUs are read in parallel: one UUID, one GPU
            if raw in taken or raw in self._claimed:
                return f"AMD-{bdf}"
            self._claimed.add(raw)
        return raw

    def _read_gpu(self, index: int, pbdf: str, handles: list[tuple[int, str, Any]],
                  worker: Worker, q: Query) -> list[AmdDevice] | None:
        """On the GPU's worker: identity, partitions and static facts of one physical GPU;
        its family, or None when it could not be reached."""
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
                return self.family(known)
            return None
        dev.children = children
        return self.family(dev)

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

