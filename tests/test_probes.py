"""Active probes without a GPU: orchestration with fake runtimes, real child processes that
crash or hang, result parsing, and the CUDA/HIP bindings checked for their symbols."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gpuprobe.probes.active.child import Outcome, run_child
from gpuprobe.probes.active.kernels import cuda, hip
from gpuprobe.probes.active.kernels.common import analyse_launch
from gpuprobe.probes.active.orchestrator import Orchestrator
from gpuprobe.probes.active.specs import probe_values

from .conftest import ROOT, make_daemon, wait_for

PTX = ROOT / "probes" / "active" / "kernels" / "probe.ptx"
IDLE = {"vendor": "nvidia", "model": "NVIDIA H100 80GB HBM3", "architecture": "hopper"}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeRuntime:
    """Records requests and answers with a canned outcome."""

    def __init__(self, outcome: Outcome | None = None) -> None:
        self.requests: list[dict] = []
        self.envs: list[dict] = []
        self.outcome = outcome or Outcome("ok", values={
            "host_to_device_bytes_per_second": 50e9, "device_to_host_bytes_per_second": 51e9,
            "link": {"generation": 5, "width": 16}}, gpu_seconds=0.5, wall_seconds=0.7, pid=99)

    def __call__(self, req, env, timeout, progress, started):
        self.requests.append(req)
        self.envs.append(dict(env))
        started(self.outcome.pid or 99)
        return self.outcome


def setup(scenario: dict | None = None, config: dict | None = None,
          runtime: FakeRuntime | None = None):
    d = make_daemon(scenario or {"seed": 7, "devices": [IDLE, IDLE]}, config=config)
    d.scheduler.run_once()
    clock = Clock()
    s = d.sources
    orch = Orchestrator(s.config.probes, s.snapshot, s.probe_children, s.listers,
                        sim_environment=s.simulation.probe_environment,
                        runtime=runtime or FakeRuntime(), clock=clock, rng=random.Random(1))
    return d, orch, clock


def due_all(orch: Orchestrator, clock: Clock, probe: str = "pcie") -> None:
    orch.tick(probe)  # creates the schedule
    clock.t += 10_000


def test_one_probe_per_tick_then_the_duty_cycle_spaces_runs():
    runtime = FakeRuntime()
    d, orch, clock = setup(runtime=runtime)
    try:
        due_all(orch, clock)
        result = orch.tick("pcie")
        assert len(runtime.requests) == 1  # one run per tick, one GPU at a time
        orch.tick("pcie")
        assert len(runtime.requests) == 2  # the other GPU, next tick
        req = runtime.requests[0]
        assert req["backend"] == "sim" and req["size"] == 64 * 2**20
        assert req["sim"]["generation"] == 5 and req["sim"]["width"] == 16
        for _ in range(5):
            orch.tick("pcie")
        assert len(runtime.requests) == 2  # neither is due again yet
        # 0.5 s of GPU time at the 0.1% duty cycle: nothing for at least 500 s, whatever
        # the configured period.
        state = orch.schedule.states[(req["uuid"], "pcie")]
        assert state.next_due >= clock.t + 0.5 / 0.001 * 0.999
        sample = next(s for s in result.probes if s.device_uuid == req["uuid"])
        assert sample.runs["ok"] == 1 and sample.gpu_seconds_total == 0.5
        assert sample.values["host_to_device"] == 50e9
        assert sample.values["host_to_device_ratio"] == pytest.approx(50e9 / 63.015e9, rel=1e-3)
    finally:
        d.stop()


def test_duty_cycle_over_many_runs_stays_under_the_budget():
    runtime = FakeRuntime(Outcome("ok", values={"launch_latency_seconds": 1e-5,
                                                "sm_reach_ratio": 1.0}, gpu_seconds=0.3,
                                  wall_seconds=0.4, pid=5))
    d, orch, clock = setup({"seed": 7, "devices": [IDLE]},
                           config={"probes": {"launch": {"every": "1s"}}}, runtime=runtime)
    try:
        start = clock.t
        for _ in range(20_000):
            orch.tick("launch")
            clock.t += 1.0
        elapsed = clock.t - start
        used = 0.3 * len(runtime.requests)
        assert len(runtime.requests) > 10
        assert used / elapsed <= 0.001 * 1.01
    finally:
        d.stop()


@pytest.mark.parametrize("change, reason", [
    ({"compute_mode": "exclusive_process"}, "compute_mode"),
    ({"compute_mode": "prohibited"}, "compute_mode"),
    ({"instances": [{"profile": "3g.40gb", "memory": "40GiB"}], "architecture": "ampere"},
     "mig"),
    ({"processes": [{"pid": 700, "name": "trainer", "utilization": 0.05,
                     "memory": {"pattern": "constant", "size": "1GiB"}}]}, "processes"),
    ({"processes": [{"pid": 701, "name": "nvidia-cuda-mps-server", "utilization": 0.0,
                     "memory": {"pattern": "constant", "size": "30MiB"}}]}, "mps"),
    ({"processes": [{"pid": 702, "name": "trainer", "utilization": 0.9,
                     "memory": {"pattern": "constant", "size": "1GiB"}}]}, "busy"),
    ({"thermal": {"idle": 80, "slowdown": 87}}, "thermal"),
    ({"events": [{"at": "90s", "kind": "fall_off_bus", "duration": "1h"}]}, "device_down"),
])
def test_gates_skip_with_the_reason(change, reason):
    runtime = FakeRuntime()
    d, orch, clock = setup({"seed": 8, "devices": [{**IDLE, **change}]}, runtime=runtime)
    try:
        d.simulation.world.clock.advance(60)  # past the fall off the bus, for that case
        d.scheduler.run_once()
        due_all(orch, clock)
        result = orch.tick("pcie")
        assert runtime.requests == []
        (sample,) = [s for s in result.probes if s.probe == "pcie"]
        assert sample.skips == {reason: 1} and sample.runs["skipped"] == 1
    finally:
        d.stop()


def test_an_amd_partition_is_skipped_as_partitioned_not_mig():
    """An AMD GPU split into partitions skips as "partitioned"; "mig" is NVIDIA's word
    (issue 13)."""
    runtime = FakeRuntime()
    mi300 = {"vendor": "amd", "model": "AMD Instinct MI300X", "architecture": "cdna3",
             "memory": "192GiB", "partition": "DPX",
             "instances": [{"profile": "DPX", "memory": "96GiB"},
                           {"profile": "DPX", "memory": "96GiB"}]}
    d, orch, clock = setup({"seed": 8, "devices": [mi300]}, runtime=runtime)
    try:
        d.scheduler.run_once()
        due_all(orch, clock)
        result = orch.tick("pcie")
        assert runtime.requests == []
        (sample,) = [s for s in result.probes if s.probe == "pcie"]  # the GPU's
        assert sample.skips == {"partitioned": 1} and sample.runs["skipped"] == 1
    finally:
        d.stop()


def test_skips_back_off_exponentially_up_to_the_cap():
    d, orch, clock = setup({"seed": 9, "devices": [{**IDLE, "compute_mode": "prohibited"}]},
                           config={"probes": {"jitter": 0, "backoff_max": "2h"}})
    try:
        due_all(orch, clock)
        waits = []
        for _ in range(6):
            orch.tick("pcie")
            (state,) = orch.schedule.states.values()
            waits.append(state.next_due - clock.t)
            clock.t = state.next_due
        assert waits[:3] == [1800.0, 3600.0, 7200.0]  # 15 min doubled, from the first skip
        assert waits[3:] == [7200.0] * 3
    finally:
        d.stop()


def test_a_process_appearing_during_the_run_discards_it():
    runtime = FakeRuntime()
    d, orch, clock = setup(runtime=runtime)
    calls = []

    def lister(uuid, deadline):
        calls.append(uuid)
        return {1} if len(calls) == 1 else {1, 4242}  # a job started meanwhile

    orch.listers["nvidia"] = lister
    try:
        due_all(orch, clock)
        result = orch.tick("pcie")
        (sample,) = [s for s in result.probes if s.runs]
        assert sample.runs == {"discarded": 1}
        assert sample.values == {}  # the measurement is not kept
    finally:
        d.stop()


def test_probe_children_are_not_reported_as_gpu_processes():
    d, orch, _ = setup({"seed": 10, "devices": [{**IDLE, "processes": [
        {"pid": 800, "name": "mine", "memory": {"pattern": "constant", "size": "1GiB"}}]}]})
    try:
        orch.children.add(800)  # as if 800 were a running probe child
        d.scheduler.run_once()
        procs = d.store.view().results["nvidia_processes"].processes
        assert 800 not in {p.pid for p in procs}
    finally:
        d.stop()


def test_real_probe_metrics_in_the_scrape():
    d, orch, clock = setup({"seed": 11, "devices": [IDLE]})
    try:
        due_all(orch, clock)
        result = orch.tick("pcie")
        from prometheus_client import generate_latest

        d.store.publish("pcie_probe", result, d.store.view().health["nvidia"])
        text = generate_latest(d.registry).decode()
        assert re.search(r'gpuprobe_probe_pcie_bandwidth_bytes_per_second\{.*direction='
                         r'"host_to_device".*\} 5(\.\d+)?e\+10', text)
        assert 'gpuprobe_probe_runs_total{gpu="0",outcome="ok",probe="pcie"' in text
    finally:
        d.stop()


# -- the child process ----------------------------------------------------------------------


def sim_request(probe: str = "pcie", **extra) -> dict:
    return {"probe": probe, "backend": "sim", "uuid": "GPU-x", "size": 2**20, "copies": 1,
            "repetitions": 1, "sim": {"generation": 4, "width": 8, "utilization": 0.0},
            "seed": 1, **extra}


def test_child_reports_results_and_progress():
    progress, pids = [], []
    out = run_child(sim_request(), {}, 30, progress.append, pids.append)
    assert out.outcome == "ok", out.detail
    assert 13e9 < out.values["host_to_device_bytes_per_second"] < 14.2e9  # Gen4 x8, slower
    assert any("host to device" in p for p in progress)
    assert pids and out.pid == pids[0]
    assert out.gpu_seconds > 0


def test_child_that_hangs_is_killed_at_the_timeout():
    pids = []
    out = run_child(sim_request(fake="hang"), {}, 1.5, None, pids.append)
    assert out.outcome == "timeout" and 1.4 < out.wall_seconds < 5
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # gone, not left behind


def test_child_that_crashes_or_fails_is_reported():
    out = run_child(sim_request(fake="crash"), {}, 30)
    assert out.outcome == "failed" and "exit status 3" in out.detail
    out = run_child(sim_request(fake="fail"), {}, 30)
    assert out.outcome == "failed" and "simulated failure" in out.detail


def test_child_environment_isolates_the_gpu(tmp_path):
    script = ("import os, json; print('RESULT ' + json.dumps({'ok': True, 'gpu_seconds': 0, "
              "'env': {k: os.environ.get(k) for k in ('CUDA_VISIBLE_DEVICES', "
              "'CUDA_MPS_PIPE_DIRECTORY', 'CUDA_MODULE_LOADING')}}))")
    import gpuprobe.probes.active.child as o

    saved = o.RUNNER
    (tmp_path / "envdump.py").write_text(script)
    o.RUNNER = "envdump"
    try:
        env = {"CUDA_VISIBLE_DEVICES": "GPU-abc", "PYTHONPATH": str(tmp_path)}
        out = run_child({"probe": "pcie"}, env, 30)
    finally:
        o.RUNNER = saved
    seen = out.values["env"]
    assert seen["CUDA_VISIBLE_DEVICES"] == "GPU-abc"
    assert seen["CUDA_MODULE_LOADING"] == "LAZY"
    pipe = seen["CUDA_MPS_PIPE_DIRECTORY"]
    assert pipe and "gpuprobe-probe-" in pipe and not os.path.exists(pipe)  # private, removed


@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None, reason="a CUDA driver here")
def test_cuda_child_without_a_driver_fails_cleanly():
    req = {"probe": "pcie", "backend": "cuda", "uuid": "GPU-x", "size": 2**20, "copies": 1,
           "repetitions": 1}
    out = run_child(req, {"CUDA_VISIBLE_DEVICES": "GPU-x"}, 30)
    assert out.outcome == "failed" and "cannot load libcuda.so.1" in out.detail


# -- results ---------------------------------------------------------------------------------


def test_probe_values_against_the_trained_link():
    v = probe_values("pcie", {"host_to_device_bytes_per_second": 55.3e9,
                              "device_to_host_bytes_per_second": 55.2e9,
                              "link": {"generation": 5, "width": 16}})
    assert v["link_bytes_per_second"] == pytest.approx(63.015e9, rel=1e-4)
    assert v["host_to_device_ratio"] == pytest.approx(0.8776, rel=1e-3)
    v = probe_values("pcie", {"host_to_device_bytes_per_second": 1.0,
                              "device_to_host_bytes_per_second": 1.0, "link": None})
    assert "link_bytes_per_second" not in v and "host_to_device_ratio" not in v


def test_launch_analysis():
    # Host launched at 1_000_000 ns; the GPU clock runs 5_000 ns ahead of the host's.
    starts = [1_012_000 + 5_000, 1_013_000 + 5_000, 1_500_000 + 5_000, 1_012_500 + 5_000]
    smids = [0, 1, 2, 1]
    out = analyse_launch(starts, smids, 4, 1_000_000, 5_000, 3_000, 100_000)
    assert out["launch_latency_seconds"] == pytest.approx(12e-6)
    assert out["launch_latency_uncertainty_seconds"] == pytest.approx(1.5e-6)
    assert out["sm_reach_ratio"] == 0.5  # SMs 0 and 1 within 100 us; SM 2 late; SM 3 never
    assert out["block_start_spread_seconds"] == pytest.approx(488e-6)
    with pytest.raises(ValueError):
        analyse_launch([0, 5], [0, 1], 2, 0, 0, 0, 10)  # a block that never wrote


# -- the bindings ----------------------------------------------------------------------------


def _cuda_header() -> Path | None:
    for base in (os.environ.get("CUDA_HOME"), "/usr/local/cuda", "/usr"):
        if base and Path(base, "include", "cuda.h").exists():
            return Path(base, "include", "cuda.h")
    nvcc = shutil.which("nvcc")
    if nvcc:
        p = Path(nvcc).resolve().parent.parent / "include" / "cuda.h"
        if p.exists():
            return p
    return None


CUDA_H = _cuda_header()


@pytest.mark.skipif(CUDA_H is None, reason="no CUDA toolkit header (cuda.h) on this machine")
def test_cuda_symbols_are_the_versioned_ones_cuda_h_maps_to():
    text = CUDA_H.read_text(errors="replace")
    # e.g. "#define cuMemsetD8  __CUDA_API_PTDS(cuMemsetD8_v2)" (the per-thread-stream
    # wrapper only matters when compiling with per-thread default streams)
    defines = dict(re.findall(
        r"#define\s+(cu\w+)\s+(?:__CUDA_API_PT\w+\()?(cu\w+_v\d+)\)?", text))
    for symbol, argtypes in cuda.SIGNATURES.items():
        base = re.sub(r"_v\d+$", "", symbol)
        if base in defines:
            assert symbol == defines[base], f"{base} maps to {defines[base]}, not {symbol}"
        else:
            assert symbol == base, f"{symbol}: cuda.h has no versioned mapping for {base}"
        m = re.search(rf"CUresult\s+CUDAAPI\s+{base}\s*\(([^;]*?)\)\s*;", text, re.S)
        assert m, f"no prototype for {base} in cuda.h"
        params = m.group(1).strip()
        count = 0 if params in ("", "void") else params.count(",") + 1
        assert count == len(argtypes), f"{symbol}: {count} parameters in cuda.h"


def test_binding_tables_are_typed():
    for argtypes in cuda.SIGNATURES.values():
        assert all(a is not None for a in argtypes)
    for table in (hip.SIGNATURES, hip.RTC_SIGNATURES):
        for name, (restype, argtypes) in table.items():
            assert name.startswith(("hip", "hiprtc")) and isinstance(argtypes, list)
            assert restype is not None
    assert "hipGetErrorName" in hip.SIGNATURES
    assert hip.SIGNATURES["hipGetErrorName"][0] is ctypes.c_char_p


@pytest.mark.parametrize("arch", ["sm_70", "sm_80", "sm_90"])
def test_shipped_ptx_assembles(arch, tmp_path):
    ptxas = shutil.which("ptxas") or (str(CUDA_H.parent.parent / "bin" / "ptxas")
                                      if CUDA_H else None)
    if not ptxas or not Path(ptxas).exists():
        pytest.skip("ptxas is not installed")
    p = subprocess.run([ptxas, f"-arch={arch}", str(PTX), "-o", str(tmp_path / "k.cubin")],
                       capture_output=True, text=True, timeout=60)
    if p.returncode and "is not defined for option 'gpu-name'" in p.stderr:
        version = subprocess.run([ptxas, "--version"], capture_output=True, text=True)
        pytest.skip(f"this ptxas cannot target {arch} "
                    f"({version.stdout.strip().splitlines()[-1]})")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "k.cubin").stat().st_size > 0


def test_cli_probe_on_simulated_gpus():
    p = subprocess.run([sys.executable, "-m", "gpuprobe.daemon", "probe", "pcie", "--simulate",
                        "--gpu", "5"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "Gen5 x16" in p.stdout and "host to device" in p.stderr  # progress while it runs
    p = subprocess.run([sys.executable, "-m", "gpuprobe.daemon", "probe", "pcie", "--simulate",
                        "--gpu", "nvidia:0"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "skipped: busy" in p.stdout
    p = subprocess.run([sys.executable, "-m", "gpuprobe.daemon", "probe", "launch",
                        "--simulate", "--gpu", "9"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--gpu 9: no such GPU" in p.stderr


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # a zombie would still answer: gone means reaped too
    except ProcessLookupError:
        return True
    return False


def test_stopping_the_daemon_mid_probe_ends_the_child_and_removes_its_directory(
        monkeypatch):
    """Issue 11, defect 9: a probe child running when the daemon stopped was orphaned, and
    its private directory left behind. Stopping the daemon (Daemon.stop closes the sources,
    and with them the orchestrator) ends the child and removes the directory."""
    from gpuprobe.probes.active import orchestrator as o

    d = make_daemon({"seed": 12, "devices": [IDLE]},
                    config={"probes": {"timeout": "10m"}})
    orch = d.sources.orchestrator()
    real_request = o.Orchestrator._request

    def hanging(self, dev, probe):  # the simulated child sleeps for an hour
        built = real_request(self, dev, probe)
        return (dict(built[0], fake="hang"), built[1]) if built else built

    monkeypatch.setattr(o.Orchestrator, "_request", hanging)
    outcome: list = []
    pid = None
    private = None
    try:
        d.scheduler.run_once()
        uuid = d.store.view().devices()[0].identity.uuid
        t = threading.Thread(target=lambda: outcome.append(orch.run_now("pcie", uuid)),
                             daemon=True)
        t.start()
        pid = wait_for(lambda: next(iter(orch.children), None), timeout=20)
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        private = env[b"CUDA_MPS_PIPE_DIRECTORY"].decode()
        assert os.path.isdir(private) and not _gone(pid)
        d.stop()
        t.join(20)
        assert not t.is_alive(), "the probe run did not end with the daemon"
        assert _gone(pid), "the probe child outlived the daemon"
        assert not os.path.exists(private), "its private directory was left behind"
        assert outcome and outcome[0].outcome == "failed"
    finally:
        if pid is not None and not _gone(pid):
            os.killpg(pid, signal.SIGKILL)
        d.stop()


def test_every_way_out_of_a_run_removes_its_directory(monkeypatch, tmp_path):
    """A child that cannot start (out of file descriptors for its pipes) is a failed run, not
    an exception, and leaves no directory; so do the other ways out."""
    from gpuprobe.probes.active import child as o

    monkeypatch.setattr(o.tempfile, "tempdir", str(tmp_path))

    def no_fds(*args, **kwargs):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    with monkeypatch.context() as m:
        m.setattr(o.subprocess, "Popen", no_fds)
        out = run_child(sim_request(), {}, 30)
    assert out.outcome == "failed" and "EMFILE" in out.detail, out
    assert os.listdir(tmp_path) == []
    out = run_child(sim_request(fake="hang"), {}, 1.0)
    assert out.outcome == "timeout"
    out = run_child(sim_request(fake="crash"), {}, 30)
    assert out.outcome == "failed"
    assert os.listdir(tmp_path) == []

    with monkeypatch.context() as m:
        def no_thread(self):
            raise RuntimeError("can't start new thread")
        m.setattr(o.threading.Thread, "start", no_thread)
        pids: list[int] = []
        out = run_child(sim_request(fake="hang"), {}, 30, None, pids.append)
    assert out.outcome == "failed" and "can't start new thread" in out.detail
    assert _gone(pids[0]) and os.listdir(tmp_path) == []
