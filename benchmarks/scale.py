"""How gpuprobe's cost grows with the host, each figure a ratio taken in the same run.

For each size (GPUs x processes per GPU), over scenarios this script generates
(overhead.scenario):

1. gpuprobe: a real ``gpuprobe run --simulate`` child (the NVIDIA collectors at
   ``--interval``, 5 s by default), waited on until every simulated GPU has its
   ``gpuprobe_device_up`` series and every process it exports (at most
   exporter.max_processes_per_device a GPU) its series; then an idle window (no scrapes: the
   daemon's own polling CPU) and a scrape window
   (``--scrapes`` GETs of /metrics, ``--gap`` apart, on one kept-alive connection, so that
   the window spans several poll cycles and some scrapes meet a fresh snapshot). Reported:
   series, body bytes, scrape p50/p99, CPU seconds per minute in each window (every thread's
   schedstat, in nanoseconds, the serving process included: _harness.cpu_ns), the idle
   window's wakes a minute (voluntary context switches, in the JSON only), resident
   memory after the window (the daemon's RSS plus its serving process's USS, which is also
   given alone: _harness.footprint).
2. static: gpuprobe's own HttpServer in a child process of its own, its /metrics answering
   the daemon's last body as a fixed byte string; scraped the same way. ratio = gpuprobe
   p99 / static p99: what the daemon adds to serving the bytes.
3. poll: overhead.compare_poll at the same size: CPU of gpuprobe's poll cycle against the
   bare pynvml calls it makes (checked to be the same calls, process queries included).
4. nvitop-exporter (``pip install -e '.[bench]'``), the Python peer, over the same simulated
   GPUs (benchmarks/_nvitop_sim.py: its pynvml is the simulation's binding copy), at the
   same ``--interval``, waited on until every GPU's and every process's series are
   exported, then measured as (1). Skipped, with a line saying so, where it is not installed.

Targets (issue 14): scrape p99 within 2x of the static server at every size and at most
5 ms at 64 x 128; poll CPU at most 1.2x the bare calls at 8 x 32; RSS under 120 MB at
64 x 128; gpuprobe ahead of nvitop-exporter on idle CPU per series and on scrape p99.
Exit status 1 if one is missed, 2 on bad arguments.

    .venv/bin/python benchmarks/scale.py [--sizes 1x0,8x32,16x128,64x128] [--scrapes 300]
        [--write docs/performance.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    PID_RE,
    ROOT,
    child_env,
    cpu_ns,
    device_up,
    footprint,
    footprint_parts,
    free_port,
    load,
    machine,
    percentile,
    stop,
    wait_http,
    wakes,
    write_json,
    write_section,
)
from overhead import compare_poll, compare_poll_runs, scenario

from gpuprobe.daemon.core import config as config_mod
from gpuprobe.probes.sim.scenario import MAX_ALL_PROCESSES, MAX_DEVICES, MAX_PROCESSES

DEFAULT_SIZES = "1x0,8x32,16x128,64x128"
BEGIN, END = "<!-- BEGIN scale.py -->", "<!-- END scale.py -->"
HEADING = "## Scaling with the host (`benchmarks/scale.py`)"
# Both exporters poll at --interval: gpuprobe's default, 5 s. (At 1 s, nvitop-exporter's
# default, gpuprobe's 0.8 s deadline is missed at 64 x 128 on a 2-CPU machine, and its
# process collector never completes.)
INTERVAL = 5.0


def daemon_config(interval: float, max_processes: int | None = None,
                  poll_nice: int | None = None) -> dict[str, Any]:
    """gpuprobe's defaults, with the NVIDIA telemetry and process collectors at ``interval``
    (their deadline follows, at 0.8 of it) and, where given,
    exporter.max_processes_per_device and http.poll_nice."""
    conf: dict[str, Any] = {"collectors": {"nvidia": {"interval": f"{interval:g}s"},
                                           "nvidia_processes": {"interval": f"{interval:g}s"}}}
    if max_processes is not None:
        conf["exporter"] = {"max_processes_per_device": max_processes}
    if poll_nice is not None:
        conf["http"] = {"poll_nice": poll_nice}
    return conf


def exported_processes(procs: int, max_processes: int | None) -> int:
    """How many of a GPU's ``procs`` processes gpuprobe exports: at most
    exporter.max_processes_per_device (the largest by memory)."""
    cap = (config_mod.from_mapping({}).exporter.max_processes_per_device
           if max_processes is None else max_processes)
    return min(procs, cap)
LAUNCHER = Path(__file__).resolve().parent / "_nvitop_sim.py"
NVITOP_GPU_RE = re.compile(r'^gpu_utilization_Percentage\{[^}]*uuid="([^"]+)"', re.M)
NVITOP_PID_RE = re.compile(r'^process_info_info\{[^}]*pid="(\d+)"', re.M)
# Targets (issue 14)
STATIC_RATIO, P99_64X128_MS, POLL_RATIO_8X32, RSS_64X128_MB = 2.0, 5.0, 1.2, 120.0


# -- sizes ----------------------------------------------------------------------------------

def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"1x0,8x32"`` -> [(1, 0), (8, 32)]; ValueError with the reason."""
    sizes = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", part)
        if not m:
            raise ValueError(f"size {part.strip()!r} is not GPUSxPROCS (e.g. 8x32)")
        gpus, procs = int(m.group(1)), int(m.group(2))
        if not 1 <= gpus <= MAX_DEVICES:
            raise ValueError(f"size {part.strip()}: 1 to {MAX_DEVICES} GPUs")
        if procs > MAX_PROCESSES or gpus * procs > MAX_ALL_PROCESSES:
            raise ValueError(f"size {part.strip()}: at most {MAX_PROCESSES} processes a GPU "
                             f"and {MAX_ALL_PROCESSES} in all")
        sizes.append((gpus, procs))
    return sizes


# -- scraping -------------------------------------------------------------------------------

class Scraper:
    """GET /metrics on one kept-alive connection (reopened when the server closes it, as
    nvitop-exporter's HTTP/1.0 server does after each response), timed from the request to
    the last byte of the body."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def get(self, path: str = "/metrics") -> tuple[float, int | None, bytes]:
        t0 = time.perf_counter()
        try:
            self.conn.request("GET", path)
            r = self.conn.getresponse()
            body = r.read()
            status: int | None = r.status
        except (OSError, http.client.HTTPException):
            self.conn.close()
            return time.perf_counter() - t0, None, b""
        return time.perf_counter() - t0, status, body

    def close(self) -> None:
        self.conn.close()


def count_series(body: bytes) -> int:
    return sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))


def scrape_window(port: int, scrapes: int, gap: float, max_seconds: float) -> dict[str, Any]:
    """``scrapes`` GETs, ``gap`` apart, stopping early after ``max_seconds``."""
    client = Scraper(port)
    took: list[float] = []
    errors, body = 0, b""
    start = time.monotonic()
    try:
        for _ in range(scrapes):
            seconds, status, got = client.get()
            if status == 200:
                took.append(seconds)
                body = got
            else:
                errors += 1
            if time.monotonic() - start > max_seconds:
                break
            time.sleep(gap)
    finally:
        client.close()
    return {"scrapes": len(took), "errors": errors,
            "window_s": round(time.monotonic() - start, 2),
            "p50_ms": _ms(percentile(took, 50)), "p99_ms": _ms(percentile(took, 99)),
            "max_ms": _ms(max(took) if took else None), "body": body}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


# -- children -------------------------------------------------------------------------------

Ready = Callable[[str], "str | None"]  # None: settled; else what is still missing


def _missing(gpus_seen: int, gpus: int, pids_seen: int, procs: int) -> str | None:
    if gpus_seen == gpus and pids_seen >= procs:
        return None
    return f"{gpus_seen} of {gpus} GPUs' series, {pids_seen} of {procs} processes'"


def gpuprobe_ready(gpus: int, procs: int) -> Ready:
    """Every GPU has its gpuprobe_device_up series, ``procs`` processes on each (those
    exported) a pid-labelled one."""
    def ready(text: str) -> str | None:
        return _missing(len(device_up(text)), gpus, len(set(PID_RE.findall(text))),
                        gpus * procs)
    return ready


def nvitop_ready(gpus: int, procs: int) -> Ready:
    """Every GPU has its gpu_utilization series, every process its process_info."""
    def ready(text: str) -> str | None:
        return _missing(len(set(NVITOP_GPU_RE.findall(text))), gpus,
                        len(set(NVITOP_PID_RE.findall(text))), gpus * procs)
    return ready


def settle(port: int, proc: subprocess.Popen, ready: Ready,
           timeout: float) -> tuple[float, int]:
    """Until ``ready`` holds of the body and two scrapes a second apart count the same
    series: (seconds it took, series). Raises RuntimeError on timeout or if the child dies."""
    client = Scraper(port)
    start = time.monotonic()
    last, series, why = -1, 0, "no answer"
    try:
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with status {proc.returncode} while settling")
            _, status, body = client.get()
            if status == 200:
                series = count_series(body)
                missing = ready(body.decode("utf-8", "replace"))
                if missing is None and series == last:
                    return time.monotonic() - start, series
                why, last = missing or "series count still changing", series
            time.sleep(1.0)
    finally:
        client.close()
    raise RuntimeError(f"not settled within {timeout:.0f} s: {series} series, {why}")


def measure_child(cmd: list[str], port: int, ready: Ready | None,
                  args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """Start ``cmd`` (serving on ``port``), settle it, then an idle window and a scrape
    window: the figures, and the last body under the key ``body``."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(),
                                cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_http(url, proc, timeout=args.settle_timeout)
        try:
            settled_s, _ = (settle(port, proc, ready, args.settle_timeout) if ready
                            else (0.0, 0))
        except RuntimeError as e:
            raise RuntimeError(f"{e}; its last log line: {_last_line(log)}") from None
        c0, n0, t0 = _cpu(proc.pid), wakes(proc.pid), time.monotonic()
        time.sleep(args.idle)
        c1, n1, t1 = _cpu(proc.pid), wakes(proc.pid), time.monotonic()
        w = scrape_window(port, args.scrapes, args.gap, args.max_scrape_seconds)
        c2 = _cpu(proc.pid)
        _, main_rss, children_uss = footprint_parts(proc.pid)
        rss = main_rss + children_uss
        t2 = time.monotonic()
        body = w["body"]
        r = {**w, "settle_s": round(settled_s, 1), "series": count_series(body),
             "bytes": len(body),
             "cpu_s_per_min_idle": round((c1 - c0) / (t1 - t0) * 60, 3),
             # voluntary context switches of every thread, the serving process's included
             "wakes_per_min_idle": (round((n1 - n0) / (t1 - t0) * 60)
                                    if n0 is not None and n1 is not None else None),
             "cpu_s_per_min_scraping": round((c2 - c1) / (t2 - t1) * 60, 3),
             "rss_mb": round(rss / 1e6, 1), "children_uss_mb": round(children_uss / 1e6, 1)}
    finally:
        r_stop = stop(proc)
    r["stopped"] = r_stop
    if ready is not None and r["series"]:  # not of the static server, which polls nothing
        r["cpu_ms_per_min_per_series"] = round(r["cpu_s_per_min_idle"] * 1e3 / r["series"], 4)
    return r


def _cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children: nanosecond schedstat where the kernel has
    it (_harness.cpu_ns), else psutil's clock ticks."""
    ns = cpu_ns(pid)
    return ns / 1e9 if ns is not None else footprint(pid)[0]


def _last_line(log: Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "-"
    return lines[-1][:240] if lines else "-"


def nvitop_available() -> bool:
    return importlib.util.find_spec("nvitop_exporter") is not None


def measure_static(body: bytes, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """gpuprobe's HttpServer in a child process answering ``body`` for /metrics."""
    path = tmp / "static-body"
    path.write_bytes(body)
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-static", str(path),
           "--port", str(port)]
    r = measure_child(cmd, port, None, args, tmp / "static.log")
    r["same_bytes"] = r["bytes"] == len(body)
    return r


def serve_static(body_path: str, port: int) -> int:
    """The static arm's child: gpuprobe's HttpServer, its exposition replaced by one (a
    subclass of gpuprobe's, so the server's calls on it stay valid) whose render hands out a
    fixed body (and its gzip, compressed once); until SIGTERM."""
    import gzip

    from prometheus_client import CollectorRegistry

    from gpuprobe.daemon.export.exposition import CONTENT_TYPE, Exposition
    from gpuprobe.daemon.service.http import HttpServer

    body = Path(body_path).read_bytes()
    zipped = gzip.compress(body)

    class Static(Exposition):
        def render_parts(self, names: list[str] | None = None,
                         accept_encoding: str | None = None
                         ) -> tuple[list[bytes], list[tuple[str, str]]]:
            if accept_encoding and "gzip" in accept_encoding:
                return [zipped], [("Content-Type", CONTENT_TYPE),
                                  ("Content-Encoding", "gzip")]
            return [body], [("Content-Type", CONTENT_TYPE)]

    server = HttpServer("127.0.0.1", port, CollectorRegistry(auto_describe=True),
                        health=lambda: (True, {}), ready=lambda: (True, {}),
                        landing=lambda: "static\n")
    server.exposition = Static(server.registry)  # an empty registry: nothing to encode
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server.start()
    done.wait()
    server.stop()
    return 0


# -- one size -------------------------------------------------------------------------------

# A child that builds the simulation the daemon runs over, and nothing of the daemon, and
# prints its resident memory once every device's memory and process list have been read:
# the part of `run --simulate`'s RSS that is the simulation's, not gpuprobe's.
_SIM_ONLY = """
import gc, sys, psutil
from gpuprobe.probes.sim import Simulation
from gpuprobe.probes.sim.scenario import load
import gpuprobe.daemon.service.app, prometheus_client  # the daemon's imports, for a fair base
sim = Simulation(load(sys.argv[1]))
nvml = sim.nvml
nvml.nvmlInit()
for i in range(nvml.nvmlDeviceGetCount()):
    h = nvml.nvmlDeviceGetHandleByIndex(i)
    nvml.nvmlDeviceGetMemoryInfo(h)
    nvml.nvmlDeviceGetComputeRunningProcesses(h)
gc.collect()
print(psutil.Process().memory_info().rss)
sim.close()
"""


def measure_sim_rss(scen: Path) -> float | None:
    """MB resident in a process holding only the imports and the warmed simulation."""
    done = subprocess.run([sys.executable, "-c", _SIM_ONLY, str(scen)], capture_output=True,
                          text=True, timeout=300, env=child_env())
    try:
        return round(int(done.stdout.split()[-1]) / 1e6, 1)
    except (IndexError, ValueError):
        print(f"simulation-only RSS not measured: {done.stderr.strip()[-200:]}",
              file=sys.stderr)
        return None


def measure_size(gpus: int, procs: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"gpus": gpus, "procs": procs,
                           "gpuprobe_exports_procs": exported_processes(procs, args.max_processes)}
    with tempfile.TemporaryDirectory(prefix="gpuprobe-scale-") as tmp_name:
        tmp = Path(tmp_name)
        scen = tmp / "scenario.yaml"
        scen.write_text(yaml.safe_dump(scenario(gpus, procs)))
        conf = tmp / "config.yaml"
        conf.write_text(yaml.safe_dump(daemon_config(args.interval, args.max_processes,
                                                     args.poll_nice)))
        port = free_port()
        try:
            ours = measure_child(
                [sys.executable, "-m", "gpuprobe.daemon", "run", "--simulate", str(scen),
                 "--config", str(conf), "--listen", f"127.0.0.1:{port}"],
                port, gpuprobe_ready(gpus, exported_processes(procs, args.max_processes)),
                args, tmp / "gpuprobe.log")
        except RuntimeError as e:
            ours = {"error": str(e)}
            print(f"{gpus}x{procs}: gpuprobe not measured: {e}", file=sys.stderr)
        out["gpuprobe"] = ours
        out["sim_only_rss_mb"] = measure_sim_rss(scen)
        if "error" not in ours:
            static = measure_static(ours.pop("body"), args, tmp)
            static.pop("body")
            out["static"] = static
            if ours["p99_ms"] and static["p99_ms"]:
                out["static_ratio"] = round(ours["p99_ms"] / static["p99_ms"], 2)
        if args.nvitop and nvitop_available():
            port = free_port()
            missing = tmp / "missing.json"
            try:
                nv = measure_child(
                    [sys.executable, str(LAUNCHER), str(scen), str(missing), "--",
                     "--bind-address", "127.0.0.1", "--port", str(port),
                     "--hostname", "bench", "--interval", f"{args.interval:g}"],
                    port, nvitop_ready(gpus, procs), args, tmp / "nvitop.log")
                nv.pop("body")
                nv["function_not_found"] = json.loads(missing.read_text() or "[]")
            except RuntimeError as e:
                nv = {"error": str(e)}
                print(f"{gpus}x{procs}: nvitop-exporter not measured: {e}", file=sys.stderr)
            out["nvitop"] = nv
        else:
            why = ("--no-nvitop" if not args.nvitop
                   else "nvitop-exporter is not installed (pip install -e '.[bench]')")
            print(f"{gpus}x{procs}: nvitop-exporter arm skipped: {why}", file=sys.stderr)
            out["nvitop"] = {"skipped": why}
    try:
        out["poll"] = (compare_poll(gpus, procs, args.cycles) if args.poll_runs == 1
                       else compare_poll_runs(gpus, procs, args.cycles, args.poll_runs))
    except SystemExit as e:  # compare_poll's "the two arms make different calls"
        out["poll"] = {"same_calls": False, "error": str(e)}
    return out


# -- verdicts and table ---------------------------------------------------------------------

def verdicts(sizes: list[dict[str, Any]]) -> list[tuple[str, bool | None]]:
    """(target, met) for each target a size measured here applies to; met None: not
    measurable (an arm failed)."""
    out: list[tuple[str, bool | None]] = []
    for s in sizes:
        name = f"{s['gpus']} x {s['procs']}"
        ours = s["gpuprobe"]
        if "error" in ours:
            out.append((f"{name}: gpuprobe measured ({_short(ours['error'])})", None))
        ratio = s.get("static_ratio")
        out.append((f"{name}: scrape p99 within {STATIC_RATIO:g}x of the static server",
                    None if ratio is None else ratio <= STATIC_RATIO))
        poll = s["poll"]
        if not poll.get("same_calls"):
            out.append((f"{name}: poll arms make the same calls", False))
        if (s["gpus"], s["procs"]) == (8, 32):
            out.append((f"{name}: poll CPU at most {POLL_RATIO_8X32:g}x the bare calls",
                        poll["ratio"] <= POLL_RATIO_8X32 if "ratio" in poll else None))
        if (s["gpus"], s["procs"]) == (64, 128):
            p99 = ours.get("p99_ms")
            out.append((f"{name}: scrape p99 at most {P99_64X128_MS:g} ms",
                        None if p99 is None else p99 <= P99_64X128_MS))
            rss = ours.get("rss_mb")
            out.append((f"{name}: RSS under {RSS_64X128_MB:g} MB",
                        None if rss is None else rss < RSS_64X128_MB))
        nv = s.get("nvitop", {})
        if "skipped" in nv:
            continue
        if "error" in nv:
            out.append((f"{name}: nvitop-exporter measured ({_short(nv['error'])})", None))
            continue
        a, b = ours.get("cpu_ms_per_min_per_series"), nv.get("cpu_ms_per_min_per_series")
        out.append((f"{name}: gpuprobe ahead of nvitop-exporter on idle CPU per series",
                    None if a is None or b is None else a < b))
        a, b = ours.get("p99_ms"), nv.get("p99_ms")
        out.append((f"{name}: gpuprobe ahead of nvitop-exporter on scrape p99",
                    None if a is None or b is None else a < b))
    return out


def _short(text: str, n: int = 100) -> str:
    """An error for the table: its first ``n`` characters (the JSON keeps it whole)."""
    text = text.replace("|", "/")
    return text if len(text) <= n else text[:n] + "..."


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _less(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _serving(arm: dict[str, Any]) -> str:
    """The serving process's own share of an arm's memory, where it has one."""
    mb = arm.get("children_uss_mb")
    return f" ({mb:.0f} of it the serving process's own)" if mb else ""


def _kb(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def render_table(result: dict[str, Any]) -> str:
    sizes = result["sizes"]
    lines = [
        BEGIN,
        f"Measured by `{result['command']}` on {result['machine']}, "
        f"{result['date']} (load average {result['load_before']} before, "
        f"{result['load_after']} after). Both exporters poll every {result['interval']:g} s; "
        f"each arm scraped "
        f"{result['scrapes']} times {result['gap_ms']:g} ms apart on one connection (at most "
        f"{result['max_scrape_seconds']:g} s) after {result['idle_s']:g} s idle; CPU is the "
        f"process's and its children's, every thread's schedstat (ns), per minute of the idle "
        f"window and of the scrape window. "
        f"gpuprobe exports at most {result['max_processes_per_device']} processes per GPU "
        f"(exporter.max_processes_per_device; it polls them all), nvitop-exporter every "
        f"process. Poll CPU: medians of {result['cycles']} interleaved cycles, in "
        f"{result.get('poll_runs', 1)} fresh process(es), the run with the median ratio shown "
        f"(every run's ratio below the table).",
        "",
        "| GPUs x procs | series | body | scrape p50 / p99 | static p99 | ratio "
        "| poll CPU ours / bare | CPU s/min idle / scraping | CPU ms/min per series | RSS "
        "| imports + simulation alone | RSS less that |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sizes:
        o, st, poll = s["gpuprobe"], s.get("static", {}), s["poll"]
        poll_text = (f"{poll['ours_cpu_ms']:.1f} / {poll['bare_cpu_ms']:.1f} ms = "
                     f"{poll['ratio']:.2f}x ({poll['calls_per_cycle']} calls)"
                     if "ratio" in poll else f"failed: {poll.get('error', '?')[:60]}")
        if "error" in o:
            lines.append(f"| {s['gpus']} x {s['procs']} | not measured: {_short(o['error'])} "
                         f"| | | | | {poll_text} | | | | | |")
            continue
        lines.append(
            f"| {s['gpus']} x {s['procs']} | {o['series']:,} | {_kb(o['bytes'])} "
            f"| {_f(o['p50_ms'])} / {_f(o['p99_ms'])} ms | {_f(st['p99_ms'])} ms "
            f"| {_f(s.get('static_ratio'))}x | {poll_text} "
            f"| {o['cpu_s_per_min_idle']:.2f} / {o['cpu_s_per_min_scraping']:.2f} "
            f"| {_f(o.get('cpu_ms_per_min_per_series'), '{:.3f}')} | {o['rss_mb']:.0f} MB"
            f"{_serving(o)} "
            f"| {_f(s.get('sim_only_rss_mb'), '{:.0f}')} MB "
            f"| {_f(_less(o['rss_mb'], s.get('sim_only_rss_mb')), '{:+.0f}')} MB |")
    runs = [f"{s['gpus']} x {s['procs']}: {', '.join(f'{r:.2f}' for r in s['poll']['ratios'])}"
            for s in sizes if s["poll"].get("ratios")]
    if runs:
        lines += ["", "Poll CPU ratio of each fresh process, sorted: " + "; ".join(runs) + "."]
    nv_rows = [s for s in sizes if "skipped" not in s.get("nvitop", {"skipped": 1})]
    if nv_rows:
        lines += [
            "",
            "nvitop-exporter 1.7.2 over the same simulated GPUs, same scrapes:",
            "",
            "| GPUs x procs | series | body | scrape p50 / p99 (scrapes) "
            "| CPU s/min idle / scraping | CPU ms/min per series | RSS | settled after |",
            "|---|---|---|---|---|---|---|---|",
        ]
        missing: set[str] = set()
        for s in nv_rows:
            nv = s["nvitop"]
            if "error" in nv:
                lines.append(f"| {s['gpus']} x {s['procs']} | not measured: "
                             f"{_short(nv['error'])} "
                             "| | | | | | |")
                continue
            missing.update(nv.get("function_not_found", []))
            lines.append(
                f"| {s['gpus']} x {s['procs']} | {nv['series']:,} | {_kb(nv['bytes'])} "
                f"| {_f(nv['p50_ms'])} / {_f(nv['p99_ms'])} ms ({nv['scrapes']}) "
                f"| {nv['cpu_s_per_min_idle']:.2f} / {nv['cpu_s_per_min_scraping']:.2f} "
                f"| {_f(nv.get('cpu_ms_per_min_per_series'), '{:.3f}')} "
                f"| {nv['rss_mb']:.0f} MB | {nv['settle_s']:.0f} s |")
        if missing:
            lines += ["", "NVML functions nvitop called that the simulated library does not "
                      "implement (FUNCTION_NOT_FOUND, which nvitop exports as N/A/NaN): "
                      + ", ".join(f"`{m}`" for m in sorted(missing)) + "."]
    else:
        skipped = {s.get("nvitop", {}).get("skipped") for s in sizes}
        lines += ["", f"nvitop-exporter arm skipped: {', '.join(sorted(map(str, skipped)))}."]
    lines += ["", "| Target (issue 14) | |", "|---|---|"]
    for name, met in result["verdicts"]:
        word = "meets" if met else "MISSES" if met is False else "not measured"
        lines.append(f"| {name} | {word} |")
    lines.append(END)
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------

def run(args: argparse.Namespace, sizes: list[tuple[int, int]]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "command": ".venv/bin/python benchmarks/scale.py" + "".join(
            f" {a}" for a in sys.argv[1:]),
        "machine": machine(), "date": time.strftime("%Y-%m-%d"), "load_before": load(),
        "interval": args.interval,
        "max_processes_per_device": exported_processes(4096, args.max_processes),
        "scrapes": args.scrapes, "gap_ms": args.gap * 1e3, "idle_s": args.idle,
        "max_scrape_seconds": args.max_scrape_seconds, "cycles": args.cycles,
        "poll_runs": args.poll_runs, "sizes": []}
    for gpus, procs in sizes:
        print(f"{gpus}x{procs} ...", file=sys.stderr, flush=True)
        result["sizes"].append(measure_size(gpus, procs, args))
    result["load_after"] = load()
    result["verdicts"] = verdicts(result["sizes"])
    result["ok"] = all(met for _, met in result["verdicts"])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES,
                    help=f"GPUSxPROCS,... (default {DEFAULT_SIZES})")
    ap.add_argument("--scrapes", type=int, default=300, help="scrapes per arm (default 300)")
    ap.add_argument("--interval", type=float, default=INTERVAL,
                    help=f"both exporters' poll interval, seconds (default {INTERVAL:g})")
    ap.add_argument("--gap", type=float, default=None,
                    help="seconds between scrapes (default: 3 intervals over the scrapes, "
                         "at least 0.01)")
    ap.add_argument("--idle", type=float, default=None,
                    help="seconds of the idle CPU window (default 3 intervals)")
    ap.add_argument("--max-scrape-seconds", type=float, default=90.0,
                    help="cut an arm's scrape window short after this (default 90)")
    ap.add_argument("--settle-timeout", type=float, default=180.0)
    ap.add_argument("--cycles", type=int, default=20, help="poll cycles compared (default 20)")
    ap.add_argument("--poll-runs", type=int, default=5,
                    help="fresh processes the poll comparison runs in, the median reported "
                         "(default 5)")
    ap.add_argument("--max-processes-per-device", dest="max_processes", type=int,
                    default=None, help="gpuprobe's exporter.max_processes_per_device (default: "
                    "its own default, 32; nvitop-exporter exports every process)")
    ap.add_argument("--poll-nice", type=int, default=None,
                    help="gpuprobe's http.poll_nice, how many nice steps its polls run below "
                    "its serving process (default: its own default, 10)")
    ap.add_argument("--no-nvitop", dest="nvitop", action="store_false",
                    help="skip the nvitop-exporter arm")
    ap.add_argument("--write", metavar="FILE", help="put the table in this markdown file")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    ap.add_argument("--serve-static", metavar="BODY", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_static:
        return serve_static(args.serve_static, args.port)
    try:
        sizes = parse_sizes(args.sizes)
        for name in ("scrapes", "cycles", "poll_runs"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if args.max_processes is not None and not 0 <= args.max_processes <= 4096:
            raise ValueError("--max-processes-per-device must be 0 to 4096")
        if args.poll_nice is not None and not 0 <= args.poll_nice <= 19:
            raise ValueError("--poll-nice must be 0 to 19")
        if not 0.25 <= args.interval <= 60:  # nvitop-exporter refuses under 0.25 s
            raise ValueError("--interval must be 0.25 to 60 seconds")
        if args.gap is None:
            args.gap = max(0.01, 3 * args.interval / args.scrapes)
        if args.idle is None:
            args.idle = 3 * args.interval
        for name in ("gap", "idle", "max_scrape_seconds", "settle_timeout"):
            if not getattr(args, name) >= 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
    except ValueError as e:
        print(f"scale.py: {e}", file=sys.stderr)
        return 2
    result = run(args, sizes)
    text = render_table(result)
    print(text)
    write_json(args.json, result)
    if args.write:
        write_section(Path(args.write), BEGIN, END, text, heading=HEADING)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
