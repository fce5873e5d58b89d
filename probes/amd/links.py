"""XGMI: each link's state (amdsmi_get_gpu_xgmi_link_status) and traffic, width and speed
(the gpu_metrics table the telemetry already reads). Links belong to the physical GPU, not
to a partition."""

from __future__ import annotations

from typing import Any

from gpuprobe.daemon.core.model import Interconnect, Link
from gpuprobe.probes.amd.library import clean, number
from gpuprobe.probes.backend import Query
from gpuprobe.probes.backend.devices import Device

KB = 1000  # xgmi_*_data_acc count kilobytes (the kernel's gpu_metrics v1.4+)


def read_links(lib: Any, dev: Device, q: Query, metrics: dict[str, Any] | None
               ) -> Interconnect:
    """The GPU's XGMI links; none where the library reports no link status (an RDNA card,
    a GPU in no hive)."""
    status = q(dev, "xgmi.status", lib.amdsmi_get_gpu_xgmi_link_status, dev.handle)
    if not isinstance(status, dict) or not isinstance(status.get("status"), list):
        return Interconnect()
    states = status["status"]  # "U" up, "D" down, "X" disabled, "N/A"
    metrics = metrics or {}
    reads, writes = metrics.get("xgmi_read_data_acc"), metrics.get("xgmi_write_data_acc")
    links: dict[str, Link] = {}
    for i, state in enumerate(states):
        if state not in ("U", "D", "X"):
            continue
        links[str(i)] = Link(up=state == "U", tx_bytes_total=_acc(writes, i),
                             rx_bytes_total=_acc(reads, i))
    if not links:
        return Interconnect()
    width = clean(metrics.get("xgmi_link_width"), 16)
    speed = number(metrics.get("xgmi_link_speed"), 16)  # Gbps per lane
    tx = [link.tx_bytes_total for link in links.values() if link.tx_bytes_total is not None]
    rx = [link.rx_bytes_total for link in links.values() if link.rx_bytes_total is not None]
    return Interconnect(
        kind="xgmi", links=links,
        link_width=width if isinstance(width, int) and width > 0 else None,
        link_speed_bytes_per_second=speed * 1e9 * width / 8
        if speed and isinstance(width, int) and width > 0 else None,
        tx_bytes_total=sum(tx) if tx else None, rx_bytes_total=sum(rx) if rx else None)


def _acc(values: Any, i: int) -> float | None:
    if not isinstance(values, list) or i >= len(values):
        return None
    v = number(values[i], 64)
    return v * KB if v is not None else None
