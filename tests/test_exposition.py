"""Our text encoder writes exactly what prometheus_client.generate_latest writes."""

from __future__ import annotations

import gzip
import math
import time

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from gpuprobe.daemon.export.exposition import Encoder, encode, render

from .conftest import make_daemon


class Fixed:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def reference(metrics: list[Metric]) -> bytes:
    r = CollectorRegistry(auto_describe=False)
    r.register(Fixed(metrics))
    return generate_latest(r)


def test_same_bytes_for_awkward_values_and_labels():
    g = GaugeMetricFamily("g", 'help with \\ backslash and\nnewline', labels=["b", "a"])
    for i, v in enumerate([0.0, -0.0, 1.0, 0.5, 123456.7, 1e6, 1234567.0, 8.589934592e10,
                           1e21, -3.5, -1e9, math.inf, -math.inf, math.nan, 2**53, 7]):
        g.add_metric([f'q"uote\\{i}', "new\nline ünïcode"], v)
    c = CounterMetricFamily("c", "a counter", labels=["x"], created=1700000000.5)
    c.add_metric(["1"], 42, created=1700000001.25)
    i = InfoMetricFamily("build", "info", value={"version": "1.0", "python": "3.11"})
    bare = GaugeMetricFamily("bare", "no labels", value=3)
    stamped = GaugeMetricFamily("stamped", "with a timestamp", labels=["k"])
    stamped.add_metric(["v"], 1, timestamp=1700000000.123)
    metrics = [g, c, i, bare, stamped]
    assert encode(metrics) == reference(metrics)


def test_same_bytes_for_a_full_simulated_scrape():
    d = make_daemon()
    try:
        for _ in range(2):
            d.scheduler.run_once()
            time.sleep(0.12)
            d.simulation.world.clock.advance(5)
        fams = list(next(iter(d.registry._collector_to_names)).collect())
        assert len(fams) > 40
        enc = Encoder()
        assert enc.encode(fams) == reference(fams)
        assert enc.encode(fams) == reference(fams)  # and again, from the label cache
    finally:
        d.stop()


def test_label_cache_is_keyed_by_label_names_too():
    a = GaugeMetricFamily("m", "h", labels=["pid", "name"])
    a.add_metric(["1", "x"], 1)
    b = GaugeMetricFamily("m", "h", labels=["pid", "container"])
    b.add_metric(["1", "x"], 1)
    enc = Encoder()
    assert enc.encode([a]) == reference([a])
    assert enc.encode([b]) == reference([b])


@pytest.mark.parametrize("gz", [False, True])
def test_render_headers_gzip_and_name_filter(gz):
    r = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=r)
    body, headers = render(r, ["process_open_fds"], "gzip" if gz else None)
    text = (gzip.decompress(body) if gz else body).decode()
    assert dict(headers)["Content-Type"].startswith("text/plain; version=0.0.4")
    assert ("Content-Encoding", "gzip") in headers if gz else len(headers) == 1
    assert "process_open_fds" in text and "process_cpu_seconds_total" not in text
