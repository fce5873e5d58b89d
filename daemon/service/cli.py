"""Command line: ``gpuprobe run | snapshot | probe | check-config | --version``: the
arguments and the commands (the run loop is supervise.py's, the printed tables tables.py's).

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
from gpuprobe.daemon.core.probekinds import PROBE_KINDS
from gpuprobe.daemon.export.exporter import version
from gpuprobe.daemon.service import malloc, priority
from gpuprobe.daemon.service.supervise import supervise
from gpuprobe.daemon.service.systemd import Notifier
from gpuprobe.daemon.service.tables import probe_row, render_snapshot, snapshot_json, table

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
    malloc.tune()  # before the serving process forks and any thread starts
    web = _web_config(cfg)
    serving = None
    if cfg.http.separate_process:  # forked first, small: before the simulation and the
        from gpuprobe.daemon.service.serving import ServingProcess  # vendor libraries

        try:
            serving = ServingProcess.launch(cfg, web)
        except OSError as e:
            raise _Fail(f"cannot listen on {cfg.listen}: {e.strerror or e}",
                        EXIT_RUNTIME) from None
        # this thread, and all it starts from now on (polls, encoding, probes), yields the
        # CPU to scrapes; the thread that re-forks the serving process keeps its priority
        priority.lower_threads(cfg.http.poll_nice, keep={serving.forking_thread() or 0})
    try:
        sim = _simulation(cfg)
        from gpuprobe.daemon.service.app import Daemon

        daemon = Daemon(cfg, sim, web=web, serving=serving)
    except BaseException:
        if serving is not None:
            serving.stop()
        raise
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


def choose_gpu(devices: list[Any], wanted: str) -> Any:
    """The one device ``--gpu`` names: by name ("nvidia:0"), UUID, or a bare index that only
    one device has; else a one-line error that lists the names."""
    w = wanted.strip().lower()
    by_name = [d for d in devices if w in (d.identity.name.lower(), d.identity.uuid.lower())]
    chosen = by_name or [d for d in devices if d.identity.index == w]
    if len(chosen) == 1:
        return chosen[0]
    listed = ", ".join(d.identity.name for d in (chosen or devices)) or "none"
    if chosen:
        raise _Fail(f"--gpu {wanted:.40}: more than one GPU has index {wanted:.40}; "
                    f"name one: {listed:.200}")
    raise _Fail(f"--gpu {wanted:.40}: no such GPU (found: {listed:.200})")


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
            devices = [choose_gpu(devices, args.gpu)]
        if not devices:
            reasons = [f"{b.name}: {b.reason}" for b in view.backends().values() if not b.up]
            print("no GPUs found" + (f" ({'; '.join(reasons)})" if reasons else ""),
                  file=sys.stderr)
            return EXIT_RUNTIME
        orch = daemon.sources.orchestrator()
        rows = []
        for d in devices:
            print(f"GPU {d.identity.name} ({d.identity.model}): {args.probe} probe",
                  file=sys.stderr, flush=True)
            out = orch.run_now(args.probe, d.identity.uuid, force=args.force,
                               progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
            rows.append((d, out))
    finally:
        daemon.stop()
    from gpuprobe.probes.active.specs import SPECS

    spec = SPECS[args.probe]
    header = ["GPU", "MODEL", "OUTCOME", *spec.header]
    lines = [header]
    for d, out in rows:
        row = probe_row(spec, d, out)
        lines.append(row + [""] * (len(header) - len(row)))
    sys.stdout.write(table(lines) + "\n")
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
    probe.add_argument("probe", choices=tuple(k.name for k in PROBE_KINDS),
                       help="; ".join(f"{k.name}: {k.summary}" for k in PROBE_KINDS))
    common(probe)
    probe.add_argument("--gpu", metavar="GPU",
                       help="only this GPU: its name as snapshot shows it (nvidia:0, amd:1), "
                            "its UUID, or its bare index where only one GPU has it")
    probe.add_argument("--force", action="store_true",
                       help="probe even a busy GPU or one other processes hold (never one "
                            "in MIG mode, partitioned (AMD), under MPS or in an exclusive "
                            "compute mode)")
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
