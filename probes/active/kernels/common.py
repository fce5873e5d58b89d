"""What the CUDA and HIP probe children share: turning block start times into results."""

from __future__ import annotations


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
