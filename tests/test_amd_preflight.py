"""The AMD backend's first contact with amdsmi, in a real child process.

Stand-in ``amdsmi`` packages on PYTHONPATH reproduce the real package's failure modes (noise
on stdout and KeyError without libamd_smi.so, AttributeError on a version skew, an init that
never returns, a crash); the installed PyPI amdsmi 7.0.2 is imported for real where present.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from gpuprobe.daemon.core.config import Config, from_mapping
from gpuprobe.probes.amd import library
from gpuprobe.probes.amd.preflight import Preflight, reap
from gpuprobe.probes.amd.session import AmdSession

COMMON = """
import ctypes, enum
__version__ = {version!r}
class AmdSmiException(Exception): pass
class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, code): super().__init__(code); self.err_code = abs(code)
    def get_error_code(self): return self.err_code
class AmdSmiInitFlags(enum.IntEnum):
    INIT_AMD_GPUS = 2
def amdsmi_get_rocm_version(): return (True, {rocm!r})
def amdsmi_get_lib_version(): return {{'major': 26, 'minor': 0, 'release': 2, 'build': '0'}}
def amdsmi_shut_down(): pass
def amdsmi_get_processor_handles(): return [ctypes.c_void_p(1), ctypes.c_void_p(2)]
def __getattr__(name):  # every other call: NOT_SUPPORTED
    if not name.startswith("amdsmi_"):
        raise AttributeError(name)
    def unsupported(*args):
        raise AmdSmiLibraryException(2)
    return unsupported
"""

PACKAGES = {
    "missing": 'print("libamd_smi.so: cannot open shared object file")\n'
               'print("Unable to find libamd_smi.so library try installing amd-smi-lib")\n'
               'raise KeyError("libamd_smi.so")\n',
    "skew": 'raise AttributeError("/opt/rocm/lib/libamd_smi.so: undefined symbol: '
            'amdsmi_get_cpu_affinity_with_scope")\n',
    "ok": COMMON.format(version="7.0.2", rocm="7.0.2") + "def amdsmi_init(flag): pass\n",
    "mismatch": COMMON.format(version="7.0.2", rocm="6.4.1") + "def amdsmi_init(flag): pass\n",
    # the copy ROCm installs: __version__ is the amd-smi library's (as amdsmi_get_lib_version)
    "rocm-copy": COMMON.format(version="26.0.2", rocm="7.0.2") + "def amdsmi_init(flag): pass\n",
    "hang": COMMON.format(version="7.0.2", rocm="7.0.2")
            + "import time\ndef amdsmi_init(flag): time.sleep(3600)\n",
    "nodriver": COMMON.format(version="7.0.2", rocm="7.0.2")
                + "def amdsmi_init(flag): raise AmdSmiLibraryException(34)\n",
    "crash": COMMON.format(version="7.0.2", rocm="7.0.2")
             + "import os\ndef amdsmi_init(flag): os.abort()\n",
}


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Put a stand-in amdsmi package first on the child's (and our) import path."""
    def use(kind: str) -> Path:
        root = tmp_path / kind
        (root / "amdsmi").mkdir(parents=True)
        (root / "amdsmi" / "__init__.py").write_text(textwrap.dedent(PACKAGES[kind]))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
            [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]))
        monkeypatch.syspath_prepend(str(root))
        _forget()
        return root
    yield use
    _forget()  # a stand-in imported in process must not stay for the next test


def _forget() -> None:
    for name in [n for n in sys.modules if n == "amdsmi" or n.startswith("amdsmi.")]:
        del sys.modules[name]


def outcome_of(timeout: float = 20.0):
    pre = Preflight(timeout)
    result = pre.result(wait=timeout + 5)
    assert result is not None
    return result


def test_missing_library_is_absent_and_silent(package, capfd) -> None:
    package("missing")
    with pytest.raises(library.Unavailable) as e:
        library.import_amdsmi()
    assert e.value.absent and "libamd_smi.so not found" in e.value.reason
    assert capfd.readouterr().out == ""  # the package's two lines went nowhere
    out = outcome_of()
    assert not out.ok and out.absent and "libamd_smi.so not found" in out.reason


def test_version_skew_at_import_is_a_fault_not_absence(package) -> None:
    package("skew")
    out = outcome_of()
    assert not out.ok and not out.absent
    assert "undefined symbol amdsmi_get_cpu_affinity_with_scope" in out.reason
    assert "/opt/rocm/share/amd_smi" in out.reason


def test_clean_preflight_counts_gpus_and_versions(package) -> None:
    package("ok")
    out = outcome_of()
    assert out.ok and out.devices == 2
    assert (out.binding, out.rocm, out.library) == ("7.0.2", "7.0.2", "26.0.2")


def test_driver_not_loaded(package) -> None:
    package("nodriver")
    out = outcome_of()
    assert not out.ok and "amdsmi_init failed" in out.reason


def test_hung_init_is_killed_and_abandoned(package) -> None:
    package("hang")
    start = time.monotonic()
    out = outcome_of(timeout=1.5)
    assert time.monotonic() - start < 10
    assert not out.ok and "did not return within 1.5s" in out.reason
    assert reap() == 0  # the child was killed and reaped, none left stuck
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "gpuprobe.probes.amd.preflight" not in ps


def test_crash_in_init_is_reported(package) -> None:
    package("crash")
    out = outcome_of()
    assert not out.ok and "died (signal 6)" in out.reason


def _session(**amd: object) -> AmdSession:
    config: Config = from_mapping({})
    if amd:
        from dataclasses import replace
        config = replace(config, amd=replace(config.amd, **amd))
    return AmdSession(None, config.amd)


def _bring_up(session: AmdSession, seconds: float = 25.0) -> Counter:
    errors: Counter = Counter()
    end = time.monotonic() + seconds
    while session.initialising or session.reason == "not initialised yet":
        session.ensure(errors, time.monotonic() + 1.0)
        assert time.monotonic() < end, session.reason
    return errors


def test_mismatch_refused_with_one_log_line(package, caplog) -> None:
    package("mismatch")
    session = _session(retry_initial=0.01, retry_max=0.01)
    with caplog.at_level(logging.INFO, logger="gpuprobe.amd"):
        errors = _bring_up(session)
        for _ in range(3):  # retries give the same reason: no new line
            time.sleep(0.02)
            _bring_up(session)
    assert not session.up and session.version_mismatch is True
    assert "binding 7.0.2 does not match the installed ROCm 6.4.1" in session.reason
    assert errors["library_fatal"] == 1
    lines = [r for r in caplog.records if "AMD backend unavailable" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    status = session.status()
    assert (status.up, status.version_mismatch, status.binding_version) == (False, True,
                                                                            "7.0.2")


def test_mismatch_allowed_by_config_inits_in_process(package) -> None:
    package("mismatch")
    session = _session(allow_version_mismatch=True)
    _bring_up(session)
    assert session.up and session.version_mismatch is True
    session.close()


def test_absent_library_is_not_a_failure(package, caplog) -> None:
    package("missing")
    session = _session()
    with caplog.at_level(logging.INFO, logger="gpuprobe.amd"):
        _bring_up(session)
    assert not session.up and session.absent
    line = [r for r in caplog.records if "AMD backend unavailable" in r.getMessage()]
    assert len(line) == 1 and line[0].levelno == logging.INFO


def test_real_pypi_amdsmi_without_rocm(capfd) -> None:
    """The published binding on a machine without ROCm: KeyError and noise, caught."""
    if "amdsmi" in sys.modules or not library.package_installed():
        pytest.skip("the amdsmi package is not installed")
    if any(Path(p, "libamd_smi.so").exists() for p in ("/opt/rocm/lib",
                                                        os.environ.get("ROCM_PATH", "/x"))):
        pytest.skip("this host has ROCm")
    with pytest.raises(library.Unavailable) as e:
        library.import_amdsmi()
    assert e.value.absent, e.value.reason
    assert capfd.readouterr().out == ""
    assert not [n for n in sys.modules if n.startswith("amdsmi")]


@pytest.mark.parametrize(("binding", "rocm", "lib", "mismatch"), [
    ("7.0.2", "7.0.2", "26.0.2", False),  # the PyPI wheel of the installed ROCm
    ("7.0.2", "6.4.1", "25.5.1", True),  # a wheel of another ROCm
    ("26.0.2", "7.0.2", "26.0.2", False),  # ROCm's own copy: the library's version scheme
    ("26.0.2+abc123", "7.0.2", "26.0.2", False),
    ("25.5.1", "7.0.2", "26.0.2", True),  # ROCm's copy from another release
    ("26.0.2", "7.0.2", None, None),  # the library's version cannot be read
    ("7.0.2", None, "26.0.2", None),
    (None, "7.0.2", "26.0.2", None),
])
def test_version_check_compares_each_scheme_with_its_own(binding, rocm, lib, mismatch) -> None:
    """Issue 13, defect 1: the binding ROCm installs carries the amd-smi library version
    (24.6.2 on ROCm 6.2.0), which used to be compared with the ROCm release and refused."""
    assert library.Versions(binding, rocm, lib).mismatch is mismatch


def test_the_binding_rocm_installs_initialises(package) -> None:
    package("rocm-copy")
    session = _session()
    _bring_up(session)
    assert session.up and session.version_mismatch is False
    assert session.status().binding_version == "26.0.2"
    session.close()


@pytest.mark.parametrize("binding, up", [("26.0.2", True), ("25.1.0", False)])
def test_simulated_rocm_binding_through_the_real_package(binding, up) -> None:
    """The real amdsmi package over the simulated library, its ``__version__`` set as the copy
    ROCm installs writes it: the matching library version initialises, another is refused."""
    from tests.conftest import make_daemon

    d = make_daemon({"seed": 1, "amdsmi": {"rocm_version": "7.0.2", "library_version": "26.0.2",
                                           "binding_version": binding},
                     "devices": [{"vendor": "amd", "model": "AMD Instinct MI300X",
                                  "architecture": "cdna3", "memory": "192GiB"}]})
    try:
        d.scheduler.run_once()
        amd = d.sources.amd_session()
        assert amd.up is up and amd.version_mismatch is (not up)
        assert amd.status().binding_version == binding
        assert len(d.store.view().devices()) == (1 if up else 0)
    finally:
        d.stop()


@pytest.mark.parametrize("value", ["seven", 7.0, "7.0", "1.2.3.4x"])
def test_scenario_amdsmi_version_must_be_a_version(value) -> None:
    from gpuprobe.probes.sim.scenario import ScenarioError, parse

    with pytest.raises(ScenarioError, match=r"amdsmi\.rocm_version: expected a version"):
        parse({"amdsmi": {"rocm_version": value},
               "devices": [{"vendor": "amd", "model": "AMD Instinct MI300X"}]})
