"""The Prometheus text format (0.0.4), written fast, byte for byte as prometheus_client does,
and encoded once per snapshot rather than once per scrape.

Since prometheus_client 0.22, ``generate_latest`` checks and escapes every label name of every
sample for UTF-8 names, which costs about 24 microseconds per sample on our CI machines: 20 ms
for the 830 series of 8 GPUs with 32 processes each, twice the scrape budget. Our label names
are fixed, valid legacy names (the catalogue test checks them), so this module skips that
work and otherwise writes exactly what ``generate_latest`` writes; ``tests/test_exposition.py``
compares the two byte for byte, ``_created`` samples included; gauge histograms (which we
never export) are handed to prometheus_client unchanged. Only the text format is
served: Prometheus accepts it whatever it asks for first.

:class:`Exposition` is what ``/metrics`` serves. A collector whose families are a function of
a snapshot it names (``snapshot()``; the exporter's, of the store's published view) is encoded
and compressed once per snapshot, however many scrapers ask; the rest of the registry (the
HTTP server's counters, ``process_*``) is small and encoded on every scrape. The gzip body is
one gzip member: the cached part's deflate blocks, flushed to a byte boundary, followed by the
blocks of the part compressed now.

Told of each publish (:meth:`Exposition.changed`), the exposition encodes the new snapshot
on a thread of its own, a few milliseconds later, so a scrape hands out bytes already made.
Publishes of one poll cycle are encoded once: while ``settling()`` says more of the cycle
is coming (the scheduler: a collector's run has started and not yet published), the encode
waits for it, at most ``SETTLE_SECONDS``. At 64 GPUs x 128 processes an encode cost about
0.1 s of CPU and the collectors of one cycle published over 0.5 s: encoded per publish, that
was 3.5 encodes per cycle and 4.8 s of CPU a minute. A scrape that arrives in
between is served the previous snapshot's bytes while the new one is at most ``max_stale``
seconds old; past that, or with no refresher running, it encodes the new snapshot itself.
"""

from __future__ import annotations

import gzip
import logging
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

log = logging.getLogger("gpuprobe.exposition")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
COALESCE_SECONDS = 0.02  # publishes this close together are encoded once
SETTLE_SECONDS = 1.5  # the longest an encode waits for the rest of a poll cycle
MAX_STALE_SECONDS = 5.0  # a scrape may be served the previous snapshot while the latest is this
# young: no older than a default poll interval (at 64 GPUs x 128 processes on 2 busy CPUs
# an encode took up to 0.3 s of wall time)
GZIP_WANTED_SECONDS = 600.0  # after a gzip scrape, compress each new snapshot ahead of scrapes
_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram",
          "unknown": "untyped"}
_SUFFIX = {"counter": "_total", "info": "_info"}
Headers = list[tuple[str, str]]


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _fallback(metric: Metric) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([metric]))
    return generate_latest(registry)


class _Fixed:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


class Encoder:
    """Writes families as text. Remembers the label strings and formatted values of the
    previous call (most series keep their labels from one scrape to the next, and totals,
    thresholds and idle counters keep their values) and forgets those no longer used."""

    def __init__(self) -> None:
        self._labels: dict[tuple, str] = {}
        self._values: dict[float, str] = {}

    def encode(self, metrics: Iterable[Metric]) -> bytes:
        return "".join(text for _, text in self._texts(metrics)).encode("utf-8")

    def encode_each(self, metrics: Iterable[Metric]) -> list[tuple[frozenset[str], bytes]]:
        """Each family's text, with the names of its samples (what ``?name[]=`` picks by)."""
        return [(frozenset(s.name for s in m.samples), text.encode("utf-8"))
                for m, text in self._texts(metrics)]

    def _texts(self, metrics: Iterable[Metric]) -> list[tuple[Metric, str]]:
        texts: list[tuple[Metric, str]] = []
        previous, current = self._labels, dict[tuple, str]()
        values_before, values_now = self._values, dict[float, str]()
        for metric in metrics:
            if metric.type == "gaugehistogram":
                texts.append((metric, _fallback(metric).decode()))
                continue
            out: list[str] = []
            append = out.append
            name = metric.name + _SUFFIX.get(metric.type, "")
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            append(f"# HELP {name} {doc}\n# TYPE {name} {_TYPES.get(metric.type, metric.type)}\n")
            created = metric.name + "_created"
            om_only: list[Sample] = []
            for s in metric.samples:
                if s.name == created:
                    om_only.append(s)  # prometheus_client puts these in a gauge of their own
                    continue
                append(_line(s, previous, current, values_before, values_now))
            if om_only:
                append(f"# HELP {created} {doc}\n# TYPE {created} gauge\n")
                out.extend(_line(s, previous, current, values_before, values_now)
                           for s in om_only)
            texts.append((metric, "".join(out)))
        # A concurrent scrape at worst misses the caches.
        self._labels, self._values = current, values_now
        return texts


def _line(s: Sample, previous: dict[tuple, str], current: dict[tuple, str],
          values_before: dict[float, str], values_now: dict[float, str]) -> str:
    value = s.value
    if type(value) is float and 0 <= value < 1e6:
        text = repr(value)  # what floatToGoString gives for these, without its checks
    else:
        cached = values_now.get(value) or values_before.get(value)
        text = floatToGoString(value) if cached is None else cached
        values_now[value] = text
    stamp = "" if s.timestamp is None else f" {int(float(s.timestamp) * 1000):d}"
    if not s.labels:
        return f"{s.name} {text}{stamp}\n"
    key = tuple(s.labels.items())
    labels = current.get(key) or previous.get(key)
    if labels is None:
        labels = ",".join([f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items())])
    current[key] = labels
    return f"{s.name}{{{labels}}} {text}{stamp}\n"


def encode(metrics: Iterable[Metric]) -> bytes:
    """One-off encoding, with no cache carried between calls."""
    return Encoder().encode(metrics)


def render(registry: CollectorRegistry, names: list[str] | None = None,
           accept_encoding: str | None = None, encoder: Encoder | None = None
           ) -> tuple[bytes, Headers]:
    """The body and headers of a /metrics response, encoded now; ``names`` as in
    ``?name[]=``. (What the daemon serves is :class:`Exposition`'s, cached per snapshot.)"""
    source = registry.restricted_registry(names) if names else registry
    body = (encoder or Encoder()).encode(source.collect())
    headers = [("Content-Type", CONTENT_TYPE)]
    if gzip_accepted(accept_encoding or ""):
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    return body, headers


# -- encoded once per snapshot --------------------------------------------------------------

GZIP_LEVEL = 6  # zlib's default: 15% smaller than level 1; level 9 takes twice as long for <1%
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no mtime, unknown OS
_FINAL = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15).flush()  # an empty final block


def _deflate(data: bytes) -> bytes:
    """Raw deflate blocks of ``data``, flushed to a byte boundary and not final, so that
    more blocks may follow them in the same stream."""
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)


@dataclass(frozen=True, eq=False)
class Encoded:
    """A snapshot collector's families as text: what the daemon's main process sends its
    serving process (daemon/service/serving.py), which serves them through a
    :class:`Relayed` collector."""

    body: bytes
    families: list[tuple[frozenset[str], int, int]]  # sample names, start, end in body


class Relayed:
    """A snapshot collector whose snapshot is an :class:`Encoded` made elsewhere: the
    exposition serves its bytes as they came (and compresses them once). It declares the
    names ``describe`` gives, so that ``?name[]=`` finds it."""

    def __init__(self, describe: Callable[[], Iterable[Metric]]) -> None:
        self._describe = describe
        self._latest = Encoded(b"", [])

    def describe(self) -> Iterable[Metric]:
        return self._describe()

    def put(self, encoded: Encoded) -> None:
        self._latest = encoded

    def snapshot(self) -> Encoded:
        return self._latest

    def collect(self, snapshot: Encoded | None = None) -> Iterable[Metric]:
        """No families as objects: only a ``?name[]=`` naming part of a family asks (none
        of ours has more than one sample name), and gets nothing of it."""
        return ()


@dataclass
class _Encoded:
    """One snapshot collector's families, encoded for one snapshot."""

    snapshot: object
    body: bytes
    families: list[tuple[frozenset[str], int, int]]  # sample names, start, end in body
    deflated: bytes | None = None  # _deflate(body), made on the first gzip scrape
    crc: int = 0


class Exposition:
    """The /metrics body and headers of a registry, encoded once per snapshot.

    A collector with a ``snapshot()`` method promises that ``collect(snapshot)`` is a
    function of that object alone (the exporter's: the store's published view, a new object
    on every publish). Its encoded families are kept until ``snapshot()`` returns another
    object; a scrape of the same snapshot copies them, and a gzip scrape copies their deflate
    blocks, compressed once. Other collectors are collected and encoded on every scrape.
    ``encodes`` and ``compressions`` count the snapshot encodes and compressions done."""

    def __init__(self, registry: CollectorRegistry, max_stale: float = MAX_STALE_SECONDS,
                 on_encoded: Callable[[Encoded], None] | None = None) -> None:
        """``on_encoded`` is handed each snapshot the refresher encodes (the daemon passes
        it to the serving process)."""
        self.registry = registry
        self.max_stale = max_stale
        self.on_encoded = on_encoded
        # whether more publishes of this poll cycle are coming (the daemon sets the
        # scheduler's); the refresher waits for them, at most SETTLE_SECONDS
        self.settling: Callable[[], bool] | None = None
        self.encodes = 0
        self.compressions = 0
        self._lock = threading.Lock()  # one snapshot encode at a time, shared by its waiters
        self._encoded: dict[Any, _Encoded] = {}
        self._encoder = Encoder()  # used under the lock only
        self._volatile = Encoder()
        self._changed = threading.Event()
        self._published: float | None = None  # when the oldest publish not yet encoded came
        self._publishes = 0
        self._gzip_until = 0.0  # compress ahead of scrapes until then (a gzip scrape was seen)
        self._refresher: threading.Thread | None = None
        self._stopping = False

    # -- ahead of scrapes -------------------------------------------------------------------

    def changed(self) -> None:
        """A snapshot has been published (the store calls this from the publishing thread):
        encode it soon, off the scrape path."""
        self._publishes += 1
        if self._published is None:
            self._published = time.monotonic()
        self._changed.set()

    def start(self) -> None:
        """Encode each published snapshot on a thread of its own from now on."""
        self._stopping = False
        self._refresher = threading.Thread(target=self._refresh_loop, name="exposition",
                                           daemon=True)
        self._refresher.start()

    def stop(self) -> None:
        self._stopping = True
        self._changed.set()
        if self._refresher is not None:
            self._refresher.join(5)
            self._refresher = None

    def _refresh_loop(self) -> None:
        while True:
            self._changed.wait()
            if self._stopping:
                return
            time.sleep(COALESCE_SECONDS)
            self._changed.clear()
            if not self._settle():
                return
            try:
                self.refresh()
            except Exception:  # a collector's bug must not end the refreshing
                log.exception("encoding the published snapshot failed; scrapes encode it")

    def _settle(self) -> bool:
        """Wait while the rest of the poll cycle is still coming, at most SETTLE_SECONDS
        from now; False when stopping."""
        until = time.monotonic() + SETTLE_SECONDS
        while self.settling is not None and self.settling():
            left = until - time.monotonic()
            if left <= 0:
                break
            self._changed.wait(left)  # the next publish
            if self._stopping:
                return False
            self._changed.clear()
        return True

    def refresh(self) -> None:
        """Encode (and, while gzip scrapes come, compress) every snapshot collector's latest
        snapshot now."""
        publishes = self._publishes
        compress = time.monotonic() < self._gzip_until
        with self.registry._lock:
            collectors = list(self.registry._collector_to_names)
        for c in collectors:
            if callable(getattr(c, "snapshot", None)):
                encoded = self._snapshot(c, compress, refreshing=True)
                if self.on_encoded is not None:
                    self.on_encoded(Encoded(encoded.body, encoded.families))
        # scrapes meanwhile were served the previous snapshot; one published during this
        # encode is the next refresh's, and may be served stale from now
        self._published = None if self._publishes == publishes else time.monotonic()

    def _servable(self, collector: Any) -> _Encoded | None:
        """The encoding a scrape may be served without encoding: the current snapshot's, or
        the previous one while the refresher is at most ``max_stale`` behind."""
        encoded = self._encoded.get(collector)
        if encoded is None:
            return None
        if encoded.snapshot is collector.snapshot():
            return encoded
        published = self._published
        if (self._refresher is not None and published is not None
                and time.monotonic() - published < self.max_stale):
            return encoded
        return None

    def render(self, names: list[str] | None = None, accept_encoding: str | None = None
               ) -> tuple[bytes, Headers]:
        """The body and headers of a /metrics response; ``names`` as in ``?name[]=``: the
        samples so named, of the collectors that declare one of them (as prometheus_client's
        ``restricted_registry``, but in registry order)."""
        parts, headers = self.render_parts(names, accept_encoding)
        return (parts[0] if len(parts) == 1 else b"".join(parts)), headers

    def render_parts(self, names: list[str] | None = None, accept_encoding: str | None = None
                     ) -> tuple[list[bytes], Headers]:
        """:meth:`render`'s body as the parts that make it, in order, not joined: the HTTP
        server writes them one after another. Joining a 2 MiB snapshot to the few KiB encoded
        per scrape cost a 2 MiB copy per scrape, which with malloc.py's 128 KiB mmap
        threshold was mapped and faulted in anew each time (scrape p50 4.1 ms against 2.2 ms
        for the same bytes served whole, ``benchmarks/scale.py`` at 64x128)."""
        registry = self.registry
        if getattr(registry, "_target_info", None):
            body, headers = render(registry, names, accept_encoding)  # not ours to cache
            return [body], headers
        gz = gzip_accepted(accept_encoding or "")
        if gz:
            self._gzip_until = time.monotonic() + GZIP_WANTED_SECONDS
        wanted = frozenset(names) if names else None
        # the registry's own bookkeeping: its collectors in order, and who declares each name
        with registry._lock:
            collectors = list(registry._collector_to_names)
            declares = dict(registry._names_to_collectors)
            nameless = list(getattr(registry, "_collectors_without_names", ()))
        if wanted is not None:
            chosen = {declares[n] for n in wanted if n in declares} | set(nameless)
            collectors = [c for c in collectors if c in chosen]
        parts: list[tuple[_Encoded | None, bytes]] = []
        for c in collectors:
            if callable(getattr(c, "snapshot", None)):
                encoded = self._snapshot(c, gz and wanted is None)
                parts.append((encoded, encoded.body if wanted is None
                              else self._pick(c, encoded, wanted)))
            else:
                metrics: Iterable[Metric] = c.collect()
                if wanted is not None:
                    metrics = _restricted(metrics, wanted)
                parts.append((None, self._volatile.encode(metrics)))
        headers = [("Content-Type", CONTENT_TYPE)]
        if not gz:
            return [p for _, p in parts if p], headers
        headers.append(("Content-Encoding", "gzip"))
        if wanted is not None:  # small, and not worth keeping
            return [gzip.compress(b"".join(p for _, p in parts))], headers
        return self._gzip(parts), headers

    def _snapshot(self, collector: Any, compress: bool, refreshing: bool = False) -> _Encoded:
        if not refreshing:
            encoded = self._servable(collector)  # without the lock: the refresher may hold it
            if encoded is not None and (not compress or encoded.deflated is not None):
                return encoded
        with self._lock:
            snapshot = collector.snapshot()
            encoded = self._encoded.get(collector)
            if encoded is None or encoded.snapshot is not snapshot:
                if isinstance(snapshot, Encoded):  # encoded already, by another process
                    encoded = _Encoded(snapshot, snapshot.body, snapshot.families)
                else:
                    chunks = self._encoder.encode_each(collector.collect(snapshot))
                    families, at = [], 0
                    for sample_names, text in chunks:
                        families.append((sample_names, at, at + len(text)))
                        at += len(text)
                    encoded = _Encoded(snapshot, b"".join(t for _, t in chunks), families)
                self._encoded[collector] = encoded
                self.encodes += 1
            if compress and encoded.deflated is None:
                encoded.deflated = _deflate(encoded.body)
                encoded.crc = zlib.crc32(encoded.body)
                self.compressions += 1
            return encoded

    def _pick(self, collector: Any, encoded: _Encoded, wanted: frozenset[str]) -> bytes:
        """The families of ``encoded`` whose samples are all wanted; a family only some of
        whose samples are (none of ours: each has one sample name) is encoded anew."""
        out = []
        for sample_names, start, end in encoded.families:
            if sample_names <= wanted:
                out.append(encoded.body[start:end])
            elif sample_names & wanted:
                return self._volatile.encode(
                    _restricted(collector.collect(encoded.snapshot), wanted))
        return b"".join(out)

    @staticmethod
    def _gzip(parts: list[tuple[_Encoded | None, bytes]]) -> list[bytes]:
        """One gzip member: each part's deflate blocks (a cached part's as compressed once),
        an empty final block, and the CRC and length of the whole."""
        out, crc, size = [_GZIP_HEADER], 0, 0
        fresh: list[bytes] = []
        for encoded, body in parts:
            if encoded is None:
                fresh.append(body)
                continue
            if fresh:
                data = b"".join(fresh)
                out.append(_deflate(data))
                crc, size, fresh = zlib.crc32(data, crc), size + len(data), []
            assert encoded.deflated is not None
            out.append(encoded.deflated)
            crc = encoded.crc if size == 0 else zlib.crc32(body, crc)
            size += len(body)
        if fresh:
            data = b"".join(fresh)
            out.append(_deflate(data))
            crc, size = zlib.crc32(data, crc), size + len(data)
        out.append(_FINAL)
        out.append(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
        return out


def _restricted(metrics: Iterable[Metric], wanted: frozenset[str]) -> Iterable[Metric]:
    """Each family with only its samples named in ``wanted``, and none left empty (as
    prometheus_client's restricted registry)."""
    for m in metrics:
        samples = [s for s in m.samples if s.name in wanted]
        if samples:
            r = Metric(m.name, m.documentation, m.type)
            r.samples = samples
            yield r
