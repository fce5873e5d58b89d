"""Where an idle daemon's CPU goes: CPU per thread, exposition encodes and garbage
collections over a window, for a scale.py size, in one process.

The daemon runs in process (``http.separate_process: false``, so the serving thread is
counted here too), over the scenario and configuration that ``benchmarks/scale.py`` gives
the size, and is left alone: no scrapes. Per-thread CPU comes from
``/proc/self/task/<tid>/schedstat`` (nanoseconds; clock ticks from ``stat`` where a kernel
has no schedstat), named by the Python thread running on
each; a thread pool's drivers (``relay-N``) are listed one by one. Garbage collections are
timed in the thread that ran them (``gc.callbacks``). This is how the encodes per poll cycle
and the collector thresholds of issue 14 were found; it is a profile, not a target.

    .venv/bin/python benchmarks/threads.py [--size 64x128] [--window 60] [--warmup 15]
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import task_ns, task_wakes
from overhead import scenario
from scale import daemon_config, parse_sizes

from gpuprobe.daemon.core import config as config_mod
from gpuprobe.daemon.service.app import Daemon
from gpuprobe.probes.sim import Simulation
from gpuprobe.probes.sim.scenario import parse


def thread_stats() -> dict[str, tuple[float, int]]:
    """(CPU seconds, wakes) so far of each live thread of this process, by thread name.
    CPU is from the thread's schedstat in nanoseconds (_harness.task_ns) where the kernel
    has it, else from its ``stat`` in 10 ms clock ticks: at 1 x 0, where most threads spend
    a few ms a minute, the ticks summed to 0.04 s/min and schedstat to 0.10 in the next run.
    Wakes are its voluntary context switches (_harness.task_wakes)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, tuple[float, int]] = {}
    for tid in os.listdir("/proc/self/task"):
        ns = task_ns("self", tid)
        if ns is not None:
            seconds = ns / 1e9
        else:
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    text = f.read()
            except OSError:
                continue  # ended meanwhile
            fields = text[text.rindex(")") + 2:].split()
            seconds = (int(fields[11]) + int(fields[12])) / tick
        name = names.get(int(tid), f"tid {tid}")
        cpu, woken = out.get(name, (0.0, 0))
        out[name] = (cpu + seconds, woken + (task_wakes("self", tid) or 0))
    return out


def wake_cost(times: int = 20) -> float:
    """The median CPU seconds a thread spends on one bare wake: ``time.thread_time`` around
    a 10 ms ``time.sleep``. It is the floor under what each wake of a daemon thread costs."""
    costs = []
    for _ in range(times):
        t0 = time.thread_time()
        time.sleep(0.01)
        costs.append(time.thread_time() - t0)
    return statistics.median(costs)


class GcTimes:
    """Collections and their thread CPU, by generation, while installed."""

    def __init__(self) -> None:
        self.by_gen = {g: [0, 0.0] for g in range(3)}
        self._local = threading.local()

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._local.t0 = time.thread_time()
        else:
            row = self.by_gen[info["generation"]]
            row[0] += 1
            row[1] += time.thread_time() - getattr(self._local, "t0", time.thread_time())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="64x128", help="GPUSxPROCS (default 64x128)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds measured (default 60)")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds first (default 15)")
    args = ap.parse_args()
    try:
        ((gpus, procs),) = parse_sizes(args.size)
    except ValueError as e:
        print(f"--size: {e}", file=sys.stderr)
        return 2
    if not (args.window > 0 and args.warmup >= 0):
        print("--window must be positive and --warmup not negative", file=sys.stderr)
        return 2
    conf = daemon_config(5.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        conf["listen"] = f"127.0.0.1:{s.getsockname()[1]}"
    conf["http"] = {"separate_process": False}
    daemon = Daemon(config_mod.from_mapping(conf), Simulation(parse(scenario(gpus, procs))))
    daemon.start()
    try:
        time.sleep(args.warmup)
        gc_times = GcTimes()
        gc.callbacks.append(gc_times)
        encodes0 = daemon.exposition.encodes if daemon.exposition else 0
        before, t0 = thread_stats(), time.monotonic()
        time.sleep(args.window)
        after, took = thread_stats(), time.monotonic() - t0
        gc.callbacks.remove(gc_times)
        encodes = (daemon.exposition.encodes if daemon.exposition else 0) - encodes0
    finally:
        daemon.stop()
    per_min = 60.0 / took
    rows = sorted(((cpu - before.get(k, (0.0, 0))[0]) * per_min, k)
                  for k, (cpu, _) in after.items())
    wakes = {k: (n - before.get(k, (0.0, 0))[1]) * per_min for k, (_, n) in after.items()}
    print(f"{gpus} x {procs}, idle, {took:.0f} s: CPU seconds per minute by thread "
          f"(and its wakes a minute)")
    for seconds, name in reversed(rows):
        if seconds > 0:
            print(f"  {seconds:7.3f}  {name} ({wakes.get(name, 0):.0f})")
    print(f"  {sum(s for s, _ in rows):7.3f}  all threads ({sum(wakes.values()):.0f})")
    print(f"a bare wake (a 10 ms time.sleep) costs {wake_cost() * 1e3:.3f} ms of CPU here")
    print(f"snapshot encodes: {encodes} ({encodes * per_min:.1f} a minute)")
    for g, (n, cpu) in gc_times.by_gen.items():
        print(f"gc generation {g}: {n} collections, {cpu * per_min:.3f} s CPU a minute")
    return 0


if __name__ == "__main__":
    sys.exit(main())
