"""``/metrics`` from a process of its own, forked from the daemon at start.

Why a process: the HTTP thread takes the interpreter lock (GIL) several times per request,
and while a poll runs, every per-GPU thread and the encoder are runnable; each take could wait
behind all of them. At 64 GPUs a scrape that met a poll took 30-280 ms where serving the
same bytes alone took 3 (``benchmarks/scale.py``; pausing the polls during a request and a
shorter switch interval were tried and still left 17 ms). A process has its own lock.

The main process binds the port and builds the :class:`~.http.HttpServer` (so a bad listen
address or web config fails at start, with exit code 2 as before), then forks. The child runs
that server and nothing else; it never calls a vendor library. Over a pipe the main process
sends it each snapshot as encoded text (exposition.Encoded) as soon as its exposition has
encoded it, and once a second what ``/healthz``, ``/readyz`` and ``/`` answer. The child
compresses each snapshot once, picks ``?name[]=`` families, and counts its own requests
(``gpuprobe_http_*``); ``process_*`` describe the main process.

- The child ends with the main process: at EOF on the pipe, or at the SIGTERM the kernel
  sends when the main process dies (PR_SET_PDEATHSIG, Linux).
- A child that dies is forked again (after 1 s, doubling up to 30 s) and handed the last
  snapshot; meanwhile connections wait in the listen backlog.
- ``/healthz`` answers 503 when the main process has said nothing for ``grace`` seconds.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector

from gpuprobe.daemon.core.config import Config
from gpuprobe.daemon.export.exporter import describe, version
from gpuprobe.daemon.export.exposition import Encoded, Relayed
from gpuprobe.daemon.service.http import HttpServer, landing_page
from gpuprobe.daemon.service.webconfig import WebConfigSource

log = logging.getLogger("gpuprobe.http")

STATE_EVERY = 1.0  # seconds between the main process's health words
SILENCE_GRACE = 10.0  # seconds without a word from the main process before /healthz fails
RESTART_INITIAL, RESTART_MAX = 1.0, 30.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class State:
    """What the child answers for /healthz, /readyz and /, as the main process says."""

    health: tuple[bool, dict[str, Any]]
    ready: tuple[bool, dict[str, Any]]
    landing: tuple[Any, ...]  # landing_page's arguments: the page is made when asked for


class Mirror:
    """The child's copy of the main process's :class:`State`; stale after ``grace`` s."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._state: State | None = None
        self._at = time.monotonic()

    def put(self, state: State) -> None:
        self._state, self._at = state, time.monotonic()

    def _answer(self, pick: Callable[[State], tuple[bool, dict[str, Any]]]
                ) -> tuple[bool, dict[str, Any]]:
        """``pick`` of the latest state; a failure while the main process is silent."""
        age = time.monotonic() - self._at
        if self._state is None or age > self.grace:
            return False, {"error": "no word from the daemon's main process",
                           "main_process_silent_seconds": round(age, 3)}
        return pick(self._state)

    def health(self) -> tuple[bool, dict[str, Any]]:
        return self._answer(lambda s: s.health)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        return self._answer(lambda s: s.ready)

    def landing(self) -> str:
        if self._state is None:
            return landing_page(version(), "", 0, {})
        return landing_page(*self._state.landing)


class ServingProcess:
    """The main process's side: forks the child, feeds it, forks another if it dies."""

    def __init__(self, http: HttpServer, relay: Relayed, mirror: Mirror) -> None:
        """``http`` (port bound, serving from ``relay`` and ``mirror``) is started in the
        child only. Nothing runs until :meth:`launch` forks it."""
        self.http, self.relay, self.mirror = http, relay, mirror
        self._state: Callable[[], State] | None = None
        self.pid: int | None = None
        self.restarts = 0
        self._conn: Connection | None = None
        self._latest: Encoded | None = None
        self._send_latest = False
        self._send_lock = threading.Lock()  # one message on the pipe at a time
        self._wake = threading.Event()
        self._lock = threading.Lock()  # the connection, and what is left to send
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watcher: threading.Thread | None = None

    # -- the main process ---------------------------------------------------------------

    @classmethod
    def launch(cls, config: Config, web: WebConfigSource) -> ServingProcess:
        """Bind ``config.listen`` (raises OSError) and fork the serving process.

        ``gpuprobe run`` calls this before it builds the simulation or imports a vendor
        library, with no other thread running: the child starts with only what serving
        needs in its copy of memory (pages the main process rewrites later stay with the
        child, so a late fork would keep a copy of a 64-GPU simulation alive)."""
        host, port = config.listen_address()
        relay = Relayed(describe)
        mirror = Mirror(SILENCE_GRACE)
        registry = CollectorRegistry(auto_describe=True)
        registry.register(relay)
        main = str(os.getpid())
        ProcessCollector(pid=lambda: main, registry=registry)  # process_*: the main process
        http = HttpServer(host, port, registry, mirror.health, mirror.ready, mirror.landing,
                          web, config.http)
        registry.register(http.stats)
        serving = cls(http, relay, mirror)
        serving._fork()
        # a child that dies is forked again, by this thread
        serving._watcher = serving._thread("serving-watch", serving._watch)
        return serving

    def start(self, state: Callable[[], State]) -> None:
        """Feed the child: ``state`` is asked once a second, in this process."""
        self._state = state
        self._thread("serving-feed", self._feed)

    def _thread(self, name: str, target: Callable[[], None]) -> threading.Thread:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def forking_thread(self) -> int | None:
        """The native id of the thread that forks a child again (None before launch): the
        child starts at that thread's priority (priority.py)."""
        return self._watcher.native_id if self._watcher is not None else None

    def post(self, encoded: Encoded) -> None:
        """A new snapshot, encoded: sent to the child at once (a newer one replaces it)."""
        with self._lock:
            self._latest, self._send_latest = encoded, True
        self._wake.set()

    def reload_web_config(self, timeout: float = 5.0) -> bool | None:
        """SIGHUP: the child re-reads the web config now. Whether the file's content is in
        force; None if the child did not say within ``timeout``."""
        with self._lock:
            conn = self._conn
        if conn is None:
            return None
        try:
            with self._send_lock:
                conn.send(("reload", None))
            if conn.poll(timeout):
                kind, ok = conn.recv()
                return bool(ok) if kind == "reloaded" else None
        except (OSError, EOFError, ValueError):
            pass
        return None

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            # not while the feeder is mid-message; and not at all if a stuck child holds it
            if self._send_lock.acquire(timeout=2):
                try:
                    conn.send(("stop", None))
                except OSError:
                    pass
                finally:
                    self._send_lock.release()
            conn.close()
        pid = self.pid
        if pid is not None:
            self._reap(pid, timeout=5.0)
        for t in self._threads:
            t.join(2)
        self.http.close_socket()

    def _fork(self) -> None:
        ours, theirs = Pipe()
        # What exists now is moved out of this process's collections, whose passes write to
        # every object they visit: each page written here is copied, and the child keeps the
        # old one (the gc documentation's advice for forked servers).
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the child: serve until told, then leave without the parent's atexit
            code = 1
            try:
                ours.close()
                code = _child(self.http, self.relay, self.mirror, theirs)
            except BaseException:
                log.exception("serving process failed")
            finally:
                os._exit(code)
        theirs.close()
        with self._lock:
            self._conn = ours
            self.pid = pid
            self._send_latest = self._latest is not None
        self._wake.set()
        log.debug("serving /metrics from process %d", pid)

    def _feed(self) -> None:
        next_state = 0.0
        while not self._stopping.is_set():
            self._wake.wait(max(0.0, next_state - time.monotonic()))
            self._wake.clear()
            with self._lock:
                conn = self._conn
                latest = self._latest if self._send_latest else None
                self._send_latest = False
            if conn is None:  # between a child's end and the next fork
                self._stopping.wait(STATE_EVERY)
                continue
            try:
                if latest is not None:
                    with self._send_lock:
                        conn.send(("exposition", latest))
                if self._state is not None and time.monotonic() >= next_state:
                    state = self._state()
                    with self._send_lock:
                        conn.send(("state", state))
                    next_state = time.monotonic() + STATE_EVERY
            except (OSError, ValueError):  # the child is gone: _watch forks another
                time.sleep(0.1)
            except Exception:  # a state that would not pickle is a bug; keep feeding
                log.exception("sending to the serving process failed")
                time.sleep(1)

    def _watch(self) -> None:
        backoff = RESTART_INITIAL
        while not self._stopping.is_set():
            pid = self.pid
            if pid is None:
                return
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                status = 0
            if self._stopping.is_set():
                return
            started = time.monotonic()
            why = (f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
                   if os.WIFSIGNALED(status) else f"exit code {os.waitstatus_to_exitcode(status)}")
            log.error("the serving process %d ended (%s); starting another in %.0f s, /metrics "
                      "waits meanwhile", pid, why, backoff)
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
            if self._stopping.wait(backoff):
                return
            self._fork()
            self.restarts += 1
            backoff = RESTART_INITIAL if time.monotonic() - started > 60 else min(
                backoff * 2, RESTART_MAX)

    @staticmethod
    def _reap(pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return  # reaped by the watcher
            if done:
                return
            time.sleep(0.02)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


# -- the child ---------------------------------------------------------------------------

class _Stop(Exception):
    pass


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: EOF on the pipe still ends the child
        pass


def _close_inherited(keep: set[int]) -> None:
    """Close what the fork copied from the main process but the port, the pipe and stdio:
    a child forked again later would otherwise hold the main process's descriptors (a
    probe child's pipe, whose end would then never come; the GPU's device files)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor, gone already


def _child(http: HttpServer, relay: Relayed, mirror: Mirror, conn: Connection) -> int:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        return 0  # the main process died before the line above

    def on_signal(_signum: int, _frame: Any) -> None:
        raise _Stop

    _close_inherited(keep={0, 1, 2, http.fileno(), conn.fileno()})
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the main process passes reloads on
    gc.freeze()  # what came with the fork is not the child's to collect
    http.start()
    try:
        while True:
            kind, payload = conn.recv()
            if kind == "exposition":
                relay.put(payload)
                http.exposition.changed()
            elif kind == "state":
                mirror.put(payload)
            elif kind == "reload":
                conn.send(("reloaded", http.reload_web_config()))
            elif kind == "stop":
                break
    except (EOFError, OSError, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        http.stop()
    return 0
