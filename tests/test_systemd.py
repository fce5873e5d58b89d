"""systemd integration: the notify protocol over a real unix datagram socket, the watchdog
driven by the scheduler's liveness, and the shipped unit accepted by systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gpuprobe.daemon.core.childenv import child_environment
from gpuprobe.daemon.service.cli import supervise
from gpuprobe.daemon.service.systemd import Notifier

from .conftest import ROOT, free_port, gpuprobe_cmd

UNIT = ROOT / "deploy" / "systemd" / "gpuprobe.service"


@pytest.fixture
def listener(tmp_path):
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(0.2)
    yield s, str(path)
    s.close()


def drain(s: socket.socket, until: float, stop_on: str | None = None) -> list[tuple[float, str]]:
    got = []
    while time.monotonic() < until:
        try:
            got.append((time.monotonic(), s.recv(4096).decode()))
        except TimeoutError:
            continue
        if stop_on and stop_on in got[-1][1]:
            break
    return got


def test_notifier_addresses_and_watchdog_settings():
    assert not Notifier({}).enabled and Notifier({}).notify("READY=1") is False
    assert Notifier({"NOTIFY_SOCKET": "@sd-notify"}).address == "\0sd-notify"
    assert Notifier({"NOTIFY_SOCKET": "relative"}).address is None
    n = Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_seconds == 30.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_seconds is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_seconds is None
    env = child_environment({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "PATH": "/bin"})
    assert env == {"PATH": "/bin"}


def test_abstract_socket(tmp_path):
    name = f"gpuprobe-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify("STATUS=hello")
        assert s.recv(100) == b"STATUS=hello"
    finally:
        s.close()


def test_daemon_sends_ready_after_binding_then_watchdog_then_stopping(listener):
    s, path = listener
    port = free_port()
    proc = subprocess.Popen(gpuprobe_cmd("run", "--simulate", "--listen", f"127.0.0.1:{port}"),
                            env={**os.environ, "NOTIFY_SOCKET": path,
                                 "WATCHDOG_USEC": "1000000"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ready_at, bound_at_ready = None, None
        deadline = time.monotonic() + 30
        messages: list[tuple[float, str]] = []
        while ready_at is None and time.monotonic() < deadline:
            for t, m in drain(s, time.monotonic() + 0.2):
                messages.append((t, m))
                if "READY=1" in m:
                    ready_at = t
                    with socket.socket() as c:  # the port must already accept connections
                        bound_at_ready = c.connect_ex(("127.0.0.1", port)) == 0
        assert ready_at is not None, messages
        assert bound_at_ready
        ready = next(m for _, m in messages if "READY=1" in m)
        assert re.search(r"STATUS=serving 127\.0\.0\.1:\d+; 12 devices", ready)
        assert f"MAINPID={proc.pid}" in ready
        after = drain(s, time.monotonic() + 2.6)
        pings = [t for t, m in after if m == "WATCHDOG=1"]
        assert len(pings) >= 4  # every half of WATCHDOG_USEC, i.e. every 0.5 s
        proc.send_signal(signal.SIGTERM)
        tail = drain(s, time.monotonic() + 10, stop_on="STOPPING=1")
        assert tail and "STOPPING=1" in tail[-1][1]
        assert proc.wait(15) == 0
        assert proc.stderr.read().count("received SIGTERM") == 1
    finally:
        if proc.poll() is None:
            proc.kill()


class _FakeDaemon:
    def __init__(self, alive: bool) -> None:
        self._alive = alive
        self.scheduler = type("S", (), {"attempted_all": lambda self: True,
                                        "heartbeat": time.monotonic() - 100})()
        self.store = type("St", (), {"view": lambda self: type("V", (), {
            "devices": lambda self: []})()})()
        self.config = type("C", (), {"listen": "127.0.0.1:1"})()

    def alive(self) -> bool:
        return self._alive


@pytest.mark.parametrize("alive", [True, False])
def test_watchdog_follows_the_scheduler_not_the_gpus(listener, alive):
    s, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000",
                         "WATCHDOG_PID": str(os.getpid())})
    stop = threading.Event()
    t = threading.Thread(target=supervise, args=(_FakeDaemon(alive), stop, notifier))
    t.start()
    got = [m for _, m in drain(s, time.monotonic() + 1.0)]
    stop.set()
    t.join(5)
    got += [m for _, m in drain(s, time.monotonic() + 0.5)]
    assert any("READY=1" in m for m in got)
    pings = got.count("WATCHDOG=1")
    if alive:
        assert pings >= 3
    else:
        assert pings == 0  # a wedged scheduler stops the pings: systemd restarts us
    assert "STOPPING=1" in got[-1]


def _unit_for_this_checkout(tmp_path: Path) -> Path:
    """The unit as shipped, its ExecStart pointed at this checkout's gpuprobe
    (`systemd-analyze verify` checks that the command exists)."""
    exe = shutil.which("gpuprobe") or str(Path(sys.executable).parent / "gpuprobe")
    text = UNIT.read_text(encoding="utf-8").replace("/opt/gpuprobe/bin/gpuprobe", exe)
    path = tmp_path / "gpuprobe.service"
    path.write_text(text, encoding="utf-8")
    return path


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("GPUPROBE_REQUIRE_PROMETHEUS"):
            pytest.fail("systemd-analyze not found; scripts/test.sh installs Debian's systemd")
        pytest.skip("systemd-analyze not installed (scripts/test.sh installs it)")
    return path


def test_unit_passes_systemd_analyze_verify(tmp_path):
    tool = _systemd_analyze()
    unit = _unit_for_this_checkout(tmp_path)
    r = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stdout + r.stderr


def test_unit_declares_what_the_daemon_needs():
    text = UNIT.read_text(encoding="utf-8")
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, flags=re.M))
    assert settings["Type"] == "notify" and settings["Restart"] == "on-failure"
    assert settings["WatchdogSec"] and settings["DynamicUser"] == "yes"
    assert settings["PrivateDevices"] == "no" and settings["DevicePolicy"] == "closed"
    allows = re.findall(r"^DeviceAllow=(\S+)", text, flags=re.M)
    assert {"char-nvidia*", "/dev/kfd", "char-drm"} <= set(allows)
    active = {k for k in settings}
    assert "ProtectProc" not in active  # would hide the processes we attribute memory to
    assert "MemoryDenyWriteExecute" not in active  # the GPU runtime JITs probe kernels


def test_unit_exposure_score(tmp_path):
    tool = _systemd_analyze()
    unit = _unit_for_this_checkout(tmp_path)
    r = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5  # docs/deploy.md quotes 2.1 ("OK")


def test_sighup_rereads_the_web_config_and_sigquit_stops_cleanly(listener, tmp_path):
    """SIGHUP used to kill the daemon outright, SIGQUIT too, without STOPPING=1."""
    s, path = listener
    port = free_port()
    web = tmp_path / "web.yml"
    web.write_text("http_server_config: {headers: {X-Frame-Options: deny}}\n")
    proc = subprocess.Popen(gpuprobe_cmd("run", "--simulate", "--listen", f"127.0.0.1:{port}",
                                         "--web.config.file", str(web)),
                            env={**os.environ, "NOTIFY_SOCKET": path},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert drain(s, time.monotonic() + 30, stop_on="READY=1")[-1][1].startswith("READY=1")
        web.write_text("http_server_config: {headers: {X-Frame-Options: sameorigin}}\n")
        proc.send_signal(signal.SIGHUP)
        reload = drain(s, time.monotonic() + 10, stop_on="READY=1")
        assert any("RELOADING=1" in m for _, m in reload), reload
        assert proc.poll() is None
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.headers["X-Frame-Options"] == "sameorigin"
        proc.send_signal(signal.SIGQUIT)
        tail = drain(s, time.monotonic() + 10, stop_on="STOPPING=1")
        assert tail and "STOPPING=1" in tail[-1][1]
        assert proc.wait(15) == 0
        err = proc.stderr.read()
        assert "received SIGQUIT" in err and "SIGHUP: web config" in err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
