"""Command line: ``gpuprobe run | snapshot | check-config | --version``.

This is the only place that exits. A configuration or scenario problem prints one line,
``gpuprobe: error: ...``, and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from gpuprobe.daemon.core import config as config_mod
from gpuprobe.daemon.export.exporter import version
from gpuprobe.daemon.service.systemd import Notifier

EXIT_USAGE = 2
EXIT_RUNTIME = 1

log = logging.getLogger("gpuprobe")


class _Fail(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # Under systemd the journal adds its own timestamps.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _load_config(args: argparse.Namespace) -> config_mod.Config:
    try:
        cfg = config_mod.load(getattr(args, "config", None))
        overrides: dict[str, Any] = {}
        if getattr(args, "listen", None) is not None:  # "" is an error, not the default
            config_mod.parse_listen(args.listen, "--listen")
            overrides["listen"] = args.listen
        if getattr(args, "web_config_file", None) is not None:
            overrides["web_config_file"] = args.web_config_file
        if getattr(args, "log_level", None):
            overrides["log_level"] = args.log_level
        if getattr(args, "simulate", None) is not None:
            overrides["simulation"] = config_mod.SimulationConfig(
                enabled=True, scenario=args.simulate or cfg.simulation.scenario)
        return dataclasses.replace(cfg, **overrides)
    except config_mod.ConfigError as e:
        raise _Fail(str(e)) from None


def _simulation(cfg: config_mod.Config) -> Any:
    if not cfg.simulation.enabled:
        return None
    from gpuprobe.probes.sim import ScenarioError, Simulation

    try:
        return Simulation.from_file(cfg.simulation.scenario or None)
    except ScenarioError as e:
        raise _Fail(str(e)) from None


def _web_config(cfg: config_mod.Config) -> Any:
    from gpuprobe.daemon.service.webconfig import WebConfigError, WebConfigSource

    try:
        return WebConfigSource(cfg.web_config_file or None)
    except WebConfigError as e:
        raise _Fail(str(e)) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    _web_config(cfg)
    if cfg.simulation.enabled and cfg.simulation.scenario:
        sim = _simulation(cfg)
        sim.close()
    enabled = [n for n, c in cfg.collectors.items() if c.enabled]
    print(f"{args.config}: OK (listen {cfg.listen}; collectors: {', '.join(enabled) or 'none'})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    setup_logging(cfg.log_level)
    web = _web_config(cfg)
    sim = _simulation(cfg)
    from gpuprobe.daemon.service.app import Daemon

    daemon = Daemon(cfg, sim, web=web)
    stop = threading.Event()
    reload = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if not stop.is_set():
            log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    def on_hup(_signum: int, _frame: Any) -> None:
        reload.set()  # the supervise loop sees it within a second

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        daemon.start()
    except OSError as e:
        daemon.stop()
        raise _Fail(f"cannot listen on {cfg.listen}: {e.strerror or e}", EXIT_RUNTIME) from None
    mode = f"simulating scenario {sim.scenario.name!r}" if sim else "real devices"
    scheme = "https" if web.current().tls else "http"
    log.info("gpuprobe %s listening on %s://%s (%s)", version(), scheme, cfg.listen, mode)
    supervise(daemon, stop, Notifier(), reload)
    daemon.stop()
    return 0


def _reload(daemon: Any, notifier: Notifier) -> None:
    """SIGHUP: re-read the web config file now; the main config needs a restart."""
    notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
    if daemon.http is not None and daemon.config.web_config_file:
        ok = daemon.http.reload_web_config()
        log.info("SIGHUP: web config %s %s; other configuration changes take a restart",
                 daemon.config.web_config_file, "re-read" if ok else "kept (see above)")
    else:
        log.info("SIGHUP: nothing to reload (no web config file); configuration changes take "
                 "a restart")
    notifier.notify("READY=1")


def supervise(daemon: Any, stop: threading.Event, notifier: Notifier,
              reload: threading.Event | None = None) -> None:
    """Tell systemd when the daemon is ready (config loaded, port bound, every collector
    tried once: device discovery has been attempted), ping its watchdog while the scheduler
    ticks (whether or not the GPUs answer), reload on SIGHUP, and say when it stops."""
    ping = notifier.watchdog_seconds / 2 if notifier.watchdog_seconds else None
    ready = False
    next_ping = 0.0
    while not stop.is_set():
        if reload is not None and reload.is_set():
            reload.clear()
            _reload(daemon, notifier)
        now = time.monotonic()
        if not ready and daemon.scheduler.attempted_all():
            ready = True
            devices = len(daemon.store.view().devices())
            notifier.ready(f"serving {daemon.config.listen}; {devices} devices")
            log.info("ready: every collector has run once (%d devices)", devices)
        if ping is not None and now >= next_ping:
            if daemon.alive():
                notifier.watchdog()
            else:  # a wedged scheduler: let systemd's watchdog restart us
                log.error("scheduler has not ticked for %.0f s; not pinging the watchdog",
                          now - daemon.scheduler.heartbeat)
            next_ping = now + ping
        stop.wait(min(0.25 if not ready else 1.0, ping or 1.0))
    notifier.stopping()


def _human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def render_snapshot(view: Any) -> str:
    devices = sorted(view.devices(), key=lambda d: (d.identity.vendor, d.identity.index))
    rows = [["GPU", "VENDOR", "MODEL", "UP", "TEMP", "POWER/LIMIT", "MEMORY USED/TOTAL", "UTIL",
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
        rows.append([i.index, i.vendor, (i.model or "?")[:34], "yes" if d.up else
                     f"NO ({d.down_reason})", "-" if t is None else f"{t:.0f}C", power, mem,
                     _pct(d.utilization.get("gpu")), _pct(d.activity.sm_active), link,
                     ",".join(active) or "-"])
    out = [_table(rows)]
    index = {d.identity.uuid: (d.identity.vendor, d.identity.index) for d in devices}
    procs = view.processes()
    if procs:
        prow = [["GPU", "VENDOR", "PID", "NAME", "MEMORY", "CONTAINER", "POD"]]
        for p in sorted(procs, key=lambda p: (index.get(p.device_uuid, ("?", "?")), p.pid)):
            vendor, gpu = index.get(p.device_uuid, ("?", "?"))
            prow.append([gpu, vendor, str(p.pid), p.name or "?",
                         _human_bytes(p.used_memory_bytes), (p.container_id or "-")[:12],
                         p.pod_uid or "-"])
        out.append(_table(prow))
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


def cmd_snapshot(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    setup_logging("warning" if cfg.log_level == "info" else cfg.log_level)
    sim = _simulation(cfg)
    from gpuprobe.daemon.service.app import Daemon

    daemon = Daemon(cfg, sim)
    try:
        daemon.scheduler.run_once()
        time.sleep(0.3)  # GPM rates need two samples more than 100 ms apart
        daemon.scheduler.run_once()
        view = daemon.store.view()
        if args.json:
            json.dump(snapshot_json(view), sys.stdout, indent=2, sort_keys=True)
            sys.stdout.write("\n")
        else:
            sys.stdout.write(render_snapshot(view))
    finally:
        daemon.stop()
    return 0


def _probe_row(probe: str, d: Any, out: Any) -> list[str]:
    v = out.values
    head = [d.identity.index, (d.identity.model or "?")[:30]]
    if out.outcome != "ok":
        return [*head, f"{out.outcome}: {out.detail}"]
    if probe == "pcie":
        link = v.get("link") or {}
        from gpuprobe.daemon.core.model import pcie_link_bytes_per_second

        rate = pcie_link_bytes_per_second(link.get("generation"), link.get("width"))
        h2d, d2h = v["host_to_device_bytes_per_second"], v["device_to_host_bytes_per_second"]
        ratio = (lambda x: f"{x / rate:.0%}") if rate else (lambda x: "-")
        return [*head, "ok", f"{h2d / 1e9:.1f}", f"{d2h / 1e9:.1f}",
                f"Gen{link.get('generation')} x{link.get('width')}" if link else "-",
                f"{rate / 1e9:.1f}" if rate else "-", ratio(h2d), ratio(d2h),
                f"{out.gpu_seconds:.2f}s"]
    return [*head, "ok", f"{v['launch_latency_seconds'] * 1e6:.1f}",
            f"{v.get('launch_latency_uncertainty_seconds', 0) * 1e6:.1f}",
            f"{v['sm_reach_ratio']:.0%}" if v.get("sm_reach_ratio") is not None else "-",
            f"{v.get('block_start_spread_seconds', 0) * 1e6:.1f}", f"{out.gpu_seconds:.2f}s"]


def cmd_probe(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    # The command runs the probe itself; the scheduled probes stay off meanwhile.
    collectors = {n: dataclasses.replace(c, enabled=False) if n.endswith("_probe") else c
                  for n, c in cfg.collectors.items()}
    cfg = dataclasses.replace(cfg, collectors=collectors)
    setup_logging("warning" if cfg.log_level == "info" else cfg.log_level)
    sim = _simulation(cfg)
    from gpuprobe.daemon.service.app import Daemon

    daemon = Daemon(cfg, sim)
    try:
        daemon.scheduler.run_once()
        view = daemon.store.view()
        devices = [d for d in view.devices() if d.identity.parent_uuid is None]
        if args.gpu is not None:
            chosen = [d for d in devices if d.identity.index == args.gpu]
            if not chosen:
                known = ", ".join(d.identity.index for d in devices) or "none"
                raise _Fail(f"--gpu {args.gpu:.40}: no such GPU (found: {known:.100})")
            devices = chosen
        if not devices:
            reasons = [f"{b.name}: {b.reason}" for b in view.backends().values() if not b.up]
            print("no GPUs found" + (f" ({'; '.join(reasons)})" if reasons else ""),
                  file=sys.stderr)
            return EXIT_RUNTIME
        orch = daemon.sources.orchestrator()
        rows = []
        for d in devices:
            print(f"GPU {d.identity.index} ({d.identity.model}): {args.probe} probe",
                  file=sys.stderr, flush=True)
            out = orch.run_now(args.probe, d.identity.uuid, force=args.force,
                               progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
            rows.append((d, out))
    finally:
        daemon.stop()
    if args.probe == "pcie":
        header = ["GPU", "MODEL", "OUTCOME", "H2D GB/s", "D2H GB/s", "LINK", "LINK GB/s",
                  "H2D/LINK", "D2H/LINK", "GPU TIME"]
    else:
        header = ["GPU", "MODEL", "OUTCOME", "LATENCY us", "+/- us", "SM REACH",
                  "SPREAD us", "GPU TIME"]
    table = [header]
    for d, out in rows:
        row = _probe_row(args.probe, d, out)
        table.append(row + [""] * (len(header) - len(row)))
    sys.stdout.write(_table(table) + "\n")
    return 0 if all(out.outcome == "ok" for _, out in rows) else EXIT_RUNTIME


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuprobe", description="Cross-vendor GPU profiler daemon and Prometheus exporter.")
    parser.add_argument("--version", action="version", version=f"gpuprobe {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="YAML configuration file")
        p.add_argument("--simulate", nargs="?", const="", metavar="SCENARIO.yaml",
                       help="use simulated GPUs (the built-in scenario if no file is given)")

    run = sub.add_parser("run", help="run the daemon and serve /metrics")
    common(run)
    run.add_argument("--listen", metavar="HOST:PORT",
                     help=f"address to serve on (default {config_mod.DEFAULT_LISTEN})")
    run.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                     help="Prometheus web config file: TLS, client certificates, basic auth "
                          "(overrides web_config_file)")
    run.add_argument("--log-level", choices=config_mod.LOG_LEVELS)
    run.set_defaults(func=cmd_run)

    snap = sub.add_parser("snapshot", help="collect once and print a table across vendors")
    common(snap)
    snap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    snap.set_defaults(func=cmd_snapshot)

    probe = sub.add_parser("probe", help="run an active probe now and print what it measured")
    probe.add_argument("probe", choices=("pcie", "launch"),
                       help="pcie: host-device bandwidth; launch: kernel launch latency")
    common(probe)
    probe.add_argument("--gpu", metavar="N", help="only this GPU (its index, as in snapshot)")
    probe.add_argument("--force", action="store_true",
                       help="probe even a busy GPU or one other processes hold (never one "
                            "in MIG, MPS or an exclusive compute mode)")
    probe.set_defaults(func=cmd_probe)

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("config", metavar="FILE")
    check.set_defaults(func=cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _Fail as e:
        print(f"gpuprobe: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
