"""The probe child process, from the daemon's side: start it, watch it, end it.

A probe runs in a short-lived child (``probes/active/kernels/runner.py``) in a session of
its own, with a private, empty directory for its MPS pipes that is removed on every way
out. The child is killed, with its process group, at the hard timeout; a crash or a hang
costs that one run. :class:`Children` knows the children running now, so that stopping the
daemon ends them (SIGTERM, SIGKILL after :data:`TERMINATE_GRACE`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuprobe.daemon.core.childenv import child_environment

log = logging.getLogger("gpuprobe.probes")

RUNNER = "gpuprobe.probes.active.kernels.runner"


@dataclass(frozen=True)
class Outcome:
    outcome: str  # one of model.PROBE_OUTCOMES
    detail: str | None = None  # skip reason, or what went wrong
    values: Mapping[str, Any] = field(default_factory=dict)
    gpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    pid: int | None = None


Runtime = Callable[..., Outcome]  # run_child, or a stand-in (tests)

TERMINATE_GRACE = 2.0  # seconds a child has to exit after SIGTERM before SIGKILL
# Private directories that could not be removed when their run ended (no file descriptor
# left to walk them with): removed at a later run or when the orchestrator closes.
_LEFT_BEHIND: set[str] = set()
_left_lock = threading.Lock()


def describe(e: BaseException) -> str:
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
        return Outcome("failed", f"cannot make the probe's private directory: {describe(e)}")
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
        return Outcome("failed", f"cannot start the probe child: {describe(e)}")
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
        return Outcome("failed", f"cannot watch the probe child: {describe(e)}", pid=proc.pid)
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
