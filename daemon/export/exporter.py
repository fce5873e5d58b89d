"""The one prometheus_client collector: renders the latest published view, never a library.

Families are built from the immutable view alone, so concurrent scrapes cannot race and
series of vanished processes or devices cannot linger; the exposition (exposition.py)
encodes them once per published view, however many scrapes read it. Which series a metric
has is its catalogue entry's business (catalog.py: each MetricSpec carries its extractor);
this is the loop over the catalogue. Labels that a device or process does not have
(``parent_uuid`` on a whole GPU, ``container_id`` outside a container) are left out rather
than exported empty.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterator
from importlib import metadata

from prometheus_client.metrics_core import Metric

from gpuprobe.daemon.core.config import ExporterConfig
from gpuprobe.daemon.core.state import Store, View
from gpuprobe.daemon.export.catalog import CATALOG, MetricSpec, Scrape


@functools.cache
def version() -> str:
    """gpuprobe's version (read once: importlib.metadata parses the METADATA file each time,
    which twice a second for the landing page was a third of the idle daemon's CPU)."""
    try:
        return metadata.version("gpuprobe")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _sample_name(spec: MetricSpec) -> str:
    return spec.family + {"counter": "_total", "info": "_info"}.get(spec.type, "")


def describe() -> Iterator[Metric]:
    """The families the exporter declares (what ``?name[]=`` finds it by): the catalogue's,
    but for the HTTP server's own."""
    for m in CATALOG:
        if m.scope != "http":
            yield Metric(m.family, m.help, m.type)


class SnapshotCollector:
    def __init__(self, store: Store, config: ExporterConfig) -> None:
        self.store = store
        self.config = config
        self.build = {"version": version(), "python_version": platform.python_version()}
        # the HTTP server's own collector (http.py) exports the "http" scope
        self._specs = [(m, _sample_name(m)) for m in CATALOG if m.scope != "http"
                       and (config.link_metrics or m.scope != "link")]

    def describe(self) -> Iterator[Metric]:
        return describe()

    def snapshot(self) -> View:
        """What :meth:`collect` renders from: the families are a function of it alone (and
        of settings fixed at start), and every publish makes a new one."""
        return self.store.view()

    def collect(self, view: View | None = None) -> Iterator[Metric]:
        scrape = Scrape(self.store.view() if view is None else view, self.config.process_metrics,
                        self.config.max_processes_per_device, self.build)
        for spec, sample_name in self._specs:
            family = Metric(spec.family, spec.help, spec.type)
            for labels, value in spec.series(scrape):
                family.add_sample(sample_name, labels, float(value))
            if family.samples:
                yield family
