"""HTTP: ``/metrics``, ``/healthz``, ``/readyz``, a landing page at ``/``, 404 elsewhere.

``/metrics`` renders our prometheus_client registry in the text format (see
exposition.py), gzipped when asked, with prometheus_client's ``name[]`` filter. ``/healthz``
answers 200 while the scheduler loop ticks; ``/readyz`` answers 200 once every collector has
been tried at least once, whether its library came up or is being retried. Each request has
a socket timeout, so a stuck client cannot hold a thread.
"""

from __future__ import annotations

import html
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from prometheus_client import CollectorRegistry

from .exposition import Encoder, render

log = logging.getLogger("gpuprobe.http")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class HttpServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 health: Callable[[], tuple[bool, dict[str, Any]]],
                 ready: Callable[[], tuple[bool, dict[str, Any]]],
                 landing: Callable[[], str]) -> None:
        encoder = Encoder()

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def do_GET(self) -> None:
                url = urlparse(self.path)
                path = url.path
                if path == "/metrics":
                    names = parse_qs(url.query).get("name[]")
                    body, headers = render(registry, names, self.headers.get("Accept-Encoding"),
                                           encoder if names is None else None)
                    self._send(200, headers[0][1], body, headers[1:])
                elif path == "/healthz":
                    self._json(*health())
                elif path == "/readyz":
                    self._json(*ready())
                elif path == "/":
                    self._send(200, "text/html; charset=utf-8", landing().encode())
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")

            def _json(self, ok: bool, body: dict[str, Any]) -> None:
                self._send(200 if ok else 503, "application/json",
                           (json.dumps(body, sort_keys=True) + "\n").encode())

            def _send(self, status: int, ctype: str, body: bytes,
                      extra: list[tuple[str, str]] = ()) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for header in extra:
                    self.send_header(*header)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), fmt % args)

        _Server.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.server = _Server((host, port), Handler)  # raises OSError if it cannot bind
        self.port = self.server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name="http",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
