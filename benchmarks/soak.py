"""Soak: `gpuprobe run --simulate` for many simulated hours with heavy process churn.

The daemon runs as a child process, as in production, on a generated scenario (mixed NVIDIA
and AMD GPUs) at a high time acceleration. Each GPU has a set of short-lived jobs; the
scenario repeats every cycle and its jobs come back with new pids (the simulation's
``duration``: a pid moves up by 100,000 per cycle), so thousands of distinct pids pass
through the process collectors, the /proc lookups and the leak detector. Every second the
benchmark scrapes /metrics and samples the daemon's RSS, open fds and threads from /proc.

Reported: RSS at start, after warm-up and at the end; RSS growth from a least-squares line
after warm-up, per simulated hour, per wall minute and per 1,000 new pids; fds and threads
min/max; distinct pids seen on /metrics; series count range; scrape latency p50/p99 and
failures; ERROR and Traceback lines in the daemon's log; how the daemon stopped.

Growth per simulated hour depends on the acceleration (fewer polls per simulated hour when it
is higher); the per-wall-minute and per-1,000-pids figures do not.

    .venv/bin/python benchmarks/soak.py --quick              # smoke test, about 40 s
    .venv/bin/python benchmarks/soak.py --json soak.json     # 100 simulated hours, ~3 min
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    PID_RE,
    ROOT,
    LogCount,
    child_env,
    fmt_ms,
    free_port,
    linear_fit,
    load,
    machine,
    percentile,
    proc_sample,
    scrape,
    series,
    stop,
    table,
    wait_http,
    write_json,
)

DEVICES = (  # vendor, model, architecture, memory
    ("nvidia", "NVIDIA H100 80GB HBM3", "hopper", "80GiB"),
    ("nvidia", "NVIDIA H100 80GB HBM3", "hopper", "80GiB"),
    ("nvidia", "NVIDIA A100-SXM4-80GB", "ampere", "80GiB"),
    ("amd", "AMD Instinct MI300X", "cdna3", "192GiB"),
)
PATTERNS = (
    {"pattern": "constant", "size": "2GiB", "noise": "32MiB"},
    {"pattern": "leak", "base": "1GiB", "rate": "50MiB/min"},
    {"pattern": "sawtooth", "low": "1GiB", "high": "4GiB", "period": "5m"},
    {"pattern": "warmup", "start": "512MiB", "plateau": "3GiB", "ramp": "2m"},
)


def scenario(acceleration: float, cycle: float, life: float, jobs: int) -> dict[str, Any]:
    """Each GPU: ``jobs`` jobs a cycle (scenario seconds), each living ``life``, their
    starts spread evenly over the cycle; the scenario repeats with new pids."""
    devices = []
    for d, (vendor, model, arch, memory) in enumerate(DEVICES):
        procs = []
        for j in range(jobs):
            start = j * (cycle - life) / jobs
            p: dict[str, Any] = {
                "pid": 10_000 + d * 1000 + j, "name": f"job{j % 9}_{vendor}",
                "start": round(start, 3), "end": round(start + life, 3),
                "utilization": round(0.9 / max(1, jobs * life / cycle), 4),
                "memory": PATTERNS[j % len(PATTERNS)]}
            if j % 3 == 0:
                p["container"] = f"{d:02x}{j:04x}".ljust(64, "c")
            if j % 6 == 0:
                p["pod"] = f"00000000-0000-4000-8000-{d:04x}{j:08x}"
            procs.append(p)
        devices.append({"vendor": vendor, "model": model, "architecture": arch,
                        "memory": memory, "processes": procs})
    return {"name": "soak", "seed": 7, "time_acceleration": acceleration,
            "duration": round(cycle, 3), "devices": devices}


def config(process_interval: float) -> dict[str, Any]:
    """Defaults, except the process collectors poll often enough to see short jobs."""
    p = {"interval": f"{process_interval}s"}
    return {"log_level": "info",
            "collectors": {"nvidia_processes": p, "amd_processes": p,
                           "memory_leaks": {"interval": f"{process_interval / 2}s"}}}


def run(hours: float, wall: float, jobs: int, life_wall: float, cycle_wall: float,
        process_interval: float, every: float, warmup: float) -> dict[str, Any]:
    acceleration = hours * 3600 / wall
    scen = scenario(acceleration, cycle_wall * acceleration, life_wall * acceleration, jobs)
    tmp = Path(tempfile.mkdtemp(prefix="gpuprobe-soak-"))
    (tmp / "scenario.yaml").write_text(yaml.safe_dump(scen), encoding="utf-8")
    (tmp / "config.yaml").write_text(yaml.safe_dump(config(process_interval)), encoding="utf-8")
    log_path = tmp / "daemon.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "gpuprobe.daemon", "run", "--config", str(tmp / "config.yaml"),
           "--simulate", str(tmp / "scenario.yaml"), "--listen", f"127.0.0.1:{port}"]
    samples: list[dict[str, Any]] = []
    pids: set[str] = set()
    load_start = load()
    with open(log_path, "w") as log:
        t_launch = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=child_env())
        try:
            wait_http(url + "/readyz", proc)
            ready_s = time.monotonic() - t_launch
            t0 = time.monotonic()
            next_at = t0
            while time.monotonic() - t0 < wall and proc.poll() is None:
                s = scrape(url + "/metrics")
                p = proc_sample(proc.pid)
                if p is None:
                    break
                seen = set(PID_RE.findall(s.text)) if s.status == 200 else set()
                pids |= seen
                samples.append({"t": round(s.t - t0, 3),
                                "sim_hours": round((s.t - t0) * acceleration / 3600, 4),
                                "status": s.status, "scrape_seconds": round(s.seconds, 5),
                                "series": len(series(s.text)) if s.status == 200 else None,
                                "pids_now": len(seen), "pids_total": len(pids), **p})
                next_at += every
                time.sleep(max(0.0, next_at - time.monotonic()))
            crashed = proc.poll()
        finally:
            ended = stop(proc)
    logs = LogCount.of(log_path)
    r = summarize(samples, acceleration, hours, wall, warmup, jobs, ready_s, crashed, ended,
                  logs, {"scenario": scen, "config": config(process_interval),
                         "command": cmd, "log": str(log_path)})
    return {"load_start": load_start, "load_end": load(), **r}


def summarize(samples: list[dict[str, Any]], acceleration: float, hours: float, wall: float,
              warmup: float, jobs: int, ready_s: float, crashed: int | None,
              ended: dict[str, Any], logs: LogCount, setup: dict[str, Any]) -> dict[str, Any]:
    ok = [s for s in samples if s["status"] == 200]
    after = [s for s in samples if s["t"] >= warmup * wall] or samples
    fit = linear_fit([s["t"] for s in after], [float(s["rss"]) for s in after])
    per_wall_s = fit[0] if fit else None
    pid_fit = linear_fit([s["t"] for s in after], [float(s["pids_total"]) for s in after])
    pids_per_s = pid_fit[0] if pid_fit else None
    lat = [s["scrape_seconds"] for s in ok]
    pick = (lambda key, f: f(s[key] for s in samples)) if samples else (lambda key, f: None)
    return {
        "machine": machine(),
        "simulated_hours": hours, "wall_seconds": wall, "time_acceleration": acceleration,
        "simulated_hours_run": samples[-1]["sim_hours"] if samples else 0.0,
        "gpus": len(DEVICES), "jobs_per_gpu_per_cycle": jobs, "warmup_fraction": warmup,
        "ready_seconds": round(ready_s, 2),
        "samples": len(samples), "scrapes_ok": len(ok), "scrapes_failed": len(samples) - len(ok),
        "rss_start": samples[0]["rss"] if samples else None,
        "rss_after_warmup": after[0]["rss"] if after else None,
        "rss_end": samples[-1]["rss"] if samples else None,
        "rss_max": pick("rss", max),
        "rss_growth_per_sim_hour": None if per_wall_s is None
        else per_wall_s * 3600 / acceleration,
        "rss_growth_per_wall_minute": None if per_wall_s is None else per_wall_s * 60,
        "rss_growth_per_1000_pids": None if not per_wall_s or not pids_per_s
        else per_wall_s / pids_per_s * 1000,
        "fds_min": pick("fds", min), "fds_max": pick("fds", max),
        "threads_min": pick("threads", min), "threads_max": pick("threads", max),
        "distinct_pids": samples[-1]["pids_total"] if samples else 0,
        "series_min": min((s["series"] for s in ok), default=None),
        "series_max": max((s["series"] for s in ok), default=None),
        "scrape_p50_seconds": percentile(lat, 50), "scrape_p99_seconds": percentile(lat, 99),
        "scrape_max_seconds": max(lat, default=None),
        "daemon_exited_during_run": crashed, "stop": ended,
        "log_lines": logs.lines, "log_warnings": logs.warnings, "log_errors": logs.errors,
        "log_tracebacks": logs.tracebacks, "log_examples": logs.examples,
        "setup": setup, "series_samples": samples,
    }


def _kb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024:+.1f} KB"


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def report(r: dict[str, Any]) -> str:
    rows = [
        ("machine", r["machine"]),
        ("load average at start / end", f"{r['load_start']} / {r['load_end']}"),
        ("run", f"{r['simulated_hours_run']:.1f} simulated h in {r['wall_seconds']:.0f} s wall "
                f"(x{r['time_acceleration']:.0f}), {r['gpus']} GPUs, "
                f"{r['jobs_per_gpu_per_cycle']} jobs/GPU/cycle"),
        ("ready after", f"{r['ready_seconds']:.1f} s"),
        ("RSS start / after warm-up / end / max",
         f"{_mb(r['rss_start'])} / {_mb(r['rss_after_warmup'])} / {_mb(r['rss_end'])} / "
         f"{_mb(r['rss_max'])}"),
        ("RSS growth (fit after warm-up)",
         f"{_kb(r['rss_growth_per_sim_hour'])}/simulated h, "
         f"{_kb(r['rss_growth_per_wall_minute'])}/wall min, "
         f"{_kb(r['rss_growth_per_1000_pids'])}/1000 pids"),
        ("fds min-max", f"{r['fds_min']}-{r['fds_max']}"),
        ("threads min-max", f"{r['threads_min']}-{r['threads_max']}"),
        ("distinct pids seen", str(r["distinct_pids"])),
        ("series min-max", f"{r['series_min']}-{r['series_max']}"),
        ("scrape p50 / p99 / max", f"{fmt_ms(r['scrape_p50_seconds'])} / "
                                   f"{fmt_ms(r['scrape_p99_seconds'])} / "
                                   f"{fmt_ms(r['scrape_max_seconds'])}"),
        ("scrapes ok / failed", f"{r['scrapes_ok']} / {r['scrapes_failed']}"),
        ("log lines / warnings / errors / tracebacks",
         f"{r['log_lines']} / {r['log_warnings']} / {r['log_errors']} / {r['log_tracebacks']}"),
        ("daemon exited during run", "no" if r["daemon_exited_during_run"] is None
         else f"yes, status {r['daemon_exited_during_run']}"),
        ("stop (SIGTERM)", f"status {r['stop']['returncode']} after "
                           f"{r['stop']['stop_seconds']} s"
                           + (", had to be killed" if r["stop"]["killed"] else "")),
        ("daemon log", r["setup"]["log"]),
    ]
    out = table(rows)
    if r["log_examples"]:
        out += "\nfirst error lines:\n" + "\n".join(f"  {x}" for x in r["log_examples"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=100.0, help="simulated hours (default 100)")
    ap.add_argument("--wall", type=float, default=180.0, help="wall seconds (default 180)")
    ap.add_argument("--jobs", type=int, default=48, help="jobs per GPU per cycle (default 48)")
    ap.add_argument("--life", type=float, default=2.6,
                    help="wall seconds each job lives (default 2.6)")
    ap.add_argument("--cycle", type=float, default=7.0,
                    help="wall seconds per scenario cycle (default 7)")
    ap.add_argument("--process-interval", type=float, default=2.0,
                    help="process collectors' interval, s (default 2)")
    ap.add_argument("--every", type=float, default=1.0, help="sample period, s (default 1)")
    ap.add_argument("--warmup", type=float, default=0.2,
                    help="share of the run left out of the fit (default 0.2)")
    ap.add_argument("--quick", action="store_true", help="10 simulated hours in 30 s")
    ap.add_argument("--json", metavar="FILE", help="write every figure and sample as JSON")
    args = ap.parse_args()
    if args.quick:
        args.hours, args.wall = 10.0, 30.0
    if not 0 < args.life < args.cycle:
        ap.error("--life must be positive and shorter than --cycle")
    r = run(args.hours, args.wall, args.jobs, args.life, args.cycle, args.process_interval,
            args.every, args.warmup)
    r["argv"] = sys.argv[1:]
    print(report(r))
    write_json(args.json, r)
    bad = r["daemon_exited_during_run"] is not None or r["scrapes_ok"] == 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
