"""The probe runtime of ``--simulate``: results from the simulated device's link, not a GPU.

The parent passes the link the device model trained (generation, width), its current
utilization and SM count; a downgraded link measures slower, a busy GPU makes launches wait.
It runs in a child process like the real runtimes, so the isolation (timeout, crash, process
accounting) is exercised too. ``fake`` behaviours exist for tests: crash, hang, fail.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

from gpuprobe.daemon.core.model import pcie_link_bytes_per_second

# Copy-engine efficiency over a link's encoded rate, as measured on H100 Gen5 x16 (see
# docs/hardware/): TLP headers and flow control take the rest.
EFFICIENCY = {"host_to_device": 0.875, "device_to_host": 0.885}


def run(req: dict, progress: Callable[[str], None]) -> dict:
    fake = req.get("fake")
    if fake == "crash":
        os._exit(3)  # as a segfaulting driver would, with no result
    if fake == "hang":
        time.sleep(3600)
    if fake == "fail":
        raise RuntimeError("simulated failure")
    env = req["sim"]
    rng = random.Random(req.get("seed"))
    util = float(env.get("utilization") or 0.0)
    t0 = time.monotonic()
    if req["probe"] == "pcie":
        link = pcie_link_bytes_per_second(env["generation"], env["width"]) or 0.0
        moved = req["size"] * req["copies"] * req["repetitions"] * 2
        out: dict = {"link": {"generation": env["generation"], "width": env["width"]}}
        for direction, eff in EFFICIENCY.items():
            rate = link * eff * (1 - 0.3 * util) * rng.uniform(0.99, 1.01)
            out[f"{direction}_bytes_per_second"] = rate
            progress(f"{direction.replace('_', ' ')}: {rate / 1e9:.1f} GB/s")
        time.sleep(min(0.3, moved / max(link, 1.0)))
    else:
        sms = int(env.get("sm_count") or 132)
        latency = 6e-6 + util * 2e-3 * rng.uniform(0.5, 1.5)  # a busy GPU is time-sliced
        progress(f"launching {2 * sms} blocks on {sms} SMs")
        time.sleep(0.05)
        out = {"launch_latency_seconds": latency, "launch_latency_uncertainty_seconds": 2e-6,
               "sm_reach_ratio": 1.0, "sm_count": sms, "blocks": 2 * sms,
               "block_start_spread_seconds": 3e-6 + util * 1e-4}
    out["gpu_seconds"] = time.monotonic() - t0
    return out
