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

``lib`` is the pynvml module or the simulated face with the same names.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpuprobe.daemon.core.config import NvidiaConfig
from gpuprobe.daemon.core.model import BackendStatus, DeviceIdentity
from gpuprobe.daemon.core.workers import Job, Worker
from gpuprobe.probes.backend import (
    DEVICE_FATAL,
    LIBRARY_FATAL,
    STUCK_SECONDS,
    TRANSIENT,
    UNSUPPORTED,
    Device,
    DeviceLost,
    LibraryDown,
    Lifetime,
    found_again,
    lose,
)
from gpuprobe.probes.backend import Query as BaseQuery
from gpuprobe.probes.backend import (
    run_on_devices as run_on_devices,  # re-exported for the collectors
)

log = logging.getLogger("gpuprobe.nvidia")

_UNSUPPORTED_CODES = {3, 4, 13, 22, 25, 26}  # NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND,
# VGPU_ECC_NOT_SUPPORTED, ARGUMENT_VERSION_MISMATCH, DEPRECATED
_DEVICE_FATAL_CODES = {15, 16, 17, 28}  # GPU_IS_LOST, RESET_REQUIRED, OPERATING_SYSTEM,
# GPU_NOT_FOUND
_LIBRARY_FATAL_CODES = {1, 9, 12, 18}  # UNINITIALIZED, DRIVER_NOT_LOADED, LIBRARY_NOT_FOUND,
# LIB_RM_VERSION_MISMATCH
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_NO_PERMISSION = 4


def classify(lib: Any, exc: BaseException) -> str | None:
    """Error class of an exception raised by an NVML call; None if it is not NVML's."""
    if isinstance(exc, lib.NVMLError):
        code = getattr(exc, "value", None)
        if code in _UNSUPPORTED_CODES:
            return UNSUPPORTED
        if code in _DEVICE_FATAL_CODES:
            return DEVICE_FATAL
        if code in _LIBRARY_FATAL_CODES:
            return LIBRARY_FATAL
        return TRANSIENT
    # A pynvml without the function, or an unversioned wrapper over a missing symbol.
    if isinstance(exc, AttributeError | lib.NVMLLibraryMismatchError):
        return UNSUPPORTED
    return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass(eq=False)
class NvDevice(Device):
    """An NVIDIA GPU or MIG instance."""

    parent: NvDevice | None = None
    gpu_instance_id: int | None = None
    mig_enabled: bool = False


class Query(BaseQuery):
    """Call NVML for one collection, classifying and counting errors (the choke point)."""

    def __init__(self, session: NvmlSession, errors: Counter) -> None:
        super().__init__(session, errors, log)


class NvmlSession(Lifetime):
    """NVML's lifetime in the daemon, shared by the nvidia collectors."""

    def __init__(self, lib: Any, config: NvidiaConfig) -> None:
        super().__init__()
        self.lib = lib
        self.config = config
        self.absent = False
        self.reason: str | None = "not initialised yet"
        self.generation = 0
        self.driver_version: str | None = None
        self.library_version: str | None = None
        self.devices: dict[str, NvDevice] = {}
        self._backoff = config.retry_initial
        self._logged_reason: str | None = None
        self._workers: dict[str, Worker] = {}
        self._closers: list[Callable[[], None]] = []

    def classify(self, exc: BaseException) -> str | None:
        return classify(self.lib, exc)

    def quietly_unsupported(self, exc: BaseException) -> bool:
        return getattr(exc, "value", None) == NVML_ERROR_NO_PERMISSION

    # -- lifetime ---------------------------------------------------------------------------

    def query(self, errors: Counter) -> Query:
        return Query(self, errors)

    def _bring_up(self, errors: Counter, deadline: float) -> None:
        try:
            self.lib.nvmlInit()
        except Exception as e:
            cls = classify(self.lib, e)
            if cls is None:
                raise
            errors[LIBRARY_FATAL if cls != UNSUPPORTED else cls] += 1
            self._down(e)
            return
        self.up = True
        self.absent = False
        self.reason = None
        self.generation += 1
        self._backoff = self.config.retry_initial
        self._next_discovery = 0.0
        q = Query(self, errors)
        try:
            self.driver_version = _text(q.system(self.lib.nvmlSystemGetDriverVersion))
            self.library_version = _text(q.system(self.lib.nvmlSystemGetNVMLVersion))
        except LibraryDown as e:
            self._down(e.__cause__ or e)
            return
        self._logged_reason = None
        log.info("NVML initialised: driver %s, NVML %s", self.driver_version,
                 self.library_version)

    def _library_down(self, exc: BaseException) -> None:
        self._down(exc)

    def _down(self, exc: BaseException) -> None:
        code = getattr(exc, "value", None)
        self.absent = code == NVML_ERROR_LIBRARY_NOT_FOUND
        self.reason = ("libnvidia-ml.so.1 not found (no NVIDIA driver on this host)"
                       if self.absent else str(exc) or type(exc).__name__)
        was_up, self.up = self.up, False
        self._failure_seen()
        if was_up:
            for closer in self._closers:
                closer()
            try:
                self.lib.nvmlShutdown()
            except Exception:
                pass
        for dev in self.devices.values():
            dev.state.clear()
        self._retry_at = time.monotonic() + self._backoff
        if self.reason != self._logged_reason:
            self._logged_reason = self.reason
            level = logging.INFO if self.absent else logging.WARNING
            log.log(level, "NVIDIA backend unavailable: %s; retrying every %.0fs at most",
                    self.reason, self.config.retry_max)
        self._backoff = min(self._backoff * 2, self.config.retry_max)

    def on_shutdown(self, closer: Callable[[], None]) -> None:
        """Run ``closer`` before NVML is shut down (to free GPM samples, event sets)."""
        self._closers.append(closer)

    def close(self) -> None:
        with self._lock:
            if self.up:
                for closer in self._closers:
                    closer()
                try:
                    self.lib.nvmlShutdown()
                except Exception:
                    pass
                self.up = False
            for w in self._workers.values():
                w.stop()

    def status(self) -> BackendStatus:
        return BackendStatus("nvidia", self.up, self.reason, self.library_version,
                             self.driver_version)

    # -- devices ----------------------------------------------------------------------------

    def known(self) -> list[NvDevice]:
        return list(self.devices.values())

    def _lose(self, dev: NvDevice, reason: str) -> None:
        lose(dev, reason, self.config.retry_initial, self.config.retry_max)

    def _worker(self, name: str) -> Worker:
        if name not in self._workers:
            self._workers[name] = Worker(f"nvml-{name}")
        return self._workers[name]

    def _discover(self, q: BaseQuery, deadline: float) -> None:
        """Enumerate GPUs (and MIG instances) by UUID. Each GPU is looked at on its own
        worker, so one that hangs during discovery holds up only itself."""
        count = q.system(self.lib.nvmlDeviceGetCount) or 0
        by_index = {d.identity.index: d for d in self.devices.values() if d.parent is None}
        jobs: dict[int, tuple[Job, Counter] | None] = {}
        for i in range(count):
            worker = self._worker(f"gpu{i}")
            if worker.running_for() > STUCK_SECONDS:
                jobs[i] = None
            else:
                errors: Counter = Counter()
                jobs[i] = (worker.submit(self._discover_index, i, worker, Query(self, errors)),
                           errors)
        found: dict[str, NvDevice] = {}
        retry_soon = False
        library_down: BaseException | None = None
        for i, job in jobs.items():
            result: Any = None
            if job is not None:
                fut, errors = job
                try:
                    result = fut.result(timeout=max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    fut.cancel()
                except LibraryDown as e:
                    library_down = e
                q.errors.update(errors)
                retry_soon |= TRANSIENT in errors
            if isinstance(result, list):
                found.update((d.uuid, d) for d in result)
                continue
            # Not answered in time, or not reachable: a GPU we knew stays as it was.
            retry_soon = True
            known = by_index.get(str(i))
            if known is not None:
                found[known.uuid] = known
                found.update((c.uuid, c) for c in self.devices.values() if c.parent is known)
        if library_down is not None:
            raise library_down
        # A physical GPU that disappeared stays known, and down, so alerts see it.
        for uuid, dev in self.devices.items():
            if uuid not in found and dev.parent is None:
                if not dev.lost:
                    self._lose(dev, "no longer enumerated by NVML")
                found[uuid] = dev
        self.devices = found
        delay = self.config.retry_initial if retry_soon else self.config.discovery_interval
        self._discovery_done(delay)

    def _discover_index(self, i: int, worker: Worker, q: Query) -> list[NvDevice] | None:
        """On GPU ``i``'s worker: its handle, UUID, static facts and MIG instances."""
        lib = self.lib
        try:
            handle = lib.nvmlDeviceGetHandleByIndex(i)
            uuid = _text(lib.nvmlDeviceGetUUID(handle))
        except Exception as e:
            cls = classify(lib, e)
            if cls is None:
                raise
            q.errors[cls] += 1
            if cls == LIBRARY_FATAL:
                raise LibraryDown(e) from e
            known = next((d for d in self.devices.values()
                          if d.parent is None and d.identity.index == str(i)), None)
            if known is not None and cls == DEVICE_FATAL:
                self._lose(known, f"lookup: {e}")
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
            self._lose(dev, str(e))
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
                q._failed(parent, f"mig.{j}.handle", e)  # raises if device- or library-fatal
                continue
            uuid = _text(q(parent, f"mig.{j}.uuid", lib.nvmlDeviceGetUUID, handle) or "")
            if not uuid:
                continue
            gi = q(parent, f"mig.{j}.gi", lib.nvmlDeviceGetGpuInstanceId, handle)
            name = q(parent, f"mig.{j}.name", lib.nvmlDeviceGetName, handle)
            name = _text(name) if name is not None else None
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
            dev.uuid, "nvidia", str(index),
            model=_text(name) if name is not None else None,
            pci_bus_id=_text(pci.busId).upper() if pci is not None else None,
            serial=_text(serial) if serial is not None else None,
            driver_version=self.driver_version,
            firmware_version=_text(vbios) if vbios is not None else None,
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

