"""Out of file descriptors or threads (issue 11, defects 1 and 10): the affected readings
are lost for that poll, the cause is named once, and healthy GPUs stay up."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading

from gpuprobe.daemon.core.workers import ThreadUnavailable, Worker
from gpuprobe.probes import host

from .conftest import make_daemon, wait_for
from .test_amd_backend import AMD_FAST, AMD_SCENARIO, cycle


class _NoFds:
    """``open`` for probes/host.py that fails with EMFILE while ``on``."""

    def __init__(self) -> None:
        self.on = True
        self.failed = 0

    def __call__(self, path, *args, **kwargs):
        if self.on:
            self.failed += 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(path))
        return open(path, *args, **kwargs)


def _mixed():
    d = make_daemon(AMD_SCENARIO, AMD_FAST)
    face = d.simulation.libamdsmi
    face.violation_latency = face.throughput_latency = 0.01
    return d


def _processes(d) -> dict[int, str | None]:
    return {p.pid: p.name for name in ("nvidia_processes", "amd_processes")
            for p in d.store.view().results[name].processes}


def test_out_of_fds_for_proc_costs_process_names_only(monkeypatch, caplog) -> None:
    no_fds = _NoFds()
    monkeypatch.setattr(host, "open", no_fds, raising=False)
    d = _mixed()
    try:
        with caplog.at_level(logging.INFO, logger="gpuprobe"):
            for _ in range(3):
                cycle(d)
                devices = d.store.view().devices()
                assert len(devices) == 5 and all(s.up for s in devices), \
                    [(s.identity.index, s.down_reason) for s in devices if not s.up]
                # listed, unnamed (AMD ones too, which are otherwise taken as exited)
                assert _processes(d) == {1001: None, 2001: None, 2002: None, 2003: None,
                                         3001: None}
            assert no_fds.failed
            for h in d.store.view().health.values():
                assert h.up and not h.stalled and not h.errors_total.get("internal"), h
            no_fds.on = False
            cycle(d)
        assert _processes(d) == {1001: "trainer", 2001: "llm_train", 2002: "rag",
                                 2003: "short_job", 3001: "blender"}
        said = [r.getMessage() for r in caplog.records]
        assert not any("PID namespace" in m for m in said), said
        warned = [m for m in said if "out of file descriptors" in m]
        assert len(warned) == 1 and "EMFILE" in warned[0], said
        assert not any(r.exc_info for r in caplog.records)
    finally:
        d.stop()


def _refuse(names: tuple[str, ...], monkeypatch) -> dict[str, bool]:
    """Make threads whose name starts with one of ``names`` fail to start, as when the
    process is out of threads; ``state["on"] = False`` lets them start again."""
    state = {"on": True}
    real = threading.Thread.start

    def start(self):
        if state["on"] and self.name.startswith(names):
            raise RuntimeError("can't start new thread")
        return real(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return state


def test_a_worker_that_cannot_start_fails_its_calls_and_starts_later(monkeypatch,
                                                                     caplog) -> None:
    """The worker kept the thread it could not start, so its calls queued for ever (and the
    RuntimeError went to the caller). Now each call fails as not answered in time, it is
    logged once, and the thread starts at a later call."""
    state = _refuse(("w-test",), monkeypatch)
    w = Worker("w-test")
    try:
        with caplog.at_level(logging.INFO, logger="gpuprobe"):
            for _ in range(3):
                job = w.submit(lambda: 42)
                try:
                    job.result(timeout=1)
                    raise AssertionError("ran without a thread")
                except TimeoutError as e:  # what every caller already handles
                    assert isinstance(e, ThreadUnavailable)
            state["on"] = False
            assert w.submit(lambda: 42).result(timeout=5) == 42
        said = [r.getMessage() for r in caplog.records]
        assert sum("cannot start thread w-test" in m for m in said) == 1, said
        assert sum("thread w-test started" in m for m in said) == 1, said
    finally:
        w.stop()


def test_a_gpu_whose_worker_cannot_start_costs_only_that_gpu(monkeypatch) -> None:
    d = _mixed()
    try:
        state = _refuse(("nvml-gpu0", "amdsmi-0000:38"), monkeypatch)  # the H100, the Radeon
        for _ in range(3):
            cycle(d, advance=1.0)
            devices = {(s.identity.vendor, s.identity.model): s
                       for s in d.store.view().devices()}
            mi300 = devices[("amd", "AMD Instinct MI300X")]
            assert mi300.up and mi300.memory.used_bytes is not None
            for s in devices.values():
                assert s.identity.model not in ("NVIDIA H100 80GB HBM3",
                                                "AMD Radeon PRO W7900") or not s.up
            for h in d.store.view().health.values():
                assert not h.errors_total.get("internal"), h
        state["on"] = False

        def all_up() -> bool:
            cycle(d, advance=1.0)
            devices = d.store.view().devices()
            return len(devices) == 5 and all(s.up for s in devices)

        wait_for(all_up, timeout=15)
    finally:
        d.stop()


LOW_LIMIT = textwrap.dedent("""
    import json, logging, os, resource, sys, tempfile
    from gpuprobe.probes.host import ProcessResolver
    from gpuprobe.probes.active.child import run_child

    root = sys.argv[1]
    os.makedirs(os.path.join(root, "100"))
    with open(os.path.join(root, "100", "stat"), "w") as f:
        f.write("100 (trainer) S 1 100 100 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0 0\\n")
    with open(os.path.join(root, "100", "cgroup"), "w") as f:
        f.write("0::/user.slice\\n")
    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logging.getLogger("gpuprobe").addHandler(handler)
    logging.getLogger("gpuprobe").setLevel(logging.INFO)
    resolver = ProcessResolver(root)
    tempfile.gettempdir()  # as the daemon's orchestrator does when it is made
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    found = resolver.resolve_all([100])
    req = {"probe": "pcie", "backend": "sim", "uuid": "GPU-x", "size": 1, "copies": 1,
           "repetitions": 1, "sim": {"generation": 4, "width": 8}, "seed": 1}
    out = run_child(req, {}, 30)
    for fd in held:
        os.close(fd)
    again = resolver.resolve_all([100])
    print("RESULT " + json.dumps({"found": sorted(found), "again": sorted(again),
                                  "outcome": out.outcome, "detail": out.detail,
                                  "said": records}))
""")


def test_a_real_fd_limit(tmp_path) -> None:
    """With RLIMIT_NOFILE really exhausted in a child interpreter: the /proc reader names
    the cause, a probe child that cannot start is a failed run with no directory left, and
    both work again once descriptors are free."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    done = subprocess.run([sys.executable, "-c", LOW_LIMIT, str(tmp_path / "proc")],
                          capture_output=True, text=True, timeout=120, env=env)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, done.stdout + done.stderr
    got = json.loads(line[7:])
    assert got["found"] == [] and got["again"] == [100]
    assert got["outcome"] == "failed" and "EMFILE" in got["detail"], got
    said = got["said"]
    assert any("out of file descriptors" in m and "EMFILE" in m for m in said), said
    assert not any("PID namespace" in m for m in said), said
    assert os.listdir(tmp) == [], "a probe directory was left behind"
