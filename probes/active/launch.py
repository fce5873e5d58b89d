"""The launch probe: how long a kernel waits to start, and how many SMs it reaches.

A tiny kernel, two one-warp blocks per SM, records each block's SM and start time on the
GPU's global timer, related to the host clock by calibration (``probes/active/kernels/``). On a busy
or time-sliced GPU the wait shows how long work queues, which no counter gives. Each call
of its collector (``launch_probe``) runs at most one due probe; ``probes.launch.every`` sets
how often a GPU is measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpuprobe.daemon.core.config import LaunchProbeConfig
from gpuprobe.daemon.core.probekinds import LAUNCH
from gpuprobe.probes.active.spec import ProbeSpec

FIELDS = ("launch_latency_seconds", "launch_latency_uncertainty_seconds", "sm_reach_ratio",
          "block_start_spread_seconds")


def request(c: LaunchProbeConfig) -> dict[str, Any]:
    return {"spin_ns": int(c.spin * 1e9), "reach_bound_ns": int(c.reach_bound * 1e9),
            "calibrations": c.calibrations}


def values(result: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(result[k]) for k in FIELDS if result.get(k) is not None}


def row(v: Mapping[str, Any], gpu_seconds: float) -> list[str]:
    return [f"{v['launch_latency_seconds'] * 1e6:.1f}",
            f"{v.get('launch_latency_uncertainty_seconds', 0) * 1e6:.1f}",
            f"{v['sm_reach_ratio']:.0%}" if v.get("sm_reach_ratio") is not None else "-",
            f"{v.get('block_start_spread_seconds', 0) * 1e6:.1f}", f"{gpu_seconds:.2f}s"]


SPEC = ProbeSpec(LAUNCH, lambda c: c.launch, request, values,
                 ("LATENCY us", "+/- us", "SM REACH", "SPREAD us", "GPU TIME"), row)
