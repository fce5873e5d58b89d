"""What the CUDA and HIP probe children share: the PCIe measurement's repetitions and
result, and turning block start times into results."""

from __future__ import annotations

import statistics
from collections.abc import Callable


def measure_pcie(warm_up: Callable[[], None], h2d: Callable[[], float],
                 d2h: Callable[[], float], repetitions: int, progress: Callable[[str], None],
                 link: Callable[[], dict | None]) -> dict:
    """After ``warm_up()``, ``repetitions`` of the timed copies ``h2d()`` and ``d2h()`` (each
    its rate in bytes per second); the median rate per direction, and the best link state
    ``link()`` read after the warm-up and during the first repetition (while the copies keep
    it trained up)."""
    progress("warm-up")
    warm_up()
    links = [link()]
    rates: dict[str, list[float]] = {"host_to_device": [], "device_to_host": []}
    for rep in range(repetitions):
        rates["host_to_device"].append(h2d())
        rates["device_to_host"].append(d2h())
        progress(f"repetition {rep + 1}/{repetitions}: host to device "
                 f"{rates['host_to_device'][-1] / 1e9:.1f} GB/s, device to host "
                 f"{rates['device_to_host'][-1] / 1e9:.1f} GB/s")
        if rep == 0:
            links.append(link())
    seen = [x for x in links if x and x.get("generation") and x.get("width")]
    return {
        "host_to_device_bytes_per_second": statistics.median(rates["host_to_device"]),
        "device_to_host_bytes_per_second": statistics.median(rates["device_to_host"]),
        "samples": rates,
        "link": max(seen, key=lambda x: (x["generation"], x["width"]), default=None),
    }


def analyse_launch(starts: list[int], smids: list[int], sms: int | None, t_launch_host: int,
                   offset: int, round_trip: int, reach_bound_ns: int) -> dict:
    """Latency from the host's launch to the first block, and the share of the SMs (compute
    units) that blocks reached within ``reach_bound_ns`` of the first. Times in host ns;
    ``offset`` is GPU time minus host time."""
    if not starts or min(starts) == 0:
        raise ValueError("a block did not record its start")
    first = min(starts)
    reached = {sm for t, sm in zip(starts, smids, strict=True) if t - first <= reach_bound_ns}
    out = {
        "launch_latency_seconds": max(0.0, (first - offset - t_launch_host) / 1e9),
        "launch_latency_uncertainty_seconds": round_trip / 2e9,
        "block_start_spread_seconds": (max(starts) - first) / 1e9,
        "blocks": len(starts),
        "sms_reached": len(reached),
    }
    if sms:
        out["sm_reach_ratio"] = min(1.0, len(reached) / sms)
        out["sm_count"] = sms
    return out
