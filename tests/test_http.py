"""The HTTP server on its own: HTTP/1.1 and keep-alive, HEAD, errors that answer instead of
dropping the connection, deadlines on the whole request, the connection cap, shared renders.

Each test serves a small registry on a loopback port in this process and talks to it over
real sockets."""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily

from gpuprobe.daemon.core.config import HttpConfig
from gpuprobe.daemon.service.http import HttpServer, raise_fd_limit


class Counting:
    """A collector that counts its renders and can be made slow or broken."""

    def __init__(self) -> None:
        self.renders = 0
        self.delay = 0.0
        self.fail = False

    def collect(self) -> Iterator:
        self.renders += 1
        if self.fail:
            raise RuntimeError("collector broke")
        time.sleep(self.delay)
        yield from ()


def serve(limits: HttpConfig | None = None, **kw) -> tuple[HttpServer, Counting]:
    registry = CollectorRegistry(auto_describe=True)
    Gauge("gpuprobe_test_value", "A test value.", registry=registry).set(1)
    counting = Counting()
    registry.register(counting)
    server = HttpServer("127.0.0.1", 0, registry, lambda: (True, {"ok": 1}),
                        lambda: (True, {"ready": True}), lambda: "<html>hi</html>",
                        limits=limits or HttpConfig(), **kw)
    registry.register(server.stats)
    server.start()
    return server, counting


@pytest.fixture
def server() -> Iterator[tuple[HttpServer, Counting]]:
    s = serve(HttpConfig(read_header_timeout=1.0, idle_timeout=2.0, write_timeout=2.0))
    yield s
    s[0].stop()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def refused(server: HttpServer, reason: str) -> int:
    return server.stats.refused[reason]


def test_keep_alive_serves_several_requests_on_one_connection(server):
    s, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
    for _ in range(3):
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200 and b"gpuprobe_test_value 1.0" in body
        assert r.version == 11 and not r.will_close
        assert r.getheader("Vary") == "Accept-Encoding"
        assert r.getheader("Server") == "gpuprobe"  # no Python version
    assert s.stats.requests[("metrics", "200")] == 3
    conn.close()


def test_head_answers_headers_without_a_body(server):
    s, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
    conn.request("HEAD", "/metrics")
    r = conn.getresponse()
    assert r.status == 200 and int(r.getheader("Content-Length")) > 0
    assert r.read() == b""
    conn.request("GET", "/healthz")  # the connection is still in step
    assert conn.getresponse().status == 200


def test_other_methods_and_paths(server):
    s, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
    conn.request("DELETE", "/metrics")
    r = conn.getresponse()
    r.read()
    assert r.status == 405 and r.getheader("Allow") == "GET, HEAD"
    conn.request("GET", "/nope")
    r = conn.getresponse()
    r.read()
    assert r.status == 404


def test_a_request_body_is_refused_and_the_connection_closed(server):
    s, _ = server
    out = raw(s.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert out.startswith(b"HTTP/1.1 413 ")
    assert refused(s, "bad_request") == 1


def test_garbage_gets_400_and_an_oversized_head_431(server):
    s, _ = server
    assert raw(s.port, b"\x00\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
    assert raw(s.port, huge).startswith(b"HTTP/1.1 431 ")
    assert refused(s, "bad_request") == 2


def test_a_failing_render_answers_500_and_the_server_carries_on(server, capfd):
    s, counting = server
    counting.fail = True
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
    conn.request("GET", "/metrics")
    r = conn.getresponse()
    assert r.status == 500 and r.read() == b"internal server error\n"
    counting.fail = False
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
    conn.request("GET", "/metrics")
    assert conn.getresponse().status == 200
    assert "Traceback" not in capfd.readouterr().err


def test_a_slow_request_is_cut_off_at_the_deadline_for_the_whole_head(server):
    s, _ = server
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        started = time.monotonic()
        answer = b""
        # one byte every 0.2 s: each read is quick, the whole head never arrives in time
        for byte in b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100:
            try:
                c.send(bytes([byte]))
            except OSError:
                break
            c.settimeout(0.2)
            try:
                answer = c.recv(1024)
                if answer or time.monotonic() - started > 8:
                    break
            except TimeoutError:
                continue
        assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert refused(s, "header_timeout") == 1


def test_an_idle_kept_alive_connection_is_closed(server):
    s, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    sock = conn.sock
    sock.settimeout(10)
    assert sock.recv(1) == b""  # closed by the server after idle_timeout (2 s here)


def test_a_client_that_leaves_costs_no_traceback(server, capfd):
    s, counting = server
    counting.delay = 0.3
    for _ in range(5):
        c = socket.create_connection(("127.0.0.1", s.port))
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        c.close()
    time.sleep(1)
    counting.delay = 0
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
    conn.request("GET", "/metrics")
    assert conn.getresponse().status == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_concurrent_scrapes_share_one_render(server):
    s, counting = server
    counting.delay = 0.5
    before = counting.renders

    def scrape(_i: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        r.read()
        return r.status

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(scrape, range(20)))
    assert statuses == [200] * 20
    # 20 scrapes during one 0.5 s render: far fewer renders than scrapes
    assert counting.renders - before <= 4


class Snapshotted:
    """A collector whose families are a function of a snapshot it names, as the exporter's."""

    def __init__(self) -> None:
        self.version, self.value, self.collects = object(), 1.0, 0

    def describe(self) -> Iterator:
        yield GaugeMetricFamily("gpuprobe_test_snapshot", "From the snapshot.")

    def snapshot(self) -> object:
        return self.version

    def collect(self, snapshot: object = None) -> Iterator:
        self.collects += 1
        yield GaugeMetricFamily("gpuprobe_test_snapshot", "From the snapshot.", value=self.value)


def test_scrapes_of_one_snapshot_share_one_encode_and_the_counters_stay_fresh():
    registry = CollectorRegistry(auto_describe=True)
    snap = Snapshotted()
    registry.register(snap)
    s = HttpServer("127.0.0.1", 0, registry, lambda: (True, {}), lambda: (True, {}),
                   lambda: "")
    registry.register(s.stats)
    s.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
        for i in range(6):
            gz = i % 2 == 1
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if gz else {})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200 and (r.getheader("Content-Encoding") == "gzip") == gz
            text = (gzip.decompress(body) if gz else body).decode()
            assert "gpuprobe_test_snapshot 1.0" in text
            # the server's own counters are encoded fresh: each scrape sees those before it
            count = f'gpuprobe_http_requests_total{{code="200",handler="metrics"}} {i}.0'
            assert (count in text) == (i > 0), text
        assert snap.collects == 1 and s.exposition.encodes == 1
        assert s.exposition.compressions == 1
        snap.version, snap.value = object(), 2.0  # a publish
        conn.request("GET", "/metrics")
        assert b"gpuprobe_test_snapshot 2.0" in conn.getresponse().read()
        assert snap.collects == 2
    finally:
        s.stop()


def test_at_the_cap_a_new_connection_evicts_the_oldest_that_sent_no_request():
    s, _ = serve(HttpConfig(max_connections=8, read_header_timeout=30))
    try:
        idle = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(8)]
        for c in idle:
            c.send(b"G")  # started, never finished
        time.sleep(0.3)
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 200
        assert refused(s, "evicted") >= 1
        idle[0].settimeout(5)
        assert idle[0].recv(100) == b""  # the oldest went
        for c in idle:
            c.close()
    finally:
        s.stop()


def test_at_the_cap_with_every_connection_busy_the_next_is_refused_at_once():
    s, counting = serve(HttpConfig(max_connections=8, read_header_timeout=30))
    counting.delay = 2.0
    try:
        busy = []
        for _ in range(8):
            c = socket.create_connection(("127.0.0.1", s.port))
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            busy.append(c)
        time.sleep(0.3)
        out = raw(s.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 503 "), out
        assert refused(s, "connection_limit") == 1
        for c in busy:
            c.close()
    finally:
        s.stop()


def test_tls_to_the_plain_port_is_answered_at_once(server):
    s, _ = server
    hello = bytes.fromhex("16030100a5010000a10303") + b"\x00" * 50
    assert raw(s.port, hello).startswith(b"HTTP/1.1 400 ")
    assert refused(s, "tls_on_plain_port") == 1


def test_fd_limit_is_raised_to_the_hard_limit():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    got = raise_fd_limit()
    assert got == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert got >= min(soft if hard == resource.RLIM_INFINITY else hard, 65536) or got >= soft


def test_stop_closes_open_connections():
    s, _ = serve()
    c = socket.create_connection(("127.0.0.1", s.port))
    c.send(b"GET")
    time.sleep(0.1)
    done = threading.Event()
    threading.Thread(target=lambda: (s.stop(), done.set())).start()
    assert done.wait(10)
    c.settimeout(5)
    assert c.recv(10) == b""


def test_a_render_queued_for_clients_that_all_left_is_not_done():
    s, counting = serve(HttpConfig(render_threads=1))
    counting.delay = 1.0
    before = counting.renders  # registering it collected once
    try:
        first = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        first.request("GET", "/metrics")  # occupies the only render thread for 1 s
        time.sleep(0.2)
        for _ in range(3):  # a different render (gzip), queued; its clients leave at once
            c = socket.create_connection(("127.0.0.1", s.port))
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
            c.close()
        assert first.getresponse().status == 200
        time.sleep(1.5)
        assert counting.renders - before == 1
    finally:
        s.stop()


def test_listening_on_all_ipv6_addresses_takes_ipv4_too():
    if not socket.has_dualstack_ipv6():
        pytest.skip("no dual-stack IPv6 here")
    registry = CollectorRegistry(auto_describe=True)
    try:
        s = HttpServer("::", 0, registry, lambda: (True, {}), lambda: (True, {}), lambda: "")
    except OSError as e:
        pytest.skip(f"cannot bind [::]: {e}")
    s.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        s.stop()
