"""HTTP server under hostile and demanding clients: the server before the hardening and the
current one, side by side in one run.

    .venv/bin/python benchmarks/http_load.py [--slow 1000] [--duration 20] [--burst 200]
                                             [--write docs/reliability.md]

Each arm is a child process serving the default simulation (8 GPUs, probes off) with its
soft RLIMIT_NOFILE set to 1024, systemd's default:

- ``threading``: the server gpuprobe had before (the standard library's
  ThreadingHTTPServer, a thread per connection, HTTP/1.0, a 10 s timeout on each read, a
  listen backlog of 5), copied below as it was;
- ``asyncio``: daemon/service/http.py (one event loop, h11, a deadline on the whole request head, a
  connection cap that evicts clients without a whole request, shared renders).

For each: start-up (spawn to first /metrics), resident memory and threads at rest; then
``--slow`` clients that each send a request one byte a second (and reconnect when cut off)
while a well-behaved scraper on a kept-alive connection scrapes every 0.5 s for
``--duration`` s: its latency p50/p99/max and failures, the GPUs that read down, the
daemon's peak threads, descriptors and memory; then ``--burst`` simultaneous scrapes.
Loopback only; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))
from _harness import free_port, print_table  # noqa: E402

from tests.slowclients import Scrapes, SlowClients, burst, scrape_every  # noqa: E402

ARMS = ("threading", "asyncio")


# -- the child: one arm serving the simulation ------------------------------------------------

def _old_server(host: str, port: int, registry: Any) -> Any:
    """gpuprobe's HTTP server before the hardening (daemon/service/http.py at 9df681c), less the
    health and landing handlers this benchmark does not call."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlparse

    from gpuprobe.daemon.export.exposition import Encoder, render

    encoder = Encoder()

    class Handler(BaseHTTPRequestHandler):
        timeout = 10

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/metrics":
                names = parse_qs(url.query).get("name[]")
                body, headers = render(registry, names, self.headers.get("Accept-Encoding"),
                                       encoder if names is None else None)
                self.send_response(200)
                self.send_header("Content-Type", headers[0][1])
                self.send_header("Content-Length", str(len(body)))
                for header in headers[1:]:
                    self.send_header(*header)
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404)

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def serve(arm: str, port: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    from gpuprobe.daemon.core import config as config_mod
    from gpuprobe.daemon.service.app import Daemon
    from gpuprobe.probes.sim import Simulation

    cfg = config_mod.from_mapping({"collectors": {"pcie_probe": {"enabled": False},
                                                  "launch_probe": {"enabled": False}}})
    # The default scenario less its GPU that falls off the bus, so that a GPU reading down
    # here is the server's doing.
    import yaml

    from gpuprobe.probes.sim.scenario import parse

    default = ROOT / "probes" / "sim" / "scenarios" / "default.yaml"
    data = yaml.safe_load(default.read_text(encoding="utf-8"))
    for device in data["devices"]:
        device["events"] = [e for e in device.get("events", [])
                            if e.get("kind") != "fall_off_bus"]
    daemon = Daemon(cfg, Simulation(parse(data)))
    daemon.start(serve=False)
    if arm == "threading":
        _old_server("127.0.0.1", port, daemon.registry)
    else:
        from gpuprobe.daemon.service.http import HttpServer

        server = HttpServer("127.0.0.1", port, daemon.registry, daemon.health, daemon.ready,
                            daemon.landing)
        daemon.registry.register(server.stats)
        server.start()
    print("READY", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    daemon.stop()  # removes the simulation's files


# -- the parent: measure each arm --------------------------------------------------------------

def _usage(proc: psutil.Process) -> dict[str, float]:
    with proc.oneshot():
        return {"rss_mb": proc.memory_info().rss / 1e6, "threads": proc.num_threads(),
                "fds": proc.num_fds()}


def _down(body: str) -> int:
    return sum(1 for m in re.finditer(r"^gpuprobe_device_up\{[^}]*\} (\S+)$", body, re.M)
               if float(m.group(1)) == 0)


def _summary(s: Scrapes) -> dict[str, Any]:
    return {"ok": len(s.latencies), "failed": len(s.failures),
            "p50_ms": s.quantile(0.5) * 1e3, "p99_ms": s.quantile(0.99) * 1e3,
            "max_ms": (max(s.latencies) if s.latencies else float("nan")) * 1e3,
            "first_failures": sorted(set(s.failures))[:3]}


def _spawn(arm: str) -> tuple[subprocess.Popen[str], int, float]:
    """A child serving ``arm``, its port, and the seconds from spawn to its first /metrics."""
    port = free_port()
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, __file__, "--serve", arm, "--port", str(port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "READY"
    first = Scrapes()
    while not first.latencies and time.monotonic() - started < 60:
        first = scrape_every(port, 0.02, 0.01, timeout=5)  # one scrape
    return child, port, time.monotonic() - started


def _end(child: subprocess.Popen[str]) -> None:
    child.stdin.close()  # type: ignore[union-attr]  # the child stops its daemon and exits
    try:
        child.wait(10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def startups(arms: list[str], rounds: int) -> dict[str, float]:
    """Median spawn-to-first-/metrics per arm, the arms alternating."""
    times: dict[str, list[float]] = {a: [] for a in arms}
    for _ in range(rounds):
        for arm in arms:
            child, _, took = _spawn(arm)
            _end(child)
            times[arm].append(took)
    return {a: sorted(t)[len(t) // 2] for a, t in times.items()}


def measure(arm: str, slow: int, duration: float, burst_size: int) -> dict[str, Any]:
    child, port, startup = _spawn(arm)
    try:
        proc = psutil.Process(child.pid)
        time.sleep(3)
        rest = _usage(proc)
        base = scrape_every(port, 0.5, 3)
        down_before = _down(base.last_body)
        peak = dict(rest)
        with SlowClients(port, slow) as clients:
            time.sleep(2)  # let them all connect
            end = time.monotonic() + duration
            scrapes = Scrapes()
            while time.monotonic() < end:
                part = scrape_every(port, 0.5, min(2.0, end - time.monotonic()), timeout=5)
                scrapes.latencies += part.latencies
                scrapes.failures += part.failures
                scrapes.last_body = part.last_body or scrapes.last_body
                for k, v in _usage(proc).items():
                    peak[k] = max(peak[k], v)
            held = clients.open_now
            cut_off = clients.cut_off
        after = scrape_every(port, 0.5, 3)  # has it recovered?
        time.sleep(1)
        b = burst(port, burst_size, timeout=10)
        return {
            "arm": arm, "startup_s": startup, "rest": rest, "peak": peak,
            "slow_clients_held": held, "slow_clients_cut_off": cut_off,
            "during": _summary(scrapes), "after": _summary(after),
            "gpus_down_before": down_before,
            "gpus_down_during": _down(scrapes.last_body) if scrapes.last_body else None,
            "burst": _summary(b),
        }
    finally:
        _end(child)


BEGIN, END = "<!-- BEGIN http_load.py -->", "<!-- END http_load.py -->"


def table(results: list[dict[str, Any]], argv: list[str]) -> str:
    def row(label: str, fn: Any) -> str:
        return f"| {label} | " + " | ".join(fn(r) for r in results) + " |"

    def ms(x: float) -> str:
        return "-" if x != x else f"{x:.0f} ms"

    lines = [
        BEGIN,
        f"Measured by `.venv/bin/python benchmarks/http_load.py {' '.join(argv)}` on "
        f"{platform.machine()} ({os.cpu_count()} CPUs, Python {platform.python_version()}), "
        f"{time.strftime('%Y-%m-%d')}; soft RLIMIT_NOFILE 1024 (systemd's default) in both.",
        "",
        "| | " + " | ".join({"threading": "before: ThreadingHTTPServer",
                            "asyncio": "now: asyncio + h11"}[r["arm"]] for r in results) + " |",
        "|---|" + "---|" * len(results),
        row(f"Start-up, spawn to first /metrics (median of {results[0]['rounds']})",
            lambda r: f"{r['startup_s']:.2f} s"),
        row("Resident memory at rest", lambda r: f"{r['rest']['rss_mb']:.1f} MB"),
        row("Threads at rest", lambda r: str(r["rest"]["threads"])),
        row(f"Slow clients holding a connection (of {results[0]['slow_n']})",
            lambda r: str(r["slow_clients_held"])),
        row("Scraper during the flood: ok / failed",
            lambda r: f"{r['during']['ok']} / {r['during']['failed']}"),
        row("Scraper during the flood: p50 / p99 / max",
            lambda r: f"{ms(r['during']['p50_ms'])} / {ms(r['during']['p99_ms'])} / "
                      f"{ms(r['during']['max_ms'])}"),
        row("GPUs reading down during the flood (before it)",
            lambda r: f"{'no scrape' if r['gpus_down_during'] is None else r['gpus_down_during']}"
                      f" ({r['gpus_down_before']})"),
        row("Peak threads / descriptors / memory",
            lambda r: f"{r['peak']['threads']:.0f} / {r['peak']['fds']:.0f} / "
                      f"{r['peak']['rss_mb']:.0f} MB"),
        row("Scraper after the flood: ok / failed",
            lambda r: f"{r['after']['ok']} / {r['after']['failed']}"),
        row(f"{results[0]['burst_n']} simultaneous scrapes: ok / failed",
            lambda r: f"{r['burst']['ok']} / {r['burst']['failed']}"),
        row("Simultaneous scrapes: p50 / p99",
            lambda r: f"{ms(r['burst']['p50_ms'])} / {ms(r['burst']['p99_ms'])}"),
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--slow", type=int, default=1000, help="slow clients (default 1000)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of flood")
    ap.add_argument("--burst", type=int, default=200, help="simultaneous scrapes")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--startups", type=int, default=5, help="start-up rounds per arm")
    ap.add_argument("--write", metavar="FILE", help="update this markdown file's table")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    arms = args.arms.split(",")
    started = startups(arms, args.startups)
    results = []
    for arm in arms:
        r = measure(arm, args.slow, args.duration, args.burst)
        r["slow_n"], r["burst_n"], r["rounds"] = args.slow, args.burst, args.startups
        r["startup_s"] = started[arm]
        print(json.dumps(r, indent=2), flush=True)
        results.append(r)
    return print_table(table(results, sys.argv[1:]), args.write, BEGIN, END)


if __name__ == "__main__":
    sys.exit(main())
