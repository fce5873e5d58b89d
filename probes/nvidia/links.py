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
# NVML_FI_DEV_NVLINK_ERROR_DL_CRC, _DL_REPLAY, _DL_RECOVERY, in read_links' order
F_CRC, F_REPLAY, F_RECOVERY = 163, 161, 162
PER_LINK = (F_STATE, F_VERSION, F_TX, F_RX, F_CRC, F_REPLAY, F_RECOVERY)
# nvmlNvlinkVersion_t -> the NVLink version it names
VERSIONS = {1: 1.0, 2: 2.0, 3: 2.2, 4: 3.0, 5: 3.1, 6: 4.0, 7: 5.0, 8: 6.0}
KIB = 1024
NVLINK_MAX_LINKS = 18  # NVML_NVLINK_MAX_LINKS: callers pass a count of at most this
LINK_NAMES = tuple(str(link) for link in range(NVLINK_MAX_LINKS))  # link labels, made once


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
    # The entries come back in the order asked: PER_LINK's fields for link 0, then link 1...
    # (the id is not checked per entry; a field's own error leaves that value absent).
    got = fieldvalues.answers(values)
    if len(got) != len(ids):  # not the array asked for
        return Interconnect()
    links: dict[str, Link] = {}
    version = None
    tx_total = rx_total = 0.0
    any_tx = any_rx = False
    crc_total = replay_total = recovery_total = None
    # one tuple of PER_LINK's values per link (this loop runs for every link of every GPU
    # each poll: its per-link dicts and generators were most of read_links' own time)
    for link, (state, ver, tx_kib, rx_kib, crc, replay, recovery) in enumerate(
            zip(*[iter(got)] * len(PER_LINK), strict=True)):
        if state is None:  # the device does not report this link
            continue
        if version is None and ver in VERSIONS:
            version = VERSIONS[int(ver)]
        tx = rx = None
        if tx_kib is not None:
            tx = tx_kib * KIB
            tx_total += tx
            any_tx = True
        if rx_kib is not None:
            rx = rx_kib * KIB
            rx_total += rx
            any_rx = True
        counts = {}
        if crc is not None:
            counts["crc"] = n = int(crc)
            crc_total = n if crc_total is None else crc_total + n
        if replay is not None:
            counts["replay"] = n = int(replay)
            replay_total = n if replay_total is None else replay_total + n
        if recovery is not None:
            counts["recovery"] = n = int(recovery)
            recovery_total = n if recovery_total is None else recovery_total + n
        links[LINK_NAMES[link]] = Link(state == 1, tx, rx, counts)  # positional: cheaper
    errors = {kind: n for kind, n in (("crc", crc_total), ("replay", replay_total),
                                      ("recovery", recovery_total)) if n is not None}
    if not links:
        return Interconnect()
    return Interconnect(kind="nvlink", version=version, links=links,
                        tx_bytes_total=tx_total if any_tx else None,
                        rx_bytes_total=rx_total if any_rx else None, errors=errors)
