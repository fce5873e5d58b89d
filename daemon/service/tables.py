"""What ``gpuprobe snapshot`` and ``gpuprobe probe`` print: text tables and plain JSON."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpuprobe.probes.active.spec import ProbeSpec


def _human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def render_snapshot(view: Any) -> str:
    devices = view.devices()  # in DeviceIdentity.order, as everywhere
    rows = [["GPU", "MODEL", "UP", "TEMP", "POWER/LIMIT", "MEMORY USED/TOTAL", "UTIL",
             "SM ACTIVE", "PCIE NOW (MAX)", "THROTTLE"]]
    for d in devices:
        i, temps = d.identity, d.thermal.temperatures
        t = temps.get("gpu", temps.get("edge", temps.get("hotspot")))  # NVIDIA's, else AMD's
        p = d.power
        power = "-" if p.draw_watts is None else f"{p.draw_watts:.0f}" + (
            f"/{p.limit_watts:.0f} W" if p.limit_watts else " W")
        m = d.memory
        mem = "-" if m.used_bytes is None else f"{_human_bytes(m.used_bytes)} / " \
                                              f"{_human_bytes(m.total_bytes)}"
        pc = d.pcie
        link = "-" if pc.generation is None else \
            f"Gen{pc.generation} x{pc.width} (Gen{pc.max_generation} x{pc.max_width})"
        active = sorted(d.throttle.active - {"gpu_idle"})
        rows.append([i.name, _model(i)[:40], "yes" if d.up else
                     f"NO ({d.down_reason})", "-" if t is None else f"{t:.0f}C", power, mem,
                     _pct(d.utilization.get("gpu")), _pct(d.activity.sm_active), link,
                     ",".join(active) or "-"])
    out = [table(rows)]
    rank = {d.identity.uuid: (n, d.identity.name) for n, d in enumerate(devices)}
    procs = view.processes()
    if procs:
        prow = [["GPU", "PID", "NAME", "MEMORY", "CONTAINER", "POD"]]
        for p in sorted(procs, key=lambda p: (rank.get(p.device_uuid, (len(rank), "?")), p.pid)):
            prow.append([rank.get(p.device_uuid, (0, "?"))[1], str(p.pid), p.name or "?",
                         _human_bytes(p.used_memory_bytes), (p.container_id or "-")[:12],
                         f"{p.pod_namespace}/{p.pod_name}" if p.pod_name else p.pod_uid or "-"])
        out.append(table(prow))
    backends = view.backends()
    for b in backends.values():
        out.append(f"{b.name}: " + (f"up (driver {b.driver_version})" if b.up
                                    else f"unavailable: {b.reason}"))
    return "\n\n".join(out) + "\n"


def snapshot_json(view: Any) -> dict[str, Any]:
    def plain(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, dict):
            return {("/".join(k) if isinstance(k, tuple) else str(k)): plain(v)
                    for k, v in obj.items()}
        if isinstance(obj, frozenset | set):
            return sorted(obj)
        if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
            return {k: plain(v) for k, v in obj._asdict().items()}
        if isinstance(obj, tuple | list):
            return [plain(v) for v in obj]
        return obj

    return {
        "devices": [plain(d) for d in view.devices()],
        "processes": [plain(p) for p in view.processes()],
        "xid_counts": {u: {str(k): v for k, v in c.items()} for u, c in view.xid_counts()},
        "backends": [plain(b) for b in view.backends().values()],
        "collectors": {n: plain(h) for n, h in view.health.items()},
    }


def _model(i: Any) -> str:
    """The model, and for an AMD partition its mode (NVML's name of a MIG instance already
    says "MIG 3g.40gb")."""
    model = i.model or "?"
    if i.vendor == "amd" and i.parent_uuid is not None and i.partition:
        model += f" partition {i.partition}"
    return model


def probe_row(spec: ProbeSpec[Any], d: Any, out: Any) -> list[str]:
    head = [d.identity.name, (d.identity.model or "?")[:30]]
    if out.outcome != "ok":
        detail = out.detail
        if out.outcome == "skipped" and detail == "mig":
            detail = "MIG"
        return [*head, f"{out.outcome}: {detail}"]
    return [*head, "ok", *spec.row(out.values, out.gpu_seconds)]
