"""Fault runs: what /metrics says while a simulated GPU hangs, fails or flaps.

Each case starts its own daemon as a child process (the real Daemon over the simulated
NVML and amdsmi, serving on a loopback port) that takes fault commands on stdin, so the
scraper measuring it shares no interpreter with it. The scenario has three NVIDIA H100s and
two AMD GPUs of different models (an MI300X and a Radeon PRO W7900). The benchmark scrapes
/metrics every 0.25 s and reports, phase by phase:

* ``hang``: a call that blocks until released: NVML ``nvmlDeviceGetMemoryInfo`` on NVIDIA
  GPU 1, amdsmi ``amdsmi_get_gpu_memory_usage`` on AMD GPU 0, then amdsmi
  ``amdsmi_get_gpu_device_bdf`` on AMD GPU 0 (read only during discovery, so this case sets
  both vendors' ``discovery_interval`` to 10 s). Latency p50/p99 before and during; whether
  the hung GPU reads down and how soon; scrapes where another GPU read down; scrapes where a
  GPU that reads up shows another GPU's identity (UUID, PCI address, model or memory total
  different from its own before the fault).
* ``unknown``: every NVML call on NVIDIA GPU 1 fails with NVML_ERROR_UNKNOWN for a minute:
  what ``gpuprobe_device_up`` says for it and how many series carry its UUID, against the
  count before.
* ``flap_bus``: NVIDIA GPU 2 falls off the bus for 10 s of every 30 s (scenario events, at
  time acceleration 1); ``flap_lost``: GPU 2 is found by its handle but every
  ``nvmlDeviceGetPowerUsage`` answers GPU_IS_LOST. Log lines per minute that name the
  GPU's UUID, and all log lines per minute.

Log lines are matched by the GPU's UUID, not by their wording.

    .venv/bin/python benchmarks/faults.py --quick              # smoke test (~45 s)
    .venv/bin/python benchmarks/faults.py --json faults.json   # about 6 min
    .venv/bin/python benchmarks/faults.py --case unknown       # one case
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from _harness import (
    ROOT,
    LogCount,
    Scrape,
    child_env,
    device_up,
    fmt_ms,
    free_port,
    load,
    machine,
    percentile,
    scrape,
    series,
    stop,
    table,
    wait_http,
    write_json,
)

NVML_ERROR_UNKNOWN, NVML_ERROR_GPU_IS_LOST = 999, 15
SCRAPE_EVERY = 0.25
CASES = ("hang", "unknown", "flap_bus", "flap_lost")


def scenario(flap: bool = False) -> dict[str, Any]:
    def job(pid: int, size: str) -> dict[str, Any]:
        return {"pid": pid, "name": f"job{pid}", "utilization": 0.4,
                "memory": {"pattern": "constant", "size": size}}

    nvidia = [{"vendor": "nvidia", "model": "NVIDIA H100 80GB HBM3", "architecture": "hopper",
               "memory": "80GiB", "processes": [job(1000 + i, f"{i + 1}GiB")]}
              for i in range(3)]
    if flap:
        nvidia[2]["events"] = [{"at": "10s", "kind": "fall_off_bus", "duration": "10s"}]
    amd = [{"vendor": "amd", "model": "AMD Instinct MI300X", "architecture": "cdna3",
            "memory": "192GiB", "processes": [job(2001, "20GiB")]},
           {"vendor": "amd", "model": "AMD Radeon PRO W7900", "architecture": "rdna3",
            "memory": "48GiB", "processes": [job(2002, "6GiB")]}]
    out: dict[str, Any] = {"name": "faults", "seed": 5, "time_acceleration": 1,
                           "devices": nvidia + amd}
    if flap:
        out["duration"] = "30s"
    return out


def config(case: str) -> dict[str, Any]:
    """Defaults; the probes off (they would skip busy GPUs anyway); for ``hang``, discovery
    every 10 s so that a hang of a discovery call shows within the run."""
    cfg: dict[str, Any] = {"log_level": "info",
                           "collectors": {"pcie_probe": {"enabled": False},
                                          "launch_probe": {"enabled": False}}}
    if case == "hang":
        cfg["nvidia"] = {"discovery_interval": "10s"}
        cfg["amd"] = {"discovery_interval": "10s"}
    return cfg


# -- the child: a daemon that takes fault commands on stdin -----------------------------------

def child(scenario_path: str, config_path: str, port: int) -> int:
    from gpuprobe.daemon.core import config as config_mod
    from gpuprobe.daemon.service.app import Daemon
    from gpuprobe.daemon.service.cli import setup_logging
    from gpuprobe.probes.sim import Simulation

    cfg = dataclasses.replace(config_mod.load(config_path), listen=f"127.0.0.1:{port}")
    setup_logging(cfg.log_level)
    sim = Simulation.from_file(scenario_path)
    daemon = Daemon(cfg, sim)
    daemon.start()
    faces = {"nvml": sim.libnvml, "amdsmi": sim.amdsmi}
    releases: list[threading.Event] = []
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "add":
            hang = None
            if cmd.get("hang"):
                hang = threading.Event()
                releases.append(hang)
            faces[cmd["face"]].faults.add(cmd["function"], cmd.get("device"),
                                          error=cmd.get("error"), hang=hang)
        elif op == "clear":
            for face in faces.values():
                face.faults.clear()
            for ev in releases:
                ev.set()
            releases.clear()
        elif op == "quit":
            break
        print("ok", flush=True)
    for ev in releases:
        ev.set()
    daemon.stop()
    return 0


# -- the parent: phases, scrapes, figures ---------------------------------------------------

class Run:
    """One daemon child, a scraper thread, and the phases it is told about."""

    def __init__(self, case: str, tmp: Path) -> None:
        self.case = case
        scen = tmp / f"{case}-scenario.yaml"
        scen.write_text(yaml.safe_dump(scenario(flap=case == "flap_bus")), encoding="utf-8")
        conf = tmp / f"{case}-config.yaml"
        conf.write_text(yaml.safe_dump(config(case)), encoding="utf-8")
        self.log_path = tmp / f"{case}-daemon.log"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(scen), str(conf),
             str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            cwd=ROOT, env=child_env(), text=True)
        self.scrapes: list[tuple[str, Scrape, dict[str, Any]]] = []
        self.phases: list[tuple[str, float, float]] = []  # name, wall start, wall end
        self.phase = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scraper, daemon=True)

    def start(self) -> None:
        wait_http(self.url + "/readyz", self.proc)
        time.sleep(1.0)  # the first poll of every collector has been published
        self._thread.start()

    def _scraper(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            s = scrape(self.url + "/metrics")
            self.scrapes.append((self.phase, s, _digest(s.text) if s.status == 200 else {}))
            next_at += SCRAPE_EVERY
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def command(self, **cmd: Any) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ok":
            raise RuntimeError(f"daemon child did not take {cmd}")

    def during(self, name: str, seconds: float) -> None:
        self.phase = name
        t0 = time.time()
        time.sleep(seconds)
        self.phases.append((name, t0, time.time()))

    def close(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.command(op="quit")
        except (OSError, RuntimeError):
            pass
        ended = stop(self.proc)
        self._log.close()
        return ended


def _digest(text: str) -> dict[str, Any]:
    """Per vendor/gpu index: uuid, up, identity (uuid, PCI address, model, memory total), the
    series carrying its uuid, and whether another GPU reads the same uuid."""
    ups = device_up(text)
    info: dict[str, dict[str, str]] = {}
    total: dict[str, str] = {}
    per_uuid: dict[str, int] = {}
    for name, labels, value in series(text):
        u = labels.get("uuid")
        if u is None:
            continue
        per_uuid[u] = per_uuid.get(u, 0) + 1
        if name == "gpuprobe_device_info":
            info[u] = labels
        elif name == "gpuprobe_memory_total_bytes":
            total[u] = value
    out = {}
    for d in ups:
        u = d["uuid"]
        i = info.get(u, {})
        out[f"{d['vendor']}/{d['gpu']}"] = {
            "uuid": u, "up": d["up"], "series": per_uuid.get(u, 0),
            "shared_uuid": sum(x["uuid"] == u for x in ups) > 1,
            "identity": (u, i.get("pci_bus_id"), i.get("model"), total.get(u))}
    return out


def phase_figures(run: Run, phase: str, target: str | None,
                  baseline: dict[str, Any]) -> dict[str, Any]:
    rows = [(s, d) for p, s, d in run.scrapes if p == phase]
    ok = [(s, d) for s, d in rows if s.status == 200]
    lat = [s.seconds for s, _ in ok]
    t0 = rows[0][0].t if rows else 0.0
    fig: dict[str, Any] = {
        "scrapes": len(rows), "failed": len(rows) - len(ok),
        "p50_seconds": percentile(lat, 50), "p99_seconds": percentile(lat, 99),
        "max_seconds": max(lat, default=None),
        "others_down_scrapes": sum(any(v["up"] != 1 for k, v in d.items() if k != target)
                                   for _, d in ok),
        "wrong_identity_scrapes": sum(bool(_moved(d, baseline)) for _, d in ok),
        "shared_uuid_scrapes": sum(any(v["shared_uuid"] for v in d.values()) for _, d in ok),
    }
    if target is not None:
        t = [(s, d.get(target)) for s, d in ok]
        downs = [s.t - t0 for s, v in t if v is not None and v["up"] != 1]
        fig.update({
            "target_up_scrapes": sum(1 for _, v in t if v is not None and v["up"] == 1),
            "target_down_scrapes": len(downs),
            "target_missing_scrapes": sum(1 for _, v in t if v is None),
            "target_first_down_after_seconds": round(downs[0], 2) if downs else None,
            "target_series_min": min((v["series"] for _, v in t if v), default=None),
            "target_series_max": max((v["series"] for _, v in t if v), default=None),
            "target_series_last": t[-1][1]["series"] if t and t[-1][1] else None,
            "target_series_before": baseline.get(target, {}).get("series"),
        })
        fig["wrong_identity_at_end"] = _moved(ok[-1][1], baseline) if ok else []
    return fig


def _moved(digest: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """GPUs reading up whose UUID, PCI address, model or memory total differs from their
    own before the fault (a value missing on either side is not a difference)."""
    out = []
    for k, v in digest.items():
        was = baseline.get(k)
        if v["up"] != 1 or was is None:
            continue
        if any(a is not None and b is not None and a != b
               for a, b in zip(v["identity"], was["identity"], strict=True)):
            out.append(k)
    return out


TS_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_lines(path: Path, start: float, end: float, needle: str | None) -> int:
    """Log lines stamped within [start, end) (wall time), containing ``needle`` if given;
    an unstamped line (a traceback's) takes the stamp of the line before it."""
    n, stamp = 0, 0.0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = TS_RE.match(line)
        if m:
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if start <= stamp < end and (needle is None or needle in line):
            n += 1
    return n


def _baseline(run: Run) -> dict[str, Any]:
    ok = [d for p, s, d in run.scrapes if p == "before" and s.status == 200]
    return ok[-1] if ok else {}


def case_hang(tmp: Path, base: float, hold: float, settle: float) -> dict[str, Any]:
    run = Run("hang", tmp)
    faults = (("nvml", "nvmlDeviceGetMemoryInfo", 1, "nvidia/1"),
              ("amdsmi", "amdsmi_get_gpu_memory_usage", 0, "amd/0"),
              ("amdsmi", "amdsmi_get_gpu_device_bdf", 0, "amd/0"))
    try:
        run.start()
        run.during("before", base)
        for face, fn, dev, _ in faults:
            run.command(op="add", face=face, function=fn, device=dev, hang=True)
            run.during(f"{face}:{fn} hung", hold)
            run.command(op="clear")
            run.during(f"after {fn}", settle)
    finally:
        ended = run.close()
    baseline = _baseline(run)
    phases = {"before": phase_figures(run, "before", None, baseline)}
    for face, fn, _, target in faults:
        phases[f"{face}:{fn} hung"] = {"target": target, **phase_figures(
            run, f"{face}:{fn} hung", target, baseline)}
        phases[f"after {fn}"] = {"target": target, **phase_figures(
            run, f"after {fn}", target, baseline)}
    return {"phases": phases, "stop": ended, "log": _logsum(run), "timeline": _timeline(run)}


def case_unknown(tmp: Path, base: float, hold: float, settle: float) -> dict[str, Any]:
    run = Run("unknown", tmp)
    try:
        run.start()
        run.during("before", base)
        run.command(op="add", face="nvml", function="*", device=1, error=NVML_ERROR_UNKNOWN)
        run.during("UNKNOWN on every call", hold)
        run.command(op="clear")
        run.during("after", settle)
    finally:
        ended = run.close()
    baseline = _baseline(run)
    target = "nvidia/1"
    return {"target": target, "fail_seconds": hold, "stop": ended, "log": _logsum(run),
            "phases": {p: phase_figures(run, p, target if p != "before" else None, baseline)
                       for p in ("before", "UNKNOWN on every call", "after")},
            "timeline": _timeline(run)}


def case_flap(kind: str, tmp: Path, base: float, hold: float) -> dict[str, Any]:
    run = Run(kind, tmp)
    target = "nvidia/2"
    try:
        run.start()
        run.during("before", base if kind == "flap_lost" else 0.5)
        if kind == "flap_lost":
            run.command(op="add", face="nvml", function="nvmlDeviceGetPowerUsage", device=2,
                        error=NVML_ERROR_GPU_IS_LOST)
        run.during("flapping", hold)
    finally:
        ended = run.close()
    baseline = _baseline(run)
    uuid = (baseline.get(target) or next(
        (d[target] for _, s, d in run.scrapes if target in d), {})).get("uuid")
    _, start, end = next(p for p in run.phases if p[0] == "flapping")
    minutes = (end - start) / 60
    ups = [d[target]["up"] for p, s, d in run.scrapes if p == "flapping" and target in d]
    figs = phase_figures(run, "flapping", target, baseline)
    return {"target": target, "uuid": uuid, "flap_seconds": round(end - start, 1),
            "down_transitions_seen": sum(1 for a, b in itertools.pairwise(ups)
                                         if a == 1 and b != 1),
            "log_lines_naming_gpu_per_minute": round(
                log_lines(run.log_path, start, end, uuid) / minutes, 1) if uuid else None,
            "log_lines_per_minute": round(log_lines(run.log_path, start, end, None) / minutes, 1),
            "phases": {"flapping": figs}, "stop": ended, "log": _logsum(run),
            "timeline": _timeline(run)}


def _timeline(run: Run) -> list[dict[str, Any]]:
    """Every scrape: phase, time, latency, and per GPU up, series count and identity
    (uuid, PCI address, model, memory total)."""
    t0 = run.scrapes[0][1].t if run.scrapes else 0.0
    return [{"phase": p, "t": round(s.t - t0, 2), "status": s.status,
             "seconds": round(s.seconds, 5),
             "gpus": {k: [v["up"], v["series"], *v["identity"]] for k, v in d.items()}}
            for p, s, d in run.scrapes]


def _logsum(run: Run) -> dict[str, Any]:
    c = LogCount.of(run.log_path)
    return {"lines": c.lines, "warnings": c.warnings, "errors": c.errors,
            "tracebacks": c.tracebacks, "examples": c.examples}


# -- output -----------------------------------------------------------------------------------

def _phase_row(name: str, f: dict[str, Any]) -> tuple[str, str]:
    parts = [f"p50 {fmt_ms(f['p50_seconds'])}", f"p99 {fmt_ms(f['p99_seconds'])}",
             f"max {fmt_ms(f['max_seconds'])}", f"{f['scrapes']} scrapes, {f['failed']} failed",
             f"others down in {f['others_down_scrapes']}"]
    if "target_up_scrapes" in f:
        first = f["target_first_down_after_seconds"]
        parts.append(f"{f['target']} up in {f['target_up_scrapes']}, down in "
                     f"{f['target_down_scrapes']}" + (f" (first after {first} s)"
                                                      if first is not None else "")
                     + (f", ABSENT from /metrics in {f['target_missing_scrapes']}"
                        if f["target_missing_scrapes"] else ""))
        parts.append(f"its series {f['target_series_min']}-{f['target_series_max']} "
                     f"(before: {f['target_series_before']})")
    if "target_series_last" in f:
        parts[-1] += f", at phase end {f['target_series_last']}"
    if f["shared_uuid_scrapes"]:
        parts.append(f"TWO GPUS WITH ONE UUID in {f['shared_uuid_scrapes']}")
    if f["wrong_identity_scrapes"]:
        parts.append(f"WRONG IDENTITY in {f['wrong_identity_scrapes']}"
                     + (f" (at end: {', '.join(f['wrong_identity_at_end'])})"
                        if f.get("wrong_identity_at_end") else ""))
    return name, "; ".join(parts)


def report(r: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = [("machine", r["machine"])]
    for case, c in r["cases"].items():
        rows.append((f"[{case}]", f"load avg {c['load_start_end'][0]}-{c['load_start_end'][1]}; "
                                  f"log: {c['log']['lines']} lines, {c['log']['errors']} "
                                  f"errors, {c['log']['tracebacks']} tracebacks; stop: status "
                                  f"{c['stop']['returncode']} in {c['stop']['stop_seconds']} s"))
        if case.startswith("flap"):
            rows.append(("  " + c["target"], f"{c['flap_seconds']} s: "
                         f"{c['log_lines_naming_gpu_per_minute']} log lines/min naming it, "
                         f"{c['log_lines_per_minute']} lines/min in all, "
                         f"{c['down_transitions_seen']} up->down seen on /metrics"))
        for name, f in c["phases"].items():
            if "target" not in f and "target" in c:
                f = {**f, "target": c["target"]}
            rows.append(_phase_row("  " + name, f))
    return table(rows)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", choices=CASES,
                    help="run only this case (repeatable; default: all)")
    ap.add_argument("--quick", action="store_true", help="short phases (smoke test)")
    ap.add_argument("--hold", type=float, default=20.0,
                    help="seconds each hang lasts (default 20)")
    ap.add_argument("--fail", type=float, default=60.0,
                    help="seconds of UNKNOWN errors (default 60)")
    ap.add_argument("--flap", type=float, default=60.0,
                    help="seconds of flapping per flap case (default 60)")
    ap.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    ap.add_argument("--from-json", metavar="FILE", help="print the table of an earlier run")
    args = ap.parse_args()
    if args.from_json:
        print(report(json.loads(Path(args.from_json).read_text(encoding="utf-8"))))
        return 0
    base, settle = 10.0, 10.0
    if args.quick:
        args.hold, args.fail, args.flap, base, settle = 3.0, 4.0, 4.0, 2.0, 2.0
    tmp = Path(tempfile.mkdtemp(prefix="gpuprobe-faults-"))
    cases: dict[str, Any] = {}
    t0 = time.monotonic()
    loads = {}
    for case in args.case or CASES:
        loads[case] = [load()]
        if case == "hang":
            cases[case] = case_hang(tmp, base, args.hold, settle)
        elif case == "unknown":
            cases[case] = case_unknown(tmp, base, args.fail, settle)
        else:
            cases[case] = case_flap(case, tmp, base, args.flap)
        loads[case].append(load())
        cases[case]["load_start_end"] = loads[case]
    r = {"machine": machine(), "argv": sys.argv[1:], "cases": cases, "logs": str(tmp),
         "wall_seconds": round(time.monotonic() - t0, 1),
         "settings": {"hold": args.hold, "fail": args.fail, "flap": args.flap, "base": base,
                      "settle": settle, "scrape_every": SCRAPE_EVERY}}
    print(report(r))
    print(f"(logs in {tmp}; {r['wall_seconds']:.0f} s)")
    write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
