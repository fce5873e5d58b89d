"""Hostile and demanding HTTP clients for the load tests and benchmarks/http_load.py: many
slow clients that each send a request one byte a second and reconnect when cut off, a
well-behaved scraper on a kept-alive connection, and bursts of simultaneous scrapes. Only
loopback addresses are used; every loop is bounded in time."""

from __future__ import annotations

import contextlib
import http.client
import resource
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

SLOW_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 4000


def want_fds(n: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to at least ``n`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def _connected(s: socket.socket) -> bool:
    try:
        s.getpeername()
        return True
    except OSError:
        return False


class SlowClients:
    """``count`` connections to 127.0.0.1:``port``, each sending one byte a second of a
    request head that never ends; a connection the server closes is opened again."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.stop = threading.Event()
        self.connects = 0
        self.cut_off = 0
        self.open_now = 0
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def __enter__(self) -> SlowClients:
        want_fds(self.count + 512)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)

    def _connect(self, sel: selectors.BaseSelector) -> None:
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", self.port))
        sel.register(s, selectors.EVENT_READ, 0)
        self.connects += 1

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            next_tick = time.monotonic()
            while not self.stop.is_set():
                # ramp up, 25 connections every 50 ms, as clients arriving do (all at once,
                # most SYNs would wait out the kernel's retry timers instead)
                for _ in range(min(25, self.count - len(sel.get_map()))):
                    self._connect(sel)
                for key, _ in sel.select(timeout=0.05):
                    s = key.fileobj
                    try:
                        data = s.recv(4096)  # type: ignore[union-attr]
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:  # cut off by the server: come back
                        sel.unregister(s)
                        s.close()  # type: ignore[union-attr]
                        self.cut_off += 1
                        self._connect(sel)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + 1.0
                    for key in list(sel.get_map().values()):
                        s, sent = key.fileobj, key.data
                        try:
                            s.send(SLOW_REQUEST[sent:sent + 1])  # type: ignore[union-attr]
                            sel.modify(s, selectors.EVENT_READ, min(sent + 1,
                                                                    len(SLOW_REQUEST) - 1))
                        except OSError:
                            pass  # not connected yet, or reset: the read side sees it
                    self.open_now = sum(1 for key in sel.get_map().values()
                                        if _connected(key.fileobj))  # type: ignore[arg-type]
        finally:
            for key in list(sel.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            sel.close()


@dataclass
class Scrapes:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    last_body: str = ""

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scrape_every(port: int, interval: float, duration: float, timeout: float = 5.0) -> Scrapes:
    """A well-behaved scraper: one kept-alive connection (reopened if it fails), a scrape
    every ``interval`` seconds for ``duration`` seconds."""
    out = Scrapes()
    conn: http.client.HTTPConnection | None = None
    end = time.monotonic() + duration
    while time.monotonic() < end:
        started = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                out.failures.append(f"status {r.status}")
            else:
                out.latencies.append(time.monotonic() - started)
                out.last_body = body.decode()
            if r.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            out.failures.append(f"{type(e).__name__}: {e}")
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    if conn is not None:
        conn.close()
    return out


def burst(port: int, count: int, timeout: float = 10.0) -> Scrapes:
    """``count`` scrapes started at the same moment, each on its own connection."""
    out = Scrapes()
    gate = threading.Barrier(count)
    lock = threading.Lock()

    def one(_i: int) -> None:
        gate.wait(30)
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            r.read()
            conn.close()
            with lock:
                if r.status == 200:
                    out.latencies.append(time.monotonic() - started)
                else:
                    out.failures.append(f"status {r.status}")
        except (OSError, http.client.HTTPException) as e:
            with lock:
                out.failures.append(f"{type(e).__name__}: {e}")

    want_fds(count + 512)
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(one, range(count)))
    return out
