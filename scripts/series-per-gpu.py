#!/usr/bin/env python3
"""Counts the series a gpuprobe scrape holds, per GPU and in all, for sizing Prometheus.

    curl -s localhost:14787/metrics | python3 scripts/series-per-gpu.py
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    per_gpu: dict[str, Counter] = defaultdict(Counter)
    other = Counter()
    for fam in text_string_to_metric_families(sys.stdin.read()):
        for s in fam.samples:
            uuid = s.labels.get("uuid")
            if uuid is None:
                other["host (collectors, backends, build, process_*)"] += 1
                continue
            kind = ("process" if "pid" in s.labels else
                    "probe" if s.name.startswith("gpuprobe_probe_") else "device")
            per_gpu[uuid][kind] += 1
    total_gpu = 0
    print(f"{'GPU uuid':<44} {'device':>7} {'process':>8} {'probe':>6} {'total':>6}")
    for uuid, c in sorted(per_gpu.items()):
        n = sum(c.values())
        total_gpu += n
        print(f"{uuid:<44} {c['device']:>7} {c['process']:>8} {c['probe']:>6} {n:>6}")
    host = sum(other.values())
    print(f"GPUs: {len(per_gpu)}, series on GPUs: {total_gpu}, host series: {host}, "
          f"total: {total_gpu + host}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
