"""Our text encoder writes exactly what prometheus_client.generate_latest writes."""

from __future__ import annotations

import gzip
import math
import time
import zlib

import pytest
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from gpuprobe.daemon.core.state import CollectorHealth
from gpuprobe.daemon.export.exporter import SnapshotCollector
from gpuprobe.daemon.export.exposition import Encoder, Exposition, encode, render

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


# -- encoded once per snapshot ---------------------------------------------------------------

@pytest.fixture
def polled():
    """A simulated daemon polled twice, its store not published to again unless a test does."""
    d = make_daemon()
    for _ in range(2):
        d.scheduler.run_once()
        time.sleep(0.12)
        d.simulation.world.clock.advance(5)
    yield d
    d.stop()


def snapshot_registry(d, volatile_first: bool = False):
    """The exporter's collector and a gauge beside it (standing for the HTTP server's
    counters, which change on every scrape); no process_* metrics, whose CPU time moves
    between two renders."""
    r = CollectorRegistry(auto_describe=True)
    if volatile_first:
        g = Gauge("gpuprobe_test_volatile", "Changes between scrapes.", registry=r)
    r.register(SnapshotCollector(d.store, d.config.exporter))
    if not volatile_first:
        g = Gauge("gpuprobe_test_volatile", "Changes between scrapes.", registry=r)
    g.set(1)
    return r, g


def publish_health(d, name: str, duration: float) -> None:
    d.store.publish(name, None, CollectorHealth(name, 5.0, up=True, runs=1,
                                                last_duration=duration))


def one_gzip_member(data: bytes) -> bytes:
    z = zlib.decompressobj(31)
    out = z.decompress(data)
    assert z.eof and z.unused_data == b"", "not exactly one gzip member"
    return out


def test_many_scrapes_of_one_snapshot_encode_and_compress_it_once(polled):
    r, g = snapshot_registry(polled)
    e = Exposition(r)
    plain = [e.render()[0] for _ in range(5)]
    zipped = [e.render(None, "gzip")[0] for _ in range(5)]
    assert e.encodes == 1 and e.compressions == 1
    assert plain == [generate_latest(r)] * 5
    assert [one_gzip_member(z) for z in zipped] == plain
    assert gzip.decompress(zipped[0]) == plain[0]
    g.set(2)  # what is not the snapshot's is encoded on every scrape
    body, _ = e.render()
    assert b"gpuprobe_test_volatile 2.0" in body and body == generate_latest(r)
    assert one_gzip_member(e.render(None, "gzip")[0]) == body
    assert e.encodes == 1 and e.compressions == 1


def test_a_publish_makes_the_next_scrape_encode_the_new_snapshot(polled):
    r, _ = snapshot_registry(polled)
    e = Exposition(r)
    publish_health(polled, "extra", 0.25)
    before, _ = e.render()
    assert b'gpuprobe_collector_duration_seconds{collector="extra"} 0.25' in before
    publish_health(polled, "extra", 0.5)
    after, _ = e.render()
    assert b'gpuprobe_collector_duration_seconds{collector="extra"} 0.5' in after
    assert after == generate_latest(r) and e.encodes == 2
    assert one_gzip_member(e.render(None, "gzip")[0]) == after and e.compressions == 1


def test_gzip_holds_when_the_cached_part_is_not_first(polled):
    r, g = snapshot_registry(polled, volatile_first=True)
    e = Exposition(r)
    for value in (1, 2):
        g.set(value)
        body, _ = e.render()
        assert body == generate_latest(r)
        assert one_gzip_member(e.render(None, "gzip")[0]) == body
    assert e.encodes == 1 and e.compressions == 1


def blocks(text: bytes) -> set[bytes]:
    """The families of an exposition, in no order (a restricted registry's order of
    collectors is a set's)."""
    return {b"# HELP" + b for b in text.split(b"# HELP") if b}


def test_name_filter_picks_from_the_cached_families(polled):
    r, _ = snapshot_registry(polled)
    e = Exposition(r)
    e.render()
    for names in (["gpuprobe_device_up"],
                  ["gpuprobe_device_up", "gpuprobe_collector_errors_total"],
                  ["gpuprobe_device_up", "gpuprobe_test_volatile", "no_such_metric"],
                  ["gpuprobe_test_volatile"], ["no_such_metric"],
                  ["gpuprobe_collector_errors"]):  # a family name picks no sample
        want = generate_latest(r.restricted_registry(names))
        for gz in (None, "gzip"):
            body, _ = e.render(names, gz)
            got = gzip.decompress(body) if gz else body
            assert blocks(got) == blocks(want), names
            if len(blocks(want)) <= 1 or "gpuprobe_test_volatile" not in names:
                assert got == want, names
    assert e.encodes == 1  # filtered from the cached families, not encoded again
    assert e.render(["gpuprobe_device_up"])[0].count(b"\ngpuprobe_device_up{") == 5


class Versioned:
    """A snapshot collector of its own: a counter with ``_created`` samples, whose family
    has two sample names."""

    def __init__(self) -> None:
        self.version, self.collects = object(), 0

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily("v", "v")]

    def snapshot(self) -> object:
        return self.version

    def collect(self, snapshot: object = None) -> list[Metric]:
        self.collects += 1
        c = CounterMetricFamily("v", "v", labels=["k"], created=1700000000.5)
        c.add_metric(["a"], 3, created=1700000001.0)
        return [c]


def test_a_family_only_partly_wanted_is_encoded_anew_from_its_snapshot():
    r = CollectorRegistry(auto_describe=True)
    v = Versioned()
    r.register(v)
    e = Exposition(r)
    assert e.render()[0] == generate_latest(r)
    for names in (["v_total"], ["v_created"], ["v_total", "v_created"]):
        assert e.render(names)[0] == generate_latest(r.restricted_registry(names)), names
    assert e.encodes == 1


# -- encoded ahead of scrapes ---------------------------------------------------------------

class Gated:
    """A snapshot collector whose snapshot changes on ``publish()``; its collect waits for
    ``gate`` (an encode that takes as long as the test wants)."""

    def __init__(self) -> None:
        import threading

        self.version, self.value, self.collects = object(), 1.0, 0
        self.gate = threading.Event()
        self.gate.set()
        self.in_collect = threading.Event()

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("gpuprobe_test_versioned", "From the snapshot.")]

    def snapshot(self) -> object:
        return self.version

    def collect(self, snapshot: object = None) -> list[Metric]:
        self.collects += 1
        value = self.value
        self.in_collect.set()
        self.gate.wait(10)
        return [GaugeMetricFamily("gpuprobe_test_versioned", "From the snapshot.", value=value)]

    def publish(self, value: float) -> None:
        self.version, self.value = object(), value


def _gated(max_stale: float = 5.0) -> tuple[Gated, Exposition]:
    registry = CollectorRegistry(auto_describe=True)
    v = Gated()
    registry.register(v)
    return v, Exposition(registry, max_stale=max_stale)


def _encoding_two(max_stale: float = 5.0) -> tuple[Gated, Exposition]:
    """An exposition that has served 1.0 and whose refresher is now inside the encode of
    a published 2.0, held there until ``gate`` is set."""
    v, ex = _gated(max_stale)
    ex.render()
    v.in_collect.clear()
    ex.start()
    v.gate.clear()
    v.publish(2.0)
    ex.changed()
    assert v.in_collect.wait(5)
    return v, ex


def test_a_published_snapshot_is_encoded_before_any_scrape_asks():
    from .conftest import wait_for

    v, ex = _gated()
    ex.start()
    try:
        ex.render(accept_encoding="gzip")  # a gzip scraper has been seen: compress ahead too
        assert (ex.encodes, ex.compressions) == (1, 1)
        for value in (2.0, 3.0):
            v.publish(value)
            ex.changed()
            wait_for(lambda value=value: ex.encodes == value, timeout=5)
            wait_for(lambda value=value: ex.compressions == value, timeout=5)
            body, _ = ex.render(accept_encoding="gzip")
            assert f"gpuprobe_test_versioned {value}".encode() in gzip.decompress(body)
            assert (ex.encodes, ex.compressions) == (value, value)  # the scrape only copied
    finally:
        ex.stop()


def test_publishes_close_together_are_encoded_once():
    from .conftest import wait_for

    v, ex = _encoding_two()  # the refresher is encoding 2.0 ...
    try:
        v.in_collect.clear()
        for value in (3.0, 4.0, 5.0):  # ... while three more publishes come
            v.publish(value)
            ex.changed()
        v.gate.set()
        wait_for(lambda: ex.encodes == 3, timeout=5)
        assert b"gpuprobe_test_versioned 5.0" in ex.render()[0]
        assert ex.encodes == 3  # 1.0, 2.0, then 5.0 for the three publishes during 2.0's
    finally:
        v.gate.set()
        ex.stop()


def test_a_poll_cycle_still_publishing_is_encoded_once_when_its_last_collector_is_done():
    import threading

    from .conftest import wait_for

    v, ex = _gated()
    ex.render()
    running = {"nvidia", "nvidia_processes", "memory_leaks"}
    lock = threading.Lock()
    ex.settling = lambda: bool(running)
    ex.start()
    try:
        for value, name in ((2.0, "nvidia"), (3.0, "memory_leaks")):
            with lock:
                running.discard(name)
            v.publish(value)
            ex.changed()
            time.sleep(0.1)
            assert ex.encodes == 1  # one collector of the cycle is still running
        running.clear()
        v.publish(4.0)
        ex.changed()
        wait_for(lambda: ex.encodes == 2, timeout=5)
        assert b"gpuprobe_test_versioned 4.0" in ex.render()[0] and ex.encodes == 2
    finally:
        ex.stop()


def test_a_collector_that_never_finishes_delays_the_encode_only_settle_seconds(monkeypatch):
    from gpuprobe.daemon.export import exposition

    from .conftest import wait_for

    monkeypatch.setattr(exposition, "SETTLE_SECONDS", 0.3)
    v, ex = _gated()
    ex.render()
    ex.settling = lambda: True  # hung, and not yet marked stalled
    ex.start()
    try:
        v.publish(2.0)
        t0 = time.monotonic()
        ex.changed()
        wait_for(lambda: ex.encodes == 2, timeout=5)
        assert 0.3 <= time.monotonic() - t0 < 2.0
    finally:
        ex.stop()


def test_while_the_new_snapshot_is_encoded_a_scrape_gets_the_previous_at_once():
    import threading

    v, ex = _encoding_two(max_stale=5.0)  # and it stays inside 2.0's encode
    try:
        done = threading.Event()
        got: list[bytes] = []
        threading.Thread(target=lambda: (got.append(ex.render()[0]), done.set())).start()
        assert done.wait(5), "a scrape waited for the encode under way"
        assert b"gpuprobe_test_versioned 1.0" in got[0]
    finally:
        v.gate.set()
        ex.stop()
    assert b"gpuprobe_test_versioned 2.0" in ex.render()[0]


def test_past_max_stale_or_without_a_refresher_a_scrape_encodes_the_new_snapshot():
    v, ex = _encoding_two(max_stale=0.0)
    try:
        v.gate.set()
        assert b"gpuprobe_test_versioned 2.0" in ex.render()[0]  # waited for it, not stale
    finally:
        ex.stop()
    v.publish(3.0)
    ex.changed()  # no refresher running: the scrape itself encodes
    assert b"gpuprobe_test_versioned 3.0" in ex.render()[0]


def test_the_daemon_encodes_each_publish_ahead():
    """Wired: the store tells the HTTP server's exposition of every publish."""
    from .conftest import free_port, wait_for

    d = make_daemon(config={"listen": f"127.0.0.1:{free_port()}"})
    d.start()
    try:
        ex = d.exposition
        assert ex is not None
        wait_for(lambda: ex.encodes >= 2, timeout=15)  # collectors published; nobody scraped
    finally:
        d.stop()
