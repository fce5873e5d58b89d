"""Raw HTTP requests from hypothesis against the server: whatever arrives, the answer is a
4xx or a 2xx (never a 500, a traceback or a dropped connection with nothing said to a
client that sent a whole head), and the server still answers a good request after it."""

from __future__ import annotations

import logging
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuprobe.daemon.core.config import HttpConfig

from .test_http import serve

METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE",
                           b"CONNECT", b"PRI", b"get", b"G E T", b""]) | st.binary(max_size=8)
TARGETS = st.sampled_from([b"/metrics", b"/", b"/healthz", b"/readyz", b"/metrics?name[]=x",
                           b"/metrics?name[]=gpuprobe_test_value&name[]=", b"*",
                           b"http://h/metrics", b"/%00", b"/../etc/passwd", b"/metrics?" +
                           b"&".join([b"a=b"] * 300)]) | st.binary(max_size=64)
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9",
                            b"HTTP/2.0", b"HTTP/1.1x", b"", b"SPDY/3"])
HEADER_NAMES = st.sampled_from([b"Host", b"Accept-Encoding", b"Content-Length",
                                b"Transfer-Encoding", b"Connection", b"Authorization",
                                b"Expect", b"X-Forwarded-For", b"Upgrade"]) | \
    st.binary(min_size=1, max_size=16)
HEADER_VALUES = st.sampled_from([b"gzip", b"gzip;q=0", b"identity", b"*", b"-1", b"0", b"5",
                                 b"99999999999999999999", b"chunked", b"close", b"keep-alive",
                                 b"Basic !!!", b"Basic Zm9vOmJhcg==", b"100-continue",
                                 b"h2c", b"\xff\xfe"]) | st.binary(max_size=64)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6)
EOLS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n"])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    eol = draw(EOLS)
    line = b" ".join([draw(METHODS), draw(TARGETS), draw(VERSIONS)])
    host = [b"Host: localhost"] if draw(st.integers(0, 4)) else []  # mostly well-formed
    head = [line, *host] + [name + b": " + value for name, value in draw(HEADERS)]
    data = eol.join(head) + eol + eol + draw(st.binary(max_size=32))
    if draw(st.booleans()):  # and sometimes a second, pipelined request
        data += b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    return data


@pytest.fixture(scope="module")
def server():
    s, _ = serve(HttpConfig(read_header_timeout=0.5, idle_timeout=0.5, write_timeout=2.0))
    yield s
    s.stop()


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := c.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=requests() | st.binary(max_size=256))
def test_any_request_gets_a_client_error_or_an_answer(server, data, caplog):
    caplog.set_level(logging.DEBUG, logger="gpuprobe.http")
    out = exchange(server.port, data)
    statuses = [int(line.split()[1]) for line in out.split(b"\r\n")
                if line.startswith(b"HTTP/1.1 ") and len(line.split()) > 1]
    assert all(s < 500 or s == 503 for s in statuses), out[:300]
    if out:
        assert out.startswith(b"HTTP/1.1 "), out[:300]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or (r.exc_info
                and r.levelno > logging.DEBUG)], caplog.text[-2000:]
    # still serving
    assert exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
        b"HTTP/1.1 200 ")
