"""NVLink: each link's state, version, traffic and error counters, read in one batched
``nvmlDeviceGetFieldValues`` call per GPU (the fields with ``scopeId`` = the link), rather
than six calls per link (108 on an H100) through nvmlDeviceGetNvLinkState, ...Version and
...ErrorCounter. Links belong to the physical GPU: a MIG instance has none of its own."""

from __future__ import annotations

from gpuprobe.daemon.core.model import Interconnect, Link
from gpuprobe.probes.backend import Query
from gpuprobe.probes.nvidia import fieldvalues
from gpuprobe.probes.nvidia.session import NvDevice, NvmlSession

F_STATE, F_VERSION = 165, 166  # NVML_FI_DEV_NVLINK_GET_STATE, _GET_VERSION
F_TX, F_RX = 138, 139  # NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX / _RX: KiB since the driver loaded
# NVML_FI_DEV_NVLINK_ERROR_DL_CRC, _DL_REPLAY, _DL_RECOVERY
ERROR_FIELDS = {163: "crc", 161: "replay", 162: "recovery"}
PER_LINK = (F_STATE, F_VERSION, F_TX, F_RX, *ERROR_FIELDS)
# nvmlNvlinkVersion_t -> the NVLink version it names
VERSIONS = {1: 1.0, 2: 2.0, 3: 2.2, 4: 3.0, 5: 3.1, 6: 4.0, 7: 5.0, 8: 6.0}
KIB = 1024


def read_links(session: NvmlSession, dev: NvDevice, q: Query, count: int) -> Interconnect:
    """The GPU's ``count`` links (NVML_FI_DEV_NVLINK_LINK_COUNT); none for a MIG instance or
    a GPU without NVLink. A link whose state the device does not report is left out; one
    that is not connected reads down."""
    if count <= 0 or dev.parent is not None:
        return Interconnect()
    cached = dev.state.get("nvlink_ids")
    if cached is None or cached[0] != count:
        cached = (count, [(fid, link) for link in range(count) for fid in PER_LINK])
        dev.state["nvlink_ids"] = cached
    ids = cached[1]
    values = q(dev, "nvlink", session.lib.nvmlDeviceGetFieldValues, dev.handle, ids)
    if values is None:
        return Interconnect()
    read: dict[int, dict[int, float]] = {}
    for (fid, link), (_, ret, _, value) in zip(ids, fieldvalues.decode(values), strict=True):
        if ret == 0 and value is not None:  # a field's own error: that value is absent
            read.setdefault(link, {})[fid] = value
    links: dict[str, Link] = {}
    version = None
    tx_total = rx_total = 0.0
    errors: dict[str, int] = {}
    for link in range(count):
        got = read.get(link, {})
        if F_STATE not in got:
            continue
        if version is None and got.get(F_VERSION) in VERSIONS:
            version = VERSIONS[int(got[F_VERSION])]
        tx = got[F_TX] * KIB if F_TX in got else None
        rx = got[F_RX] * KIB if F_RX in got else None
        tx_total += tx or 0.0
        rx_total += rx or 0.0
        counts = {kind: int(got[fid]) for fid, kind in ERROR_FIELDS.items() if fid in got}
        for kind, n in counts.items():
            errors[kind] = errors.get(kind, 0) + n
        links[str(link)] = Link(up=got[F_STATE] == 1, tx_bytes_total=tx, rx_bytes_total=rx,
                                errors=counts)
    if not links:
        return Interconnect()
    any_tx = any(link.tx_bytes_total is not None for link in links.values())
    any_rx = any(link.rx_bytes_total is not None for link in links.values())
    return Interconnect(kind="nvlink", version=version, links=links,
                        tx_bytes_total=tx_total if any_tx else None,
                        rx_bytes_total=rx_total if any_rx else None, errors=errors)
