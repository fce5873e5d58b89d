"""The Prometheus text format (0.0.4), written fast, byte for byte as prometheus_client does.

Since prometheus_client 0.22, ``generate_latest`` checks and escapes every label name of every
sample for UTF-8 names, which costs about 24 microseconds per sample on our CI machines: 20 ms
for the 830 series of 8 GPUs with 32 processes each, twice the scrape budget. Our label names
are fixed, valid legacy names (the catalogue test checks them), so this module skips that
work and otherwise writes exactly what ``generate_latest`` writes; ``tests/test_exposition.py``
compares the two byte for byte, ``_created`` samples included; gauge histograms (which we
never export) are handed to prometheus_client unchanged. Only the text format is
served: Prometheus accepts it whatever it asks for first.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram",
          "unknown": "untyped"}
_SUFFIX = {"counter": "_total", "info": "_info"}


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
        out: list[str] = []
        append = out.append
        previous, current = self._labels, dict[tuple, str]()
        values_before, values_now = self._values, dict[float, str]()
        for metric in metrics:
            if metric.type == "gaugehistogram":
                append(_fallback(metric).decode())
                continue
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
        # A concurrent scrape at worst misses the caches.
        self._labels, self._values = current, values_now
        return "".join(out).encode("utf-8")


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
           ) -> tuple[bytes, list[tuple[str, str]]]:
    """The body and headers of a /metrics response; ``names`` as in ``?name[]=``."""
    source = registry.restricted_registry(names) if names else registry
    body = (encoder or Encoder()).encode(source.collect())
    headers = [("Content-Type", CONTENT_TYPE)]
    if gzip_accepted(accept_encoding or ""):
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    return body, headers
