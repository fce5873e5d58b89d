"""The serving process (daemon/service/serving.py): /metrics from a forked child that the
main process feeds with encoded snapshots."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from gpuprobe.daemon.service import serving
from gpuprobe.daemon.service.serving import Mirror, State

from .conftest import RunningDaemon, free_port, make_daemon, wait_for


def _get(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _serving(main: psutil.Process) -> list[psutil.Process]:
    """The main process's forked serving process (probe children run other commands); one
    killed and not yet reaped by the main process is a zombie, and not counted."""
    found = []
    for c in main.children():
        try:
            if c.cmdline() == main.cmdline():
                found.append(c)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
    return found


def _up(port: int) -> bool:
    try:
        status, body = _get(port)
    except OSError:
        return False
    return status == 200 and body.count("gpuprobe_device_up{") >= 3


def test_metrics_come_from_another_process_that_answers_as_the_daemon_did():
    port = free_port()
    d = make_daemon(config={"listen": f"127.0.0.1:{port}"})
    d.start()
    try:
        assert d.serving is not None and d.serving.pid not in (None, os.getpid())
        assert psutil.Process(d.serving.pid).ppid() == os.getpid()
        wait_for(lambda: _up(port), timeout=20)
        status, body = _get(port)
        assert "# HELP gpuprobe_device_up" in body
        # process_* describe the daemon's main process, not the one serving
        pid_start = psutil.Process(os.getpid()).create_time()
        start = float(next(line.split()[1] for line in body.splitlines()
                           if line.startswith("process_start_time_seconds")))
        assert abs(start - pid_start) < 1.5
        assert 'gpuprobe_http_requests_total{code="200",handler="metrics"}' in body
        status, only = _get(port, "/metrics?name[]=gpuprobe_device_up")
        assert status == 200 and "gpuprobe_device_up{" in only
        assert "gpuprobe_device_memory_used_bytes" not in only
        assert _get(port, "/healthz")[0] == 200
        wait_for(lambda: _get(port, "/readyz")[0] == 200, timeout=20)
    finally:
        d.stop()
    assert not psutil.pid_exists(d.serving.pid) or \
        psutil.Process(d.serving.pid).status() == psutil.STATUS_ZOMBIE


def test_a_serving_process_that_dies_is_forked_again_with_the_last_snapshot(monkeypatch):
    monkeypatch.setattr(serving, "RESTART_INITIAL", 3.0)
    port = free_port()
    d = make_daemon(config={"listen": f"127.0.0.1:{port}"})
    d.start()
    try:
        assert d.serving is not None
        wait_for(lambda: _up(port), timeout=20)
        first = d.serving.pid
        r, w = os.pipe()  # the main process's: a probe child's pipe, say
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: d.serving._conn is None, timeout=5)  # ended; the next fork in 3 s
        feeder = next(t for t in d.serving._threads if t.name == "serving-feed")

        def feeder_cpu() -> float:
            t = next(t for t in psutil.Process().threads() if t.id == feeder.native_id)
            return t.user_time + t.system_time

        time.sleep(1.2)  # past the feeder's last wait for a state word
        before = feeder_cpu()
        time.sleep(1.0)
        assert feeder_cpu() - before < 0.2  # it waits for the next child, it does not spin
        wait_for(lambda: d.serving.restarts == 1, timeout=10)
        assert d.serving.pid != first
        wait_for(lambda: _up(port), timeout=10)
        # forked from a busy main process, it keeps none of that process's descriptors
        pipe = os.readlink(f"/proc/self/fd/{w}")
        theirs = {os.readlink(f"/proc/{d.serving.pid}/fd/{fd}")
                  for fd in os.listdir(f"/proc/{d.serving.pid}/fd")}
        assert pipe.startswith("pipe:") and pipe not in theirs
        os.close(r)
        os.close(w)
    finally:
        d.stop()


def test_separate_process_false_serves_from_the_daemon_itself():
    port = free_port()
    d = make_daemon(config={"listen": f"127.0.0.1:{port}",
                            "http": {"separate_process": False}})
    d.start()
    try:
        assert d.serving is None and d.http is not None
        wait_for(lambda: _up(port), timeout=20)
    finally:
        d.stop()


def test_scrapes_are_answered_while_the_main_process_is_stopped():
    """The main process frozen (SIGSTOP): its serving process still answers /metrics with
    the last snapshot."""
    d = RunningDaemon("--simulate")
    try:
        d.wait_ready(timeout=30)
        main = psutil.Process(d.proc.pid)
        (child,) = _serving(main)
        os.kill(main.pid, signal.SIGSTOP)
        try:
            status, body = d.get("/metrics")
            assert status == 200 and "gpuprobe_device_up{" in body
        finally:
            os.kill(main.pid, signal.SIGCONT)
        assert child.is_running()
    finally:
        d.stop()


def test_the_serving_process_ends_with_the_main_process():
    d = RunningDaemon("--simulate")
    try:
        d.wait_ready(timeout=30)
        (child,) = _serving(psutil.Process(d.proc.pid))
        d.proc.kill()  # no chance to stop it: the pipe's EOF (or PDEATHSIG) must
        d.proc.wait(10)
        child.wait(10)
        assert not child.is_running()
    finally:
        d.stop()


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_main_process_runs_below_the_serving_process_and_a_new_child_at_its_priority():
    """``gpuprobe run``: every thread of the main process (polls, encoding; probe children
    come from them) 10 nice steps below the serving process, but the one that forks it again,
    so that a child forked again starts at the serving priority."""
    base = _nice(0)
    lowered = min(19, base + 10)
    d = RunningDaemon("--simulate")
    try:
        d.wait_ready(timeout=30)
        main = psutil.Process(d.proc.pid)
        # (Python 3.11 names no OS thread: the one left is told by its count)
        nice = {t.id: _nice(t.id) for t in main.threads()}
        assert nice[main.pid] == lowered
        assert sorted(nice.values()) == [base] + [lowered] * (len(nice) - 1), nice
        assert len(nice) >= 6
        (child,) = _serving(main)
        assert _nice(child.pid) == base
        child.kill()
        wait_for(lambda: [c.pid for c in _serving(main)] not in ([], [child.pid]), timeout=10)
        (again,) = _serving(main)
        assert _nice(again.pid) == base
        wait_for(lambda: _up(d.port), timeout=10)
    finally:
        d.stop()


def test_health_turns_503_when_the_main_process_goes_silent():
    m = Mirror(grace=0.05)
    assert m.health()[0] is False  # nothing heard yet
    m.put(State((True, {"scheduler_tick_age_seconds": 0.1}), (True, {"ready": True}),
                ("1.2.3", ":9400", 2, {"nvidia": True})))
    assert m.health() == (True, {"scheduler_tick_age_seconds": 0.1})
    assert m.ready()[0] is True and "1.2.3" in m.landing() and "nvidia" in m.landing()
    time.sleep(0.1)
    ok, data = m.health()
    assert ok is False and data["error"] == "no word from the daemon's main process"
    assert m.ready()[0] is False


@pytest.mark.parametrize("answer", [(False, {"scheduler_tick_age_seconds": 30.0})])
def test_health_passes_the_main_process_verdict_on(answer):
    m = Mirror(grace=10)
    m.put(State(answer, (True, {}), ("1", ":9400", 0, {})))
    assert m.health() == answer
