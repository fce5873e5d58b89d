"""The one place that talks to NVML: initialisation, discovery and error classification.

Every NVML call of the backend goes through :class:`Query`, which sorts failures into four
classes (as nvitop's ``nvmlQuery`` does for its TUI):

* ``unsupported``: NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND, a pynvml too old for
  the call. Remembered per device and metric; the metric is absent and never asked again.
* ``transient``: anything else a device can answer (TIMEOUT, UNKNOWN, IN_USE, ...). The
  metric is absent this cycle and asked again next cycle.
* ``device_fatal``: GPU_IS_LOST, RESET_REQUIRED, GPU_NOT_FOUND, OPERATING_SYSTEM. The device
  reports down; the others go on; it is looked up again by UUID with backoff.
* ``library_fatal``: UNINITIALIZED, DRIVER_NOT_LOADED, LIBRARY_NOT_FOUND,
  LIB_RM_VERSION_MISMATCH. The backend reports down and is re-initialised with backoff;
  the daemon keeps serving.

``lib`` is the pynvml module: the installed one, or under simulation a private copy of it
over the simulated C library (probes/sim/libnvml.py).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from gpuprobe.daemon.core.config import NvidiaConfig
from gpuprobe.daemon.core.model import BackendStatus, DeviceIdentity
from gpuprobe.daemon.core.workers import Job, Worker
from gpuprobe.probes.backend import (
    DEVICE_FATAL,
    STUCK_SECONDS,
    UNSUPPORTED,
    Device,
    DeviceLost,
    ErrorCodes,
    LibraryDown,
    Lifetime,
    Names,
    NotFound,
    Query,
    found_again,
    text,
    within,
)

log = logging.getLogger("gpuprobe.nvidia")

_CODES = ErrorCodes(
    unsupported={3, 4, 13, 22, 25, 26},  # NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND,
    # VGPU_ECC_NOT_SUPPORTED, ARGUMENT_VERSION_MISMATCH, DEPRECATED
    device_fatal={15, 16, 17, 28},  # GPU_IS_LOST, RESET_REQUIRED, OPERATING_SYSTEM,
    # GPU_NOT_FOUND
    library_fatal={1, 9, 12, 18},  # UNINITIALIZED, DRIVER_NOT_LOADED, LIBRARY_NOT_FOUND,
    # LIB_RM_VERSION_MISMATCH
)
NVML_ERROR_NOT_FOUND = 6
MAX_BOARD_MILLIWATTS = 5_000_000  # a power limit beyond 5 kW is not a GPU board's
MAX_FANS = 16
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_NO_PERMISSION = 4


def classify(lib: Any, exc: BaseException) -> str | None:
    """Error class of an exception raised by an NVML call; None if it is not NVML's."""
    if isinstance(exc, lib.NVMLError):
        return _CODES.class_of(getattr(exc, "value", None))
    # A pynvml without the function, or an unversioned wrapper over a missing symbol.
    if isinstance(exc, AttributeError | lib.NVMLLibraryMismatchError):
        return UNSUPPORTED
    return None


@dataclass(eq=False)
class NvDevice(Device):
    """An NVIDIA GPU or MIG instance."""

    parent: NvDevice | None = None
    gpu_instance_id: int | None = None
    mig_enabled: bool = False


class NvmlSession(Lifetime[NvDevice]):
    """NVML's lifetime in the daemon, shared by the nvidia collectors."""

    names = Names("nvidia", "NVIDIA", "GPU", "NVML", "nvml")
    keeps_partitions_of_gone = False

    def __init__(self, lib: Any, config: NvidiaConfig) -> None:
        super().__init__(config)
        self.lib = lib
        self.config: NvidiaConfig = config
        self.driver_version: str | None = None
        self.library_version: str | None = None

    # -- error mapping (the Classifier protocol of probes/backend) ---------------------------

    def classify(self, exc: BaseException) -> str | None:
        return classify(self.lib, exc)

    def quietly_unsupported(self, exc: BaseException) -> bool:
        return getattr(exc, "value", None) == NVML_ERROR_NO_PERMISSION

    # -- lifetime ---------------------------------------------------------------------------

    def _bring_up(self, errors: Counter, deadline: float) -> None:
        q = self.query(errors)
        try:
            q.init(self.lib.nvmlInit)
        except LibraryDown as e:
            self._library_down(e.__cause__ or e)
            return
        self._now_up()
        try:
            self.driver_version = q.system(self.lib.nvmlSystemGetDriverVersion)
            self.library_version = q.system(self.lib.nvmlSystemGetNVMLVersion)
        except LibraryDown as e:
            self._library_down(e.__cause__ or e)
            return
        self._logged_reason = None
        log.info("NVML initialised: driver %s, NVML %s", self.driver_version,
                 self.library_version)

    def _library_down(self, exc: BaseException) -> None:
        absent = getattr(exc, "value", None) == NVML_ERROR_LIBRARY_NOT_FOUND
        self._down("libnvidia-ml.so.1 not found (no NVIDIA driver on this host)"
                   if absent else str(exc) or type(exc).__name__, absent)

    def _library_shutdown(self) -> None:
        self.lib.nvmlShutdown()

    def status(self) -> BackendStatus:
        return BackendStatus("nvidia", self.up, self.reason, self.library_version,
                             self.driver_version)

    # -- devices ----------------------------------------------------------------------------

    def refind(self, dev: NvDevice, q: Query) -> bool:
        """Look a lost GPU up again by UUID once its backoff has passed (an instance comes
        back with its GPU's discovery); True when it answers."""
        if time.monotonic() < dev.retry_at or dev.parent is not None:
            return False
        lib = self.lib
        try:
            handle = q.find(lib.nvmlDeviceGetHandleByUUID, dev.uuid)
            q.find(lib.nvmlDeviceGetMemoryInfo, handle)
        except NotFound as e:
            self.lose(dev, dev.lost_reason or str(e))
            return False
        dev.handle = handle
        found_again(dev, "answers again")  # its backoff is kept until it has stayed up a while
        self.rediscover_soon()
        return True

    def _discover(self, q: Query, deadline: float) -> None:
        """Enumerate GPUs (and MIG instances) by UUID. Each GPU is looked at on its own
        worker, so one that hangs during discovery holds up only itself."""
        count = q.system(self.lib.nvmlDeviceGetCount) or 0
        by_index = {d.identity.index: d for d in self.physical()}
        jobs: list[tuple[NvDevice | None, tuple[Job, Counter] | None]] = []
        for i in range(count):
            worker = self._worker(f"gpu{i}")
            job = None
            if worker.running_for() <= STUCK_SECONDS:
                errors: Counter = Counter()
                job = (worker.submit(self._discover_index, i, worker, self.query(errors)),
                       errors)
            jobs.append((by_index.get(str(i)), job))
        found, retry_soon = self._gather(jobs, q, deadline)
        self._end_discovery(found, retry_soon)

    def _discover_index(self, i: int, worker: Worker, q: Query) -> list[NvDevice] | None:
        """On GPU ``i``'s worker: its handle, UUID, static facts and MIG instances."""
        lib = self.lib
        try:
            handle = q.find(lib.nvmlDeviceGetHandleByIndex, i)
            uuid = q.find(lib.nvmlDeviceGetUUID, handle)
        except NotFound as e:
            known = next((d for d in self.physical() if d.identity.index == str(i)), None)
            if known is not None and e.cls == DEVICE_FATAL:
                self.lose(known, f"lookup: {e}")
            log.debug("GPU %d: not reachable during discovery (%s)", i, e)
            return None
        dev = self.devices.get(uuid)
        if dev is None:
            dev = NvDevice(uuid, handle, DeviceIdentity(uuid, "nvidia", str(i)), worker,
                           backoff=self.config.retry_initial)
            log.info("GPU %d: found %s", i, uuid)
        elif dev.lost:
            found_again(dev)
        dev.handle, dev.worker = handle, worker
        try:
            self._read_static(dev, q, i)
            children = self._discover_mig(dev, q) if dev.mig_enabled else []
        except DeviceLost as e:
            self.lose(dev, str(e))
            children = []
        return [dev, *children]

    def _discover_mig(self, parent: NvDevice, q: Query) -> list[NvDevice]:
        lib = self.lib
        children = []
        count = q(parent, "mig.count", lib.nvmlDeviceGetMaxMigDeviceCount, parent.handle) or 0
        for j in range(count):
            try:
                handle = lib.nvmlDeviceGetMigDeviceHandleByIndex(parent.handle, j)
            except Exception as e:
                if getattr(e, "value", None) == NVML_ERROR_NOT_FOUND:
                    continue  # an empty slot
                q.failed(parent, f"mig.{j}.handle", e)  # raises if device- or library-fatal
                continue
            uuid = q(parent, f"mig.{j}.uuid", lib.nvmlDeviceGetUUID, handle)
            if not uuid:
                continue
            gi = q(parent, f"mig.{j}.gi", lib.nvmlDeviceGetGpuInstanceId, handle)
            name = q(parent, f"mig.{j}.name", lib.nvmlDeviceGetName, handle)
            p = parent.identity
            identity = DeviceIdentity(
                uuid, "nvidia", f"{p.index}/{gi if gi is not None else j}", model=name,
                pci_bus_id=p.pci_bus_id, serial=p.serial, driver_version=p.driver_version,
                firmware_version=p.firmware_version, architecture=p.architecture,
                compute_capability=p.compute_capability, parent_uuid=parent.uuid,
                partition=name.split(" MIG ", 1)[1] if name and " MIG " in name else None)
            child = self.devices.get(uuid)
            if child is None:
                child = NvDevice(uuid, handle, identity, parent.worker, parent=parent)
            child.handle, child.identity, child.gpu_instance_id = handle, identity, gi
            child.lost = False
            children.append(child)
        return children

    def _read_static(self, dev: NvDevice, q: Query, index: int) -> None:
        """Identity and limits that do not change while the device stays attached."""
        lib, h = self.lib, dev.handle
        name = q(dev, "name", lib.nvmlDeviceGetName, h)
        pci = q(dev, "pci", lib.nvmlDeviceGetPciInfo, h)
        serial = q(dev, "serial", lib.nvmlDeviceGetSerial, h)
        vbios = q(dev, "vbios", lib.nvmlDeviceGetVbiosVersion, h)
        cc = q(dev, "cuda_cc", lib.nvmlDeviceGetCudaComputeCapability, h)
        arch = q(dev, "arch", lib.nvmlDeviceGetArchitecture, h)
        dev.identity = DeviceIdentity(
            dev.uuid, "nvidia", str(index), model=name,
            pci_bus_id=text(pci.busId).upper() if pci is not None else None,
            serial=serial, driver_version=self.driver_version, firmware_version=vbios,
            architecture=ARCHITECTURES.get(arch) if arch is not None else None,
            compute_capability=f"{cc[0]}.{cc[1]}" if cc is not None else None,
        )
        mig = q(dev, "mig.mode", lib.nvmlDeviceGetMigMode, h)
        dev.mig_enabled = bool(mig and mig[0] == 1)
        s: dict[str, Any] = {}
        s["max_generation"] = q(dev, "pcie.max_gen", lib.nvmlDeviceGetMaxPcieLinkGeneration, h)
        s["max_width"] = q(dev, "pcie.max_width", lib.nvmlDeviceGetMaxPcieLinkWidth, h)
        s["max_clocks"] = {
            domain: mhz * 1e6
            for domain, clock in CLOCK_DOMAINS
            if (mhz := q(dev, f"clock.max.{domain}", lib.nvmlDeviceGetMaxClockInfo, h, clock))
        }
        thresholds = {}
        for key, threshold in TEMPERATURE_THRESHOLDS:
            value = q(dev, f"threshold.{key[0]}.{key[1]}", lib.nvmlDeviceGetTemperatureThreshold,
                      h, threshold)
            if value:  # 0 means "not reported"
                thresholds[key] = float(value)
        s["thresholds"] = thresholds
        s["throttle_supported"] = q.first(dev, "throttle.supported", [
            ("nvmlDeviceGetSupportedClocksEventReasons", (h,)),
            ("nvmlDeviceGetSupportedClocksThrottleReasons", (h,)),
        ])
        # The range the power limit can be set in and the board's default: properties of the
        # board, read once (mW).
        bounds = q(dev, "power.constraints", lib.nvmlDeviceGetPowerManagementLimitConstraints,
                   h)
        if bounds is not None:
            low, high = (within(b, 1, MAX_BOARD_MILLIWATTS) for b in bounds)
            if low is not None and high is not None and low <= high:
                s["power_limit_min"], s["power_limit_max"] = low / 1000.0, high / 1000.0
        default = within(q(dev, "power.default", lib.nvmlDeviceGetPowerManagementDefaultLimit,
                           h), 1, MAX_BOARD_MILLIWATTS)
        if default is not None:
            s["power_limit_default"] = default / 1000.0
        # Passively cooled boards answer NOT_SUPPORTED (or 0 fans).
        s["fans"] = int(within(q(dev, "fans", lib.nvmlDeviceGetNumFans, h), 0, MAX_FANS) or 0)
        dev.static = s


# (domain label, NVML clock type)
CLOCK_DOMAINS = (("graphics", 0), ("sm", 1), ("memory", 2), ("video", 3))
# ((sensor, threshold label), NVML threshold type)
TEMPERATURE_THRESHOLDS = (
    (("gpu", "shutdown"), 0),
    (("gpu", "slowdown"), 1),
    (("memory", "max_operating"), 2),
    (("gpu", "max_operating"), 3),
)
# nvmlDeviceArchitecture_t values
ARCHITECTURES = {2: "kepler", 3: "maxwell", 4: "pascal", 5: "volta", 6: "turing", 7: "ampere",
                 8: "ada", 9: "hopper", 10: "blackwell"}

