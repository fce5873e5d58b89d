"""What collectors share: the config, the vendor library objects and long-lived sessions.

In simulation the library objects are the simulated faces and ``proc_root`` points at the
simulator's process tree; the backends cannot tell the difference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from gpuprobe.daemon.core.config import Config

T = TypeVar("T")


class Context:
    def __init__(self, config: Config, *, nvml: Any = None, amdsmi: Any = None,
                 proc_root: str | None = None, simulation: Any = None) -> None:
        self.config = config
        self.simulation = simulation
        self._nvml = nvml
        # The simulated amdsmi face; None means the real package, which the AMD backend
        # imports itself, and only after an isolated child has shown that it loads and inits.
        self.amdsmi_face = amdsmi
        self.proc_root = proc_root or config.host.proc_root
        self.store: Any = None  # the daemon's Store, for collectors that act on what others saw
        self._shared: dict[str, Any] = {}
        self._epoch = time.time()
        self._lock = threading.RLock()  # a factory may ask for another shared object

    def now(self) -> float:
        """Unix seconds, or under simulation the scenario's clock on the same scale (it
        starts at the daemon's start and runs time_acceleration times faster)."""
        if self.simulation is not None:
            return self._epoch + self.simulation.world.clock.now()
        return time.time()

    def nvml(self) -> Any:
        """The pynvml module, or the simulated NVML face."""
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    def shared(self, key: str, factory: Callable[[], T]) -> T:
        """One object per key for every collector that asks (e.g. the NVML session)."""
        with self._lock:
            if key not in self._shared:
                self._shared[key] = factory()
            return self._shared[key]

    def close(self) -> None:
        with self._lock:
            shared, self._shared = self._shared, {}
        for obj in shared.values():
            close = getattr(obj, "close", None)
            if close is not None:
                close()
