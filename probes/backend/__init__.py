"""What every vendor backend shares, so that a vendor keeps only its library's calls, units
and error codes:

* :mod:`.errors`: the four error classes (unsupported, transient, device-fatal,
  library-fatal), the exceptions of the last two, text as str, and a value outside what the
  hardware can have as absent (``within``);
* :mod:`.query`: the ``Query`` choke point every library call goes through;
* :mod:`.devices`: devices known by UUID, each GPU with its worker and lane, lost and found again
  with backoff;
* :mod:`.lifetime`: the library's lifetime (init with backoff, discovery, shutdown) and the
  device bookkeeping of a vendor's session;
* :mod:`.collectors`: the telemetry poll and the process listing, the same for every vendor;
* :mod:`.events`: the thread that counts a library's device events.
"""

from gpuprobe.probes.backend.collectors import Processes, Telemetry, holders
from gpuprobe.probes.backend.devices import (
    DEVICE_RETRY_MAX,
    STUCK_SECONDS,
    Device,
    down_sample,
    found_again,
    lose,
    run_on_devices,
    settle_seconds,
)
from gpuprobe.probes.backend.errors import (
    DEVICE_FATAL,
    LIBRARY_FATAL,
    TRANSIENT,
    UNSUPPORTED,
    DeviceLost,
    ErrorCodes,
    LibraryDown,
    NotFound,
    text,
    within,
)
from gpuprobe.probes.backend.events import EventWatcher
from gpuprobe.probes.backend.lifetime import Lifetime, Names
from gpuprobe.probes.backend.query import NO_ANSWER, Query, Tally

__all__ = [
    "DEVICE_FATAL", "DEVICE_RETRY_MAX", "LIBRARY_FATAL", "NO_ANSWER", "STUCK_SECONDS",
    "TRANSIENT", "UNSUPPORTED", "Device", "DeviceLost", "ErrorCodes", "EventWatcher",
    "LibraryDown", "Lifetime", "Names", "NotFound", "Processes", "Query", "Tally", "Telemetry",
    "down_sample", "found_again", "holders", "lose", "run_on_devices", "settle_seconds", "text",
    "within",
]
