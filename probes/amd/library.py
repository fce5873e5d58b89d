"""The amdsmi package as the AMD backend sees it: loading, errors, sentinels and units.

Every trap of amdsmi 7.0.2 that is not about one call lives here (see
``../shared/reference/amd-smi.md`` and ``docs/hardware/amd.md``):

* ``import amdsmi`` prints two lines to stdout and raises ``KeyError`` when libamd_smi.so is
  missing, and ``AttributeError`` (an undefined symbol) when the library is older than the
  binding. :func:`import_amdsmi` silences the noise and turns each failure into one reason.
* The binding's ctypes structures must match the library, or the library writes past them;
  :func:`versions` reads both versions so the session can refuse a mismatch.
* The binding turns some all-ones "not available" values into ``'N/A'`` and passes others
  through as 65535, 4294967295 or 18446744073709551615; :func:`clean` maps all of them to
  None, never to 0.
* Units differ per call: MB and bytes, microwatts and watts, MT/s and tenths of GT/s,
  energy ticks of about 15.3 microjoules. The converters below are the only place they are
  turned into base units.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import sys
from dataclasses import dataclass
from typing import Any

# amdsmi_status_t codes
STATUS_NOT_SUPPORTED, STATUS_NOT_YET_IMPLEMENTED = 2, 3
STATUS_FAIL_LOAD_MODULE, STATUS_FAIL_LOAD_SYMBOL = 4, 5
STATUS_NO_PERM = 10
STATUS_ADDRESS_FAULT, STATUS_FILE_ERROR = 13, 14
STATUS_INIT_ERROR = 18
STATUS_NO_DATA = 40  # AmdSmiEventReader.read: no event arrived in the wait
STATUS_NOT_FOUND, STATUS_NOT_INIT = 31, 32
STATUS_DRIVER_NOT_LOADED = 34
STATUS_FILE_NOT_FOUND = 52

ALL_ONES = (0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


class Unavailable(Exception):
    """amdsmi cannot be used on this host. ``absent`` when there is simply no AMD software
    (no package or no libamd_smi.so): that is normal on an NVIDIA-only host, not a fault."""

    def __init__(self, reason: str, absent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.absent = absent


def package_installed() -> bool:
    """Whether an ``amdsmi`` package can be found, without importing it."""
    return importlib.util.find_spec("amdsmi") is not None


def import_amdsmi() -> Any:
    """The amdsmi module, imported with its stdout/stderr noise swallowed.

    Raises :class:`Unavailable` naming what is wrong; never KeyError or AttributeError.
    """
    noise = io.StringIO()
    try:
        with contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
            return importlib.import_module("amdsmi")
    except ModuleNotFoundError as e:
        if e.name not in (None, "amdsmi"):
            raise Unavailable(f"amdsmi cannot be imported: {e}", absent=False) from None
        raise Unavailable("the amdsmi Python package is not installed", absent=True) from None
    except KeyError:
        raise Unavailable("libamd_smi.so not found (no ROCm on this host; set ROCM_PATH if it "
                          "is installed elsewhere)", absent=True) from None
    except AttributeError as e:
        symbol = re.search(r"undefined symbol: (\w+)", str(e))
        what = f" (undefined symbol {symbol.group(1)})" if symbol else f": {e}"
        raise Unavailable("the amdsmi Python package is newer than libamd_smi.so" + what +
                          "; install the binding that ships with ROCm "
                          "(/opt/rocm/share/amd_smi)", absent=False) from None
    except (ImportError, OSError) as e:
        raise Unavailable(f"amdsmi cannot be loaded: {e}", absent=False) from None
    finally:
        _forget_failed_import()


def _forget_failed_import() -> None:
    # A failed import leaves half-initialised submodules behind; drop them so a later retry
    # (after ROCm is installed) starts clean.
    if "amdsmi" not in sys.modules:
        for name in [n for n in sys.modules if n.startswith("amdsmi.")]:
            del sys.modules[name]


def error_code(exc: BaseException) -> int | None:
    getter = getattr(exc, "get_error_code", None)
    code = getter() if callable(getter) else getattr(exc, "err_code", None)
    return abs(code) if isinstance(code, int) else None


def binding_bug(exc: BaseException) -> bool:
    """A plain Python error raised inside the binding (worth an INFO line, not DEBUG)."""
    return type(exc) in (ValueError, TypeError, AttributeError, KeyError)


# -- values ---------------------------------------------------------------------------------

def clean(value: Any, bits: int | None = None) -> Any:
    """None for 'N/A', None, and the all-ones "unsupported" value of the field's width
    (any width when ``bits`` is None); the value otherwise."""
    if value is None or (isinstance(value, str) and value.strip().upper() in ("N/A", "")):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if bits is not None:
            return None if value == (1 << bits) - 1 else value
        return None if value in ALL_ONES else value
    return value


def number(value: Any, bits: int | None = None) -> float | None:
    """A cleaned numeric value, or None (a string that is not 'N/A' is not a number)."""
    v = clean(value, bits)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def percent_ratio(value: Any) -> float | None:
    """An activity percentage (0-100) as a ratio; None for N/A, sentinels and out of range."""
    v = number(value)
    if v is None or not 0 <= v <= 100:
        return None
    return v / 100.0


def text(value: Any) -> str | None:
    v = clean(value)
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def mhz_to_hertz(value: Any) -> float | None:
    v = number(value, 32)
    return v * 1e6 if v else None  # 0 MHz means the clock is not reported


def microwatts_to_watts(value: Any) -> float | None:
    v = number(value)
    return v / 1e6 if v else None


def energy_joules(info: Any) -> float | None:
    """amdsmi_get_energy_count: accumulator ticks times the resolution in microjoules."""
    if not isinstance(info, dict):
        return None
    ticks = number(info.get("energy_accumulator"), 64)
    resolution = number(info.get("counter_resolution"))
    if ticks is None or not resolution:
        return None
    return ticks * resolution / 1e6


_GENERATION_MTS = {2500: 1, 5000: 2, 8000: 3, 16000: 4, 32000: 5, 64000: 6}


def generation_from_mts(value: Any) -> int | None:
    """PCIe generation from a link speed in MT/s (amdsmi_get_pcie_info: 16000 is Gen4)."""
    v = number(value, 32)
    return _GENERATION_MTS.get(int(v)) if v else None


def generation_from_tenths_gts(value: Any) -> int | None:
    """PCIe generation from a speed in tenths of GT/s (gpu_metrics pcie_link_speed: 320)."""
    v = number(value, 16)
    return _GENERATION_MTS.get(int(v) * 100) if v else None


# -- versions -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Versions:
    binding: str | None  # the Python package (amdsmi.__version__), e.g. "7.0.2"
    rocm: str | None  # librocm-core's ROCm version, e.g. "7.0.2"
    library: str | None  # libamd_smi's own version, e.g. "26.0.2"

    @property
    def mismatch(self) -> bool | None:
        """True when the binding was cut from another release than the one installed; None
        when that cannot be told.

        The binding's version follows one of two schemes: the PyPI wheel carries the ROCm
        release (7.0.2), while the copy ROCm installs (/opt/rocm/share/amd_smi) carries the
        amd-smi library's own version (24.6.2 on ROCm 6.2.0: amdsmi's py-interface
        CMakeLists writes it). Each is compared with its own counterpart."""
        if not self.binding:
            return None
        binding = _release(self.binding)
        other = self.library if _library_scheme(binding) else self.rocm
        if not other:
            return None
        return binding != _release(other)


def _release(version: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\d+", version)[:3])


# amd-smi library versions count from 24 (ROCm 6.2); ROCm releases are single digits.
LIBRARY_SCHEME_FROM = 20


def _library_scheme(release: tuple[str, ...]) -> bool:
    return bool(release) and int(release[0]) >= LIBRARY_SCHEME_FROM


def versions(lib: Any) -> Versions:
    """The binding's, ROCm's and the library's versions; none of these calls needs init."""
    binding = getattr(lib, "__version__", None)
    if not binding:
        try:
            from importlib import metadata

            binding = metadata.version("amdsmi")
        except Exception:
            binding = None
    rocm = library = None
    try:
        ok, rocm_version = lib.amdsmi_get_rocm_version()
        rocm = str(rocm_version) if ok else None
    except Exception:
        rocm = None
    try:
        v = lib.amdsmi_get_lib_version()
        # 7.0.2 returns only the first character of the build string: leave it out.
        library = ".".join(str(v[k]) for k in ("major", "minor", "release"))
    except Exception:
        library = None
    return Versions(str(binding) if binding else None, rocm, library)
