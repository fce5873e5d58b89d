"""HTTP: ``/metrics``, ``/healthz``, ``/readyz``, a landing page at ``/``, 404 elsewhere.

One asyncio event loop on its own thread serves every connection (HTTP/1.1 with keep-alive,
parsed by h11; TLS by the standard ``ssl`` module), so a client costs a coroutine, not a
thread, and one that sends a byte a second holds nothing but its socket:

- the whole request head must arrive within ``http.read_header_timeout`` of the
  connection (or, on a kept-alive connection, of its first byte); an idle kept-alive
  connection is closed after ``http.idle_timeout``; a response not taken within
  ``http.write_timeout`` is dropped;
- at most ``http.max_connections`` are open (fewer where RLIMIT_NOFILE is low, so file
  descriptors stay for the collectors); the next one evicts the oldest connection that has
  not sent a whole request, else the oldest idle kept-alive one, else it is refused with
  503 at once;
- ``/metrics`` renders on a small pool of threads, one render per distinct request at a time
  shared by every client asking for it meanwhile, and not at all for a client that left; a
  render encodes (and compresses) the store's families once per published snapshot and
  otherwise copies them (exposition.py), with the server's own counters encoded fresh;
- TLS, client certificates and basic auth come from a Prometheus web config file
  (webconfig.py), re-read when it changes.

Every refusal is counted in ``gpuprobe_http_refused_total{reason}`` and logged at most once a
minute per reason, without the secret. Nothing reaches stderr but the logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import html
import json
import logging
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import gzip_accepted
from prometheus_client.metrics_core import Metric

from gpuprobe.daemon.core.config import HttpConfig
from gpuprobe.daemon.export.catalog import BY_NAME, CATALOG
from gpuprobe.daemon.export.exposition import Exposition
from gpuprobe.daemon.service.webconfig import WebConfig, WebConfigSource, peer_allowed

log = logging.getLogger("gpuprobe.http")

BACKLOG = 1024  # the kernel caps it at net.core.somaxconn (4096 on current kernels)
FD_RESERVE = 256  # descriptors kept for the collectors, /proc reads and probe children
MAX_HEAD = 16 * 1024  # request line and headers
AUTH_QUEUE = 8  # password checks waiting for the bcrypt thread
HANDLERS = ("metrics", "healthz", "readyz", "landing", "other")
CODES = ("200", "400", "401", "404", "405", "408", "413", "429", "431", "500", "503")
REFUSALS = (
    "connection_limit",  # at the cap with no connection to evict: 503 at once
    "evicted",  # an older connection that had not sent a whole request, closed for a new one
    "header_timeout",  # the request head did not arrive in time
    "write_timeout",  # the client did not take its response in time
    "bad_request",  # not HTTP/1.x, a request body, or a head over 16 KiB
    "tls_handshake",  # a TLS handshake that failed or timed out
    "client_certificate",  # no client certificate, one not from client_ca, or a SAN not allowed
    "plain_http_on_tls_port",
    "tls_on_plain_port",
    "unauthorized",  # basic auth missing or wrong
    "rate_limited",  # web config rate_limit
    "busy",  # too many renders or password checks waiting
    "accept_error",  # accept() failed, e.g. out of file descriptors
)
_TLS_RECORD = 0x16  # the first byte of a TLS ClientHello


def raise_fd_limit(ceiling: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (at most ``ceiling``), as Go programs
    do: systemd's default soft limit, 1024, is the ceiling a slow-client flood hit. Returns
    the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard if hard != resource.RLIM_INFINITY else ceiling, ceiling)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft if soft != resource.RLIM_INFINITY else ceiling


class _Throttled:
    """Logs a line at most once a minute per key, with the count it held back."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last, held = self._last.get(key, (-1e18, 0))
        if now - last < self.every:
            self._last[key] = (last, held + 1)
            return
        suffix = f" ({held} more like it in the last minute)" if held else ""
        log.warning(msg + suffix, *args)
        self._last[key] = (now, 0)


class HttpStats:
    """The server's counters, exported by the same registry as everything else."""

    def __init__(self, web: WebConfigSource) -> None:
        self.web = web
        self.requests: dict[tuple[str, str], int] = {}
        self.refused = dict.fromkeys(REFUSALS, 0)
        self.connections = 0
        self.max_connections = 0
        self._lock = threading.Lock()

    def request(self, handler: str, code: int) -> None:
        with self._lock:
            key = (handler, str(code))
            self.requests[key] = self.requests.get(key, 0) + 1

    def refuse(self, reason: str) -> None:
        with self._lock:
            self.refused[reason] += 1

    def describe(self) -> Iterator[Metric]:
        for spec in CATALOG:
            if spec.scope == "http":
                yield Metric(spec.family, spec.help, spec.type)

    def collect(self) -> Iterator[Metric]:
        def family(name: str) -> Metric:
            spec = BY_NAME[name]
            return Metric(spec.family, spec.help, spec.type)

        with self._lock:
            requests = sorted(self.requests.items())
            refused = sorted(self.refused.items())
        m = family("gpuprobe_http_requests_total")
        for (handler, code), n in requests:
            m.add_sample("gpuprobe_http_requests_total", {"handler": handler, "code": code}, n)
        if m.samples:
            yield m
        m = family("gpuprobe_http_refused_total")
        for reason, n in refused:
            m.add_sample("gpuprobe_http_refused_total", {"reason": reason}, n)
        yield m
        for name, value in (("gpuprobe_http_connections", self.connections),
                            ("gpuprobe_http_connections_max", self.max_connections)):
            m = family(name)
            m.add_sample(name, {}, value)
            yield m
        if self.web.path is not None:
            reload: tuple[tuple[str, float], ...] = (
                ("gpuprobe_web_config_last_reload_successful", float(self.web.last_reload_ok)),
                ("gpuprobe_web_config_last_reload_success_timestamp_seconds",
                 self.web.last_reload_success))
            for name, seconds_or_flag in reload:
                m = family(name)
                m.add_sample(name, {}, seconds_or_flag)
                yield m


class _Conn:
    """One client connection; ``phase`` tells whether it may be evicted."""

    __slots__ = ("peer", "phase", "sock", "task", "tls", "transport")

    def __init__(self, peer: str, sock: socket.socket) -> None:
        self.peer = peer
        self.sock = sock
        self.phase = "head"  # head (no whole request yet), idle (kept alive), busy
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.tls = False

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self.task is not None:
            self.task.cancel()

    def gone(self) -> bool:
        """Whether the client has closed its side (safe from any thread: peeks only)."""
        if self.transport is None or self.transport.is_closing():
            return True
        if self.tls:
            return False  # the raw bytes are TLS records; the loop sees a close soon enough
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


# A response body: whole, or (a /metrics body) the parts written one after another.
Body = bytes | list[bytes]


@dataclass
class _Render:
    """A /metrics render in flight and the connections waiting for it."""

    waiters: list[_Conn]
    future: asyncio.Future[tuple[list[bytes], list[tuple[str, str]]]] | None = None


class _Refused(Exception):
    def __init__(self, reason: str, status: int | None = None, body: str = "") -> None:
        super().__init__(reason)
        self.reason, self.status, self.body = reason, status, body


class HttpServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 health: Callable[[], tuple[bool, dict[str, Any]]],
                 ready: Callable[[], tuple[bool, dict[str, Any]]],
                 landing: Callable[[], str], web: WebConfigSource | None = None,
                 limits: HttpConfig | None = None) -> None:
        """Binds the port now (raises OSError); serves from :meth:`start`."""
        self.registry, self.health, self.ready, self.landing = registry, health, ready, landing
        self.web = web or WebConfigSource(None)
        self.limits = limits = limits or HttpConfig()
        self.stats = HttpStats(self.web)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # "[::]" takes IPv4 too, as the kernel's default (and the previous server) did
        dualstack = host == "::" and socket.has_dualstack_ipv6()
        self._sock = socket.create_server((host, port), family=family, backlog=BACKLOG,
                                          reuse_port=False, dualstack_ipv6=dualstack)
        self._sock.setblocking(False)
        self.port = self._sock.getsockname()[1]
        fds = raise_fd_limit()
        self.max_connections = max(8, min(limits.max_connections, fds - FD_RESERVE))
        if self.max_connections < limits.max_connections:
            log.warning("serving at most %d connections, not http.max_connections=%d: the "
                        "process may open only %d file descriptors (RLIMIT_NOFILE; LimitNOFILE= "
                        "in the systemd unit)", self.max_connections, limits.max_connections,
                        fds)
        self.stats.max_connections = self.max_connections
        self._conns: dict[_Conn, None] = {}  # insertion order is age
        self._renders: dict[tuple[Any, ...], _Render] = {}
        self._pool = ThreadPoolExecutor(max_workers=limits.render_threads,
                                        thread_name_prefix="http-render")
        # bcrypt is CPU-bound: one thread, so a flood of wrong passwords costs one core at
        # most, and beyond AUTH_QUEUE checks waiting the next is refused (busy), not queued
        self._auth_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-auth")
        self._auth_waiting = 0
        self.exposition = Exposition(registry)
        self._throttled = _Throttled()
        self._tokens: tuple[float, float] | None = None  # rate limit: (tokens, when)
        self._closing: set[asyncio.Task[None]] = set()  # refused, still being answered
        self._loop: asyncio.AbstractEventLoop | None = None  # made by start()
        self._thread: threading.Thread | None = None
        self._accept: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        # Made here, not in __init__: the serving process closes every descriptor it did
        # not make but the port's (serving.py) before it starts this.
        loop = self._loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._loop_exception)
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._accept = loop.create_task(self._accept_loop())
            loop.call_soon(started.set)
            loop.run_forever()
            # stop() has cancelled every task; let them finish their cleanup
            pending = asyncio.all_tasks(loop)
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=2))
            loop.close()

        self._thread = threading.Thread(target=run, name="http", daemon=True)
        self._thread.start()
        started.wait(5)
        self.exposition.start()

    def stop(self) -> None:
        def shutdown() -> None:
            if self._accept is not None:
                self._accept.cancel()
            for conn in list(self._conns):
                conn.abort()
            assert loop is not None
            loop.stop()

        self.exposition.stop()
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(shutdown)
            self._thread.join(5)
        self._sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._auth_pool.shutdown(wait=False, cancel_futures=True)

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self._sock.fileno()

    def close_socket(self) -> None:
        """Close the port of a server that was never started here (the one the serving
        process runs: this process's copy)."""
        self._sock.close()

    def reload_web_config(self) -> bool:
        """Re-read the web config file now (SIGHUP)."""
        return self.web.reload(force=True)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # asyncio would print these to stderr; a client that vanishes mid-TLS is no news.
        exc = context.get("exception")
        log.debug("event loop: %s", context.get("message"), exc_info=exc)

    # -- connections ---------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(self._sock)
            except asyncio.CancelledError:
                raise
            except OSError as e:
                # EMFILE/ENFILE: the connection waits in the backlog; back off, as Go does.
                self.stats.refuse("accept_error")
                self._throttled.warning("accept", "cannot accept connections: %s (%s); the "
                                        "process is out of file descriptors or memory",
                                        e.strerror or e, type(e).__name__)
                await asyncio.sleep(0.1)
                continue
            peer = addr[0] if isinstance(addr, tuple) else str(addr)
            sock.setblocking(False)
            conn = _Conn(peer, sock)
            if len(self._conns) >= self.max_connections and not self._evict():
                self._note("connection_limit", peer,
                           f"{len(self._conns)} connections open (http.max_connections)")
                if len(self._closing) < 64:
                    task = loop.create_task(self._refuse_at_cap(sock))
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)
                else:  # a flood: no answer, no lingering
                    sock.close()
                continue
            self._conns[conn] = None
            self.stats.connections = len(self._conns)
            conn.task = loop.create_task(self._connection(conn, sock))

    async def _refuse_at_cap(self, sock: socket.socket) -> None:
        try:
            await self._answer_and_close(_raw_response(503, "too many connections\n"), sock)
        finally:
            sock.close()

    def _evict(self) -> bool:
        """Close the oldest connection that has not sent a whole request, else the oldest
        idle kept-alive one (a well-behaved scraper's, which reconnects); False if every
        connection is being answered."""
        for phase in ("head", "idle"):
            for conn in self._conns:
                if conn.phase == phase:
                    if phase == "head":
                        self.stats.refuse("evicted")
                    conn.abort()
                    del self._conns[conn]
                    return True
        return False

    async def _connection(self, conn: _Conn, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.read_header_timeout
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            web = self.web.current()
            reader, writer = await self._open(conn, sock, web, deadline)
            await self._serve(conn, reader, writer, web, deadline)
        except _Refused as r:
            self._note(r.reason, conn.peer, r.body)
            if r.status is not None:
                await self._answer_and_close(_raw_response(r.status, r.body), sock, reader,
                                             writer)
        except (ConnectionError, TimeoutError, OSError, ssl.SSLError, asyncio.TimeoutError,
                asyncio.IncompleteReadError):
            log.debug("connection from %s ended", conn.peer, exc_info=True)
        except asyncio.CancelledError:
            pass
        except Exception:
            self._throttled.warning("bug", "HTTP connection from %s failed; details at debug "
                                    "level", conn.peer)
            log.debug("connection failed", exc_info=True)
        finally:
            if writer is not None:
                writer.close()
                # a client that takes nothing cannot keep the socket: drop it soon after
                loop.call_later(1.0, writer.transport.abort)
            else:
                sock.close()
            self._conns.pop(conn, None)
            self.stats.connections = len(self._conns)

    async def _answer_and_close(self, data: bytes, sock: socket.socket,
                                reader: asyncio.StreamReader | None = None,
                                writer: asyncio.StreamWriter | None = None) -> None:
        """Send a last response, then read (and drop) what the client sent for up to a
        second: closing a socket with unread input resets the connection, and the client
        would never see the answer."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, RuntimeError, ConnectionError, asyncio.TimeoutError,
                                 ssl.SSLError):
            if writer is None or reader is None:
                await asyncio.wait_for(loop.sock_sendall(sock, data), 1.0)
                sock.shutdown(socket.SHUT_WR)
                await asyncio.wait_for(_drain(lambda: loop.sock_recv(sock, 65536)), 1.0)
            else:
                writer.write(data)
                await asyncio.wait_for(writer.drain(), 1.0)
                if writer.can_write_eof():
                    writer.write_eof()
                await asyncio.wait_for(_drain(lambda: reader.read(65536)), 1.0)

    def _note(self, reason: str, peer: str, detail: str = "") -> None:
        """Count a refusal; log it (at most once a minute per reason), never a secret."""
        self.stats.refuse(reason)
        if reason not in ("header_timeout", "evicted"):  # those are counted, not news
            self._throttled.warning(reason, "refused a request from %s: %s", peer,
                                    detail.strip() or reason.replace("_", " "))

    async def _open(self, conn: _Conn, sock: socket.socket, web: WebConfig, deadline: float
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Wait for the first byte, tell TLS from plain HTTP by it, and wrap the socket."""
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(sock.fileno(), ready)
        try:
            await asyncio.wait_for(readable, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise _Refused("header_timeout", 408, "request head timed out\n") from None
        finally:
            loop.remove_reader(sock.fileno())
        first = sock.recv(1, socket.MSG_PEEK)
        if not first:
            raise ConnectionResetError
        if web.tls and first[0] != _TLS_RECORD:
            raise _Refused("plain_http_on_tls_port", 400,
                           "Client sent an HTTP request to an HTTPS server.\n")
        if not web.tls and first[0] == _TLS_RECORD:
            raise _Refused("tls_on_plain_port", 400,
                           "TLS is not configured on this port (see --web.config.file).\n")
        reader = asyncio.StreamReader(limit=MAX_HEAD)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=web.ssl_context,
                ssl_handshake_timeout=max(0.1, deadline - loop.time()) if web.tls else None)
        except ssl.SSLError as e:
            text = f"{e.reason or e}"
            reason = "client_certificate" if "CERTIFICATE" in text.upper() else "tls_handshake"
            raise _Refused(reason, None, f"TLS handshake failed: {text}") from None
        except (ConnectionError, TimeoutError, asyncio.TimeoutError) as e:
            if web.tls:
                raise _Refused("tls_handshake", None,
                               f"TLS handshake failed: {type(e).__name__}") from None
            raise
        conn.transport, conn.tls = transport, web.tls
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        if web.tls and not peer_allowed(web, transport.get_extra_info("peercert")):
            raise _Refused("client_certificate", None,
                           "client certificate names none of client_allowed_sans")
        return reader, writer

    async def _serve(self, conn: _Conn, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, web: WebConfig, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            event = await self._next_event(h, reader, conn, deadline)
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                return
            conn.phase = "busy"
            status, body, headers, handler = await self._respond(event, conn, web)
            if status != 413:  # then the request has no body: take its end
                end = await self._next_event(h, reader, conn, deadline)
                if not isinstance(end, h11.EndOfMessage):
                    return
            close = status >= 400 and status not in (401, 404, 405)
            if close:
                headers = [*headers, ("Connection", "close")]
            chunks = body if isinstance(body, list) else [body]
            head = h.send(h11.Response(status_code=status, headers=_headers(
                headers, web, sum(map(len, chunks))), reason=_REASONS.get(status, b"")))
            # The body goes to the transport as it is, not joined to the head nor its parts
            # to each other: a 2 MiB body was copied twice per scrape that way, and with
            # glibc's mmap threshold at 128 KiB (malloc.py) each copy was mapped and faulted
            # in anew.
            out = [head]
            if event.method != b"HEAD":
                for chunk in chunks:
                    if chunk:
                        out += h.send_with_data_passthrough(h11.Data(data=chunk)) or []
            out.append(h.send(h11.EndOfMessage()))
            self.stats.request(handler, status)
            for part in out:
                if part:
                    writer.write(part)
            try:
                await asyncio.wait_for(writer.drain(), self.limits.write_timeout)
            except asyncio.TimeoutError:
                raise _Refused("write_timeout") from None
            if close or h.our_state is h11.MUST_CLOSE:
                return
            try:
                h.start_next_cycle()
            except h11.LocalProtocolError:
                return  # the client's request had a body we did not read, or it must close
            conn.phase = "idle"
            deadline = loop.time() + self.limits.idle_timeout

    async def _next_event(self, h: h11.Connection, reader: asyncio.StreamReader, conn: _Conn,
                          deadline: float) -> Any:
        """The next h11 event; waits up to ``deadline`` for the head to start and then at
        most http.read_header_timeout for the rest of it."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as e:
                # h11 hints 501 for a transfer coding it does not know: a bad request to us
                status = e.error_status_hint if 400 <= e.error_status_hint < 500 else 400
                raise _Refused("bad_request", status, f"bad request: {e}\n") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await asyncio.wait_for(reader.read(MAX_HEAD),
                                              max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                if conn.phase == "idle":
                    return h11.ConnectionClosed()  # an idle keep-alive connection ages out
                raise _Refused("header_timeout", 408, "request head timed out\n") from None
            if conn.phase == "idle" and data:
                conn.phase = "head"
                deadline = loop.time() + self.limits.read_header_timeout
            h.receive_data(data)

    # -- requests ------------------------------------------------------------------------

    async def _respond(self, req: h11.Request, conn: _Conn, web: WebConfig
                       ) -> tuple[int, Body, list[tuple[str, str]], str]:
        """(status, body, headers, handler label) for one request; never raises."""
        handler = "other"
        try:
            url = urlsplit(req.target.decode("latin-1"))
            handler = {"/metrics": "metrics", "/healthz": "healthz", "/readyz": "readyz",
                       "/": "landing"}.get(url.path, "other")
            for name, value in req.headers:
                if name == b"transfer-encoding" or (name == b"content-length" and
                                                    value.strip() != b"0"):
                    self.stats.refuse("bad_request")
                    return 413, b"request bodies are not accepted\n", _TEXT, handler
            if req.method not in (b"GET", b"HEAD"):
                return 405, b"method not allowed\n", [*_TEXT, ("Allow", "GET, HEAD")], handler
            if web.rate_limit is not None and not self._take_token(web):
                self._note("rate_limited", conn.peer)
                return 429, b"too many requests\n", _TEXT, handler
            if web.auth is not None:
                auth = dict(req.headers).get(b"authorization")
                header = auth.decode("latin-1") if auth else None
                quick = web.auth.quick(header)
                if quick is not None:
                    ok, why = quick
                elif self._auth_waiting >= AUTH_QUEUE:
                    self._note("busy", conn.peer, "too many password checks waiting")
                    return 503, b"busy\n", [*_TEXT, ("Retry-After", "1")], handler
                else:  # a bcrypt run: on its own thread, never a render's
                    self._auth_waiting += 1
                    try:
                        ok, why = await asyncio.get_running_loop().run_in_executor(
                            self._auth_pool, web.auth.check, header)
                    finally:
                        self._auth_waiting -= 1
                if not ok:
                    if auth:  # a request without credentials is a browser's first try
                        self._note("unauthorized", conn.peer, why)
                    else:
                        self.stats.refuse("unauthorized")
                    return 401, b"unauthorized\n", [
                        *_TEXT, ("WWW-Authenticate", 'Basic realm="gpuprobe"')], handler
            if handler == "metrics":
                return await self._metrics(url.query, req, conn, handler)
            if handler in ("healthz", "readyz"):
                ok, data = (self.health if handler == "healthz" else self.ready)()
                body = (json.dumps(data, sort_keys=True) + "\n").encode()
                return 200 if ok else 503, body, [("Content-Type", "application/json")], handler
            if handler == "landing":
                return 200, self.landing().encode(), [
                    ("Content-Type", "text/html; charset=utf-8")], handler
            return 404, b"not found\n", _TEXT, handler
        except ConnectionError:
            raise
        except Exception:
            self._throttled.warning("500", "internal error answering %s %r from %s; details "
                                    "at debug level", req.method.decode("latin-1"),
                                    req.target[:100].decode("latin-1"), conn.peer)
            log.debug("request failed", exc_info=True)
            return 500, b"internal server error\n", _TEXT, handler

    async def _metrics(self, query: str, req: h11.Request, conn: _Conn,
                       handler: str) -> tuple[int, Body, list[tuple[str, str]], str]:
        try:
            names = parse_qs(query, max_num_fields=200).get("name[]")
        except ValueError:
            return 400, b"bad query\n", _TEXT, handler
        accept = dict(req.headers).get(b"accept-encoding", b"").decode("latin-1")
        key = (tuple(names) if names else None, gzip_accepted(accept))
        shared = self._renders.get(key)
        if shared is None:
            if len(self._renders) >= 4 * self.limits.render_threads:
                self.stats.refuse("busy")
                return 503, b"busy\n", [*_TEXT, ("Retry-After", "1")], handler
            shared = _Render([conn])
            queued = time.monotonic()

            def job() -> tuple[list[bytes], list[tuple[str, str]]]:
                # Queued behind other renders, its clients may all have left meanwhile. (Not
                # asked of a render that starts at once: a client that half-closes its side
                # after its request, as `nc -N` does, still gets its answer.)
                if time.monotonic() - queued > 0.05 and all(c.gone() for c in shared.waiters):
                    raise ConnectionResetError("every client of this render left")
                return self.exposition.render_parts(names, accept)

            shared.future = asyncio.get_running_loop().run_in_executor(self._pool, job)
            self._renders[key] = shared
            shared.future.add_done_callback(lambda _f: self._renders.pop(key, None))
        else:
            shared.waiters.append(conn)
        assert shared.future is not None
        body, headers = await asyncio.shield(shared.future)
        return 200, body, [*headers, ("Vary", "Accept-Encoding")], handler

    def _take_token(self, web: WebConfig) -> bool:
        rl = web.rate_limit
        assert rl is not None
        now = time.monotonic()
        tokens, when = self._tokens or (float(rl.burst), now)
        tokens = min(float(rl.burst), tokens + (now - when) / rl.interval)
        if tokens < 1:
            self._tokens = (tokens, now)
            return False
        self._tokens = (tokens - 1, now)
        return True


async def _drain(read: Callable[[], Any], limit: int = 1 << 20) -> None:
    seen = 0
    while seen < limit:
        chunk = await read()
        if not chunk:
            return
        seen += len(chunk)


_TEXT = [("Content-Type", "text/plain; charset=utf-8")]
_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
            405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Content Too Large",
            429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 503: b"Service Unavailable"}


def _headers(headers: list[tuple[str, str]], web: WebConfig, length: int
             ) -> list[tuple[str, str]]:
    return [*headers, *web.headers, ("Content-Length", str(length)), ("Server", "gpuprobe"),
            ("Date", email.utils.formatdate(usegmt=True))]


def _raw_response(status: int, body: str) -> bytes:
    """A response written before (or instead of) HTTP parsing: always closes."""
    data = body.encode()
    return (f"HTTP/1.1 {status} {_REASONS.get(status, b'').decode()}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\nServer: gpuprobe\r\n\r\n").encode() + data


def landing_page(version: str, listen: str, devices: int, collectors: dict[str, bool]) -> str:
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{'up' if up else 'down'}</td></tr>"
                   for n, up in sorted(collectors.items()))
    return (
        "<!doctype html><html><head><title>gpuprobe</title></head><body>"
        f"<h1>gpuprobe {html.escape(version)}</h1>"
        "<p>Cross-vendor GPU exporter. "
        '<a href="/metrics">Metrics</a> · <a href="/healthz">Health</a> · '
        '<a href="/readyz">Readiness</a></p>'
        f"<p>Listening on {html.escape(listen)}; {devices} device(s) known.</p>"
        f"<table><tr><th>collector</th><th>state</th></tr>{rows}</table>"
        "</body></html>\n")
