"""Active probes, daemon side: when they run, where, and in what.

A probe runs in a short-lived child process (``probes/active/kernels/runner.py``) that sees one GPU
(``CUDA_VISIBLE_DEVICES``/``HIP_VISIBLE_DEVICES`` set to its UUID) and a private, empty MPS
pipe directory, so the daemon never holds a GPU context and never appears as a GPU process
between probes. The child is killed, with its process group, at the hard timeout; a crash
or a hang costs that one run.

Safety rules, in order (``gate``): the device is up; it is not a MIG instance or a GPU in MIG
mode; its compute mode is not exclusive or prohibited; no MPS server runs on it; its
temperature is at least ``min_thermal_margin`` below the slowdown threshold; its
utilization is at most ``max_utilization``; and, by default, no other process holds it. A run
is thrown away if a process appeared on the GPU while it ran. Probes use at most
``duty_cycle`` of a GPU's wall time (counted from when the child held a GPU context), with
jitter, and back off exponentially after a skip or a failure. Only one probe runs at a time
on the host, so no two GPUs behind one PCIe switch are ever probed together.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuprobe.daemon.core.childenv import child_environment
from gpuprobe.daemon.core.collectors import ProcessLister
from gpuprobe.daemon.core.config import ProbesConfig
from gpuprobe.daemon.core.model import (
    CollectorResult,
    DeviceSample,
    ProbeSample,
    ProcessSample,
    pcie_link_bytes_per_second,
)
from gpuprobe.daemon.core.state import View

log = logging.getLogger("gpuprobe.probes")

RUNNER = "gpuprobe.probes.active.kernels.runner"
SKIP_REASONS = ("device_down", "mig", "compute_mode", "mps", "thermal", "busy", "processes",
                "no_runtime")
UNSAFE_COMPUTE_MODES = ("exclusive_process", "exclusive_thread", "prohibited")


@dataclass(frozen=True)
class Outcome:
    outcome: str  # one of model.PROBE_OUTCOMES
    detail: str | None = None  # skip reason, or what went wrong
    values: Mapping[str, Any] = field(default_factory=dict)
    gpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    pid: int | None = None


Runtime = Callable[..., Outcome]

TERMINATE_GRACE = 2.0  # seconds a child has to exit after SIGTERM before SIGKILL
# Private directories that could not be removed when their run ended (no file descriptor
# left to walk them with): removed at a later run or when the orchestrator closes.
_LEFT_BEHIND: set[str] = set()
_left_lock = threading.Lock()


def _describe(e: BaseException) -> str:
    """'EMFILE: Too many open files' for an OSError, else the exception's text."""
    if isinstance(e, OSError) and e.errno is not None:
        return f"{errno.errorcode.get(e.errno, str(e.errno))}: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"


def remove_private(path: str) -> bool:
    """Remove a run's private directory; whether it is gone. An empty one is removed without
    opening it (so even with no file descriptor left); one that cannot be removed now is
    remembered and tried again later."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
    gone = not os.path.lexists(path)
    with _left_lock:
        if gone:
            _LEFT_BEHIND.discard(path)
        else:
            _LEFT_BEHIND.add(path)
    return gone


def remove_left_behind() -> None:
    with _left_lock:
        left = list(_LEFT_BEHIND)
    for path in left:
        remove_private(path)


def _end(proc: subprocess.Popen, grace: float) -> None:
    """End a child and its process group: SIGTERM, SIGKILL after ``grace``; reap it."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # not its own group leader any more: the child itself
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Children:
    """The probe children running now, so that stopping the daemon can end them (and remove
    their private directories) instead of leaving them orphaned."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, tuple[subprocess.Popen, str]] = {}
        self.closed = False

    def add(self, proc: subprocess.Popen, private: str) -> bool:
        """Track a child; False (and the child is ended) once closing has begun."""
        with self._lock:
            if not self.closed:
                self._running[proc.pid] = (proc, private)
                return True
        _end(proc, 0.0)
        return False

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.pop(proc.pid, None)

    def running(self) -> dict[int, str]:
        """pid -> private directory of each child running now."""
        with self._lock:
            return {pid: private for pid, (_, private) in self._running.items()}

    def close(self, grace: float = TERMINATE_GRACE) -> None:
        """End every running child (SIGTERM, then SIGKILL after ``grace``), wait for it, and
        remove its private directory; no child starts after this."""
        with self._lock:
            self.closed = True
            running = list(self._running.values())
        for proc, private in running:
            log.info("stopping probe child %d", proc.pid)
            _end(proc, grace)
            remove_private(private)
        remove_left_behind()


def run_child(request: dict, env: Mapping[str, str], timeout: float,
              progress: Callable[[str], None] | None = None,
              started: Callable[[int], None] | None = None,
              children: Children | None = None) -> Outcome:
    """Run one probe in a child process; kill it (and its group) at ``timeout``. Its private
    directory is removed on every way out; a child that cannot be started (no file
    descriptor or thread left) is a failed run, not an exception."""
    remove_left_behind()
    try:
        private = tempfile.mkdtemp(prefix="gpuprobe-probe-")
    except OSError as e:
        return Outcome("failed", f"cannot make the probe's private directory: {_describe(e)}")
    try:
        return _run_child(request, env, timeout, progress, started, children, private)
    finally:
        remove_private(private)


def _run_child(request: dict, env: Mapping[str, str], timeout: float,
               progress: Callable[[str], None] | None,
               started: Callable[[int], None] | None, children: Children | None,
               private: str) -> Outcome:
    full_env = {**child_environment(os.environ), **env, "CUDA_MPS_PIPE_DIRECTORY": private,
                "CUDA_MPS_LOG_DIRECTORY": private, "CUDA_MODULE_LOADING": "LAZY"}
    if os.environ.get("CACHE_DIRECTORY"):  # systemd's CacheDirectory=: keep JIT'd PTX
        full_env["CUDA_CACHE_PATH"] = os.path.join(os.environ["CACHE_DIRECTORY"], "cuda")
    if children is not None and children.closed:
        return Outcome("failed", "the daemon is stopping")
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen([sys.executable, "-m", RUNNER, json.dumps(request)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=full_env, text=True,
                                start_new_session=True)
    except OSError as e:  # EMFILE/ENFILE (no fd for its pipes), EAGAIN, ENOMEM
        return Outcome("failed", f"cannot start the probe child: {_describe(e)}")
    try:
        if children is not None and not children.add(proc, private):
            return Outcome("failed", "the daemon is stopping", pid=proc.pid)
        if started is not None:
            started(proc.pid)
        return _watch(proc, timeout, progress, t0)
    finally:
        _end(proc, 0.0)  # on every way out: nothing is left running
        if children is not None:
            children.discard(proc)


def _watch(proc: subprocess.Popen, timeout: float, progress: Callable[[str], None] | None,
           t0: float) -> Outcome:
    stdout: list[str] = []
    stderr: deque[str] = deque(maxlen=20)

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip()
            if line.startswith("PROGRESS "):
                if progress is not None:
                    progress(line[9:])
            elif line:
                stderr.append(line)

    def read_out() -> None:
        assert proc.stdout is not None
        stdout.extend(proc.stdout)

    readers = [threading.Thread(target=f, daemon=True) for f in (read_err, read_out)]
    try:
        for r in readers:
            r.start()
    except RuntimeError as e:  # can't start new thread
        return Outcome("failed", f"cannot watch the probe child: {_describe(e)}", pid=proc.pid)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        for r in readers:
            r.join(1.0)
        wall = time.monotonic() - t0
        return Outcome("timeout", f"no answer in {timeout:g}s; killed", gpu_seconds=wall,
                       wall_seconds=wall, pid=proc.pid)
    for r in readers:
        r.join(5.0)
    wall = time.monotonic() - t0
    result = next((json.loads(line[7:]) for line in stdout if line.startswith("RESULT ")),
                  None)
    if result is None:
        code = proc.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        last = stderr[-1] if stderr else "no output"
        return Outcome("failed", f"child ended without a result ({how}): {last}",
                       gpu_seconds=wall, wall_seconds=wall, pid=proc.pid)
    if not result.get("ok"):
        return Outcome("failed", result.get("error") or "failed", gpu_seconds=wall,
                       wall_seconds=wall, pid=proc.pid)
    gpu = float(result.pop("gpu_seconds", wall))
    return Outcome("ok", None, result, gpu_seconds=gpu, wall_seconds=wall, pid=proc.pid)


@dataclass
class _State:
    next_due: float
    failures: int = 0
    values: dict[str, float] = field(default_factory=dict)
    duration: float | None = None
    last_success: float | None = None
    runs: Counter = field(default_factory=Counter)
    skips: Counter = field(default_factory=Counter)
    gpu_seconds: float = 0.0


def probe_values(probe: str, result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers a child reported, as the metrics want them (link rate and ratios)."""
    if probe == "launch":
        keys = ("launch_latency_seconds", "launch_latency_uncertainty_seconds",
                "sm_reach_ratio", "block_start_spread_seconds")
        return {k: float(result[k]) for k in keys if result.get(k) is not None}
    out = {k: float(result[f"{k}_bytes_per_second"])
           for k in ("host_to_device", "device_to_host")}
    link = result.get("link") or {}
    rate = pcie_link_bytes_per_second(link.get("generation"), link.get("width"))
    if rate:
        out["link_bytes_per_second"] = rate
        out["link_generation"], out["link_width"] = link["generation"], link["width"]
        for k in ("host_to_device", "device_to_host"):
            out[f"{k}_ratio"] = out[k] / rate
    return out


class Orchestrator:
    def __init__(self, cfg: ProbesConfig, snapshot: Callable[[], View], children: set[int],
                 listers: Mapping[str, ProcessLister], *,
                 sim_environment: Callable[[str, str | None], dict[str, Any] | None]
                 | None = None, runtime: Runtime | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        """``snapshot`` gives the devices and processes the gates judge; ``children`` is
        where the pids of running probe children are kept, for the process collectors;
        ``listers`` ask a vendor backend who holds a GPU now; ``sim_environment`` is the
        simulation's, which probes simulated GPUs. ``runtime`` replaces the child process
        (tests); by default a real child, which :meth:`close` ends."""
        self.cfg = cfg
        self.snapshot = snapshot
        self.sim_environment = sim_environment
        self.running = Children()
        # Found now, while descriptors are free: finding it opens a test file, and without a
        # descriptor mkdtemp would fail with a misleading "no usable temporary directory".
        tempfile.gettempdir()
        self.runtime: Runtime = runtime or functools.partial(run_child,
                                                             children=self.running)
        self.clock = clock
        self.rng = rng or random.Random()
        self.children = children
        self.listers = listers
        self._lock = threading.Lock()  # one probe at a time on this host
        self._state_lock = threading.Lock()
        self._states: dict[tuple[str, str], _State] = {}

    def _every(self, probe: str) -> float:
        return self.cfg.pcie.every if probe == "pcie" else self.cfg.launch.every

    def _jitter(self) -> float:
        j = self.cfg.jitter
        return self.rng.uniform(1 - j, 1 + j)

    def _state(self, probe: str, uuid: str) -> _State:
        key = (uuid, probe)
        with self._state_lock:
            if key not in self._states:
                # A first run soon after start, spread so GPUs do not all start together.
                first = self.rng.uniform(1.0, min(30.0, self._every(probe)))
                self._states[key] = _State(next_due=self.clock() + first)
            return self._states[key]

    # -- what may run ---------------------------------------------------------------------------

    def gate(self, d: DeviceSample, devices: list[DeviceSample],
             processes: list[ProcessSample], force: bool = False) -> str | None:
        """Why this device must not be probed now, or None."""
        uuid = d.identity.uuid
        if not d.up:
            return "device_down"
        if d.identity.parent_uuid or any(x.identity.parent_uuid == uuid for x in devices):
            return "mig"
        if d.compute_mode in UNSAFE_COMPUTE_MODES:
            return "compute_mode"
        others = [p for p in processes if p.device_uuid == uuid and p.pid not in self.children]
        if any((p.name or "").startswith("nvidia-cuda-mps") for p in others):
            return "mps"
        temps, limits = d.thermal.temperatures, d.thermal.thresholds
        margins = [limits[(sensor, "slowdown")] - t for sensor, t in temps.items()
                   if (sensor, "slowdown") in limits]  # NVIDIA: gpu; AMD: edge, hotspot, ...
        if margins and min(margins) < self.cfg.min_thermal_margin:
            return "thermal"
        if self._request(d, "pcie") is None:
            return "no_runtime"
        if force:
            return None
        if (d.utilization.get("gpu") or 0.0) > self.cfg.max_utilization:
            return "busy"
        if self.cfg.skip_when_processes and others:
            return "processes"
        return None

    def _request(self, d: DeviceSample, probe: str) -> tuple[dict, dict[str, str]] | None:
        """(request for the child, its environment), or None if nothing can probe it."""
        uuid = d.identity.uuid
        req: dict[str, Any] = {"probe": probe, "uuid": uuid}
        if probe == "pcie":
            req.update(size=self.cfg.pcie.buffer_size, copies=self.cfg.pcie.copies,
                       repetitions=self.cfg.pcie.repetitions)
        else:
            c = self.cfg.launch
            req.update(spin_ns=int(c.spin * 1e9), reach_bound_ns=int(c.reach_bound * 1e9),
                       calibrations=c.calibrations)
        if self.sim_environment is not None:
            env = self.sim_environment(uuid, d.identity.pci_bus_id)
            if env is None:
                return None
            req.update(backend="sim", sim=env, seed=self.rng.randrange(2**31))
            return req, {}
        if d.identity.vendor == "nvidia":
            req["backend"] = "cuda"
            return req, {"CUDA_VISIBLE_DEVICES": uuid}
        if d.identity.vendor == "amd":
            req["backend"] = "hip"
            return req, {"HIP_VISIBLE_DEVICES": uuid, "ROCR_VISIBLE_DEVICES": uuid}
        return None

    # -- running --------------------------------------------------------------------------------

    def _skip(self, state: _State, reason: str, probe: str) -> None:
        state.runs["skipped"] += 1
        state.skips[reason] += 1
        self._back_off(state, probe)

    def _back_off(self, state: _State, probe: str) -> None:
        state.failures += 1
        wait = min(self._every(probe) * 2 ** min(state.failures, 20), self.cfg.backoff_max)
        state.next_due = self.clock() + wait * self._jitter()

    def _run(self, probe: str, d: DeviceSample, state: _State,
             progress: Callable[[str], None] | None) -> Outcome:
        uuid = d.identity.uuid
        built = self._request(d, probe)
        assert built is not None
        req, env = built
        lister = self.listers.get(d.identity.vendor)
        deadline = self.clock() + 5.0
        before = lister(uuid, deadline) if lister else None

        spawned: list[int] = []

        def started(pid: int) -> None:  # kept out of the process metrics while it runs
            spawned.append(pid)
            self.children.add(pid)

        try:
            out = self.runtime(req, env, self.cfg.timeout, progress, started)
        except (OSError, RuntimeError) as e:  # out of fds or threads: this run only
            out = Outcome("failed", f"cannot run the probe: {_describe(e)}")
        finally:
            self.children.difference_update(spawned)
        if out.outcome == "ok" and before is not None and lister is not None:
            after = lister(uuid, self.clock() + 5.0)
            appeared = (after or set()) - before - {out.pid}
            if appeared:
                out = Outcome("discarded", f"process(es) {sorted(appeared)} appeared during "
                              "the probe", gpu_seconds=out.gpu_seconds,
                              wall_seconds=out.wall_seconds, pid=out.pid)
        self._account(probe, state, out, uuid, d.identity.index)
        return out

    def _account(self, probe: str, state: _State, out: Outcome, uuid: str, index: str) -> None:
        state.runs[out.outcome] += 1
        state.gpu_seconds += out.gpu_seconds
        state.duration = out.wall_seconds
        now = self.clock()
        if out.outcome == "ok":
            state.values = probe_values(probe, out.values)
            state.last_success = time.time()
            state.failures = 0
            wait = self._every(probe) * self._jitter()
        else:
            log.warning("%s probe on GPU %s (%s) %s: %s", probe, index, uuid, out.outcome,
                        out.detail)
            state.failures += 1
            wait = min(self._every(probe) * 2 ** min(state.failures, 20),
                       self.cfg.backoff_max) * self._jitter()
        # The duty cycle: the GPU time this run took, spread over at least 1/duty_cycle.
        state.next_due = now + max(wait, out.gpu_seconds / self.cfg.duty_cycle)

    def _view(self) -> tuple[list[DeviceSample], list[ProcessSample]]:
        view = self.snapshot()
        return view.devices(), view.processes()

    def tick(self, probe: str) -> CollectorResult:
        """Run at most one due probe of this kind; skip, with a reason, the due ones that
        must not run; report every device's probe state."""
        devices, processes = self._view()
        physical = [d for d in devices if d.identity.parent_uuid is None]
        now = self.clock()
        due = sorted(((self._state(probe, d.identity.uuid), d) for d in physical),
                     key=lambda x: x[0].next_due)
        ran = False
        for state, d in due:
            if state.next_due > now:
                break
            reason = self.gate(d, devices, processes)
            if reason is not None:
                self._skip(state, reason, probe)
                continue
            if ran or not self._lock.acquire(blocking=False):
                continue  # one run per tick, one probe at a time: it stays due
            try:
                self._run(probe, d, state, None)
                ran = True
            finally:
                self._lock.release()
        return CollectorResult(probes=self.samples(probe))

    def run_now(self, probe: str, uuid: str, force: bool = False,
                progress: Callable[[str], None] | None = None) -> Outcome:
        """Probe one GPU now, whatever the schedule (the CLI); the safety gates still hold,
        except that ``force`` probes a GPU that is busy or has processes."""
        devices, processes = self._view()
        d = next(x for x in devices if x.identity.uuid == uuid)
        state = self._state(probe, uuid)
        reason = self.gate(d, devices, processes, force)
        if reason is not None:
            self._skip(state, reason, probe)
            return Outcome("skipped", reason)
        with self._lock:
            return self._run(probe, d, state, progress)

    def samples(self, probe: str) -> tuple[ProbeSample, ...]:
        with self._state_lock:
            items = [(k, s) for k, s in self._states.items() if k[1] == probe]
        return tuple(ProbeSample(
            device_uuid=uuid, probe=probe, values=dict(s.values), duration_seconds=s.duration,
            last_success=s.last_success, runs=dict(s.runs), skips=dict(s.skips),
            gpu_seconds_total=s.gpu_seconds) for (uuid, _), s in items)


    def close(self) -> None:
        """End a probe child still running (the daemon is stopping) and remove its private
        directory; the run it belonged to ends as failed."""
        self.running.close()

