"""The daemon under hostile and demanding clients (loopback only, bounded in time): 1,000
clients that each send their request one byte a second must not stop a well-behaved
scraper or make any GPU read down; 200 simultaneous scrapes must all be answered.
The figures themselves (the scraper's p99, RSS) are measured by benchmarks/http_load.py."""

from __future__ import annotations

import re

import pytest

from .conftest import RunningDaemon, write_yaml
from .slowclients import SlowClients, burst, scrape_every

pytestmark = pytest.mark.slow

CONFIG = {"collectors": {"pcie_probe": {"enabled": False}, "launch_probe": {"enabled": False}},
          "http": {"read_header_timeout": "5s"}}


def device_up(body: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^gpuprobe_device_up\{[^}]*gpu="([^"]+)"[^}]*\} (\S+)$', body, re.M)}


@pytest.fixture
def daemon(tmp_path):
    d = RunningDaemon("--simulate", "--config", str(write_yaml(tmp_path / "c.yaml", CONFIG)))
    d.wait_ready()
    yield d
    out = d.stop()
    assert "Traceback" not in out, out[-3000:]


def test_a_thousand_slow_clients_do_not_stop_the_scraper_or_a_gpu(daemon):
    _, before = daemon.get("/metrics")
    up_before = device_up(before)
    assert up_before and set(up_before.values()) <= {0.0, 1.0}
    with SlowClients(daemon.port, 1000) as slow:
        scrapes = scrape_every(daemon.port, interval=0.5, duration=15, timeout=5)
        held = slow.open_now
    assert held >= 900, f"only {held} slow clients held connections"
    assert not scrapes.failures, scrapes.failures[:5]
    assert len(scrapes.latencies) >= 20
    # every GPU that was up is still up: fd or thread exhaustion made them all read down
    up_after = device_up(scrapes.last_body)
    assert {g for g, v in up_before.items() if v} <= {g for g, v in up_after.items() if v}, \
        (up_before, up_after)
    # the slow clients were cut off at the deadline for the whole request head
    timeouts = re.search(r'^gpuprobe_http_refused_total\{reason="header_timeout"\} (\S+)$',
                         daemon.get("/metrics")[1], re.M)
    assert timeouts and float(timeouts.group(1)) >= 500


def test_two_hundred_simultaneous_scrapes_all_succeed(daemon):
    result = burst(daemon.port, 200, timeout=30)
    assert not result.failures, result.failures[:5]
    assert len(result.latencies) == 200
