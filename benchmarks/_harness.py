"""What the reliability benchmarks (soak.py, faults.py) share: a daemon child on a loopback
port, scrapes of /metrics, samples of a process's RSS, fds and threads from /proc, log
counting, percentiles and the table they print; and what every benchmark with --write shares:
its section of a markdown file (write_section, print_table)."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
SERIES_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", re.M)
PID_RE = re.compile(r'[{,]pid="(\d+)"')
UP_RE = re.compile(r'^gpuprobe_device_up\{([^}]*)\}\s+(\S+)', re.M)
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    """One line naming the machine the figures come from."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs{f' ({model})' if model else ''}, Python "
            f"{sys.version.split()[0]}, {os.uname().sysname} {os.uname().release}")


def load() -> float:
    """The 1-minute load average: on a shared machine, what else was running."""
    return round(os.getloadavg()[0], 2)


@dataclass
class Scrape:
    t: float  # monotonic time the request started
    seconds: float
    status: int | None  # None: no HTTP answer (refused, timed out, reset)
    text: str = ""
    error: str = ""


def scrape(url: str, timeout: float = 10.0) -> Scrape:
    """GET ``url`` and read the whole body, timed."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read().decode("utf-8", "replace")
            return Scrape(t0, time.monotonic() - t0, r.status, body)
    except urllib.error.HTTPError as e:
        return Scrape(t0, time.monotonic() - t0, e.code, error=f"HTTP {e.code}")
    except (OSError, ValueError) as e:
        return Scrape(t0, time.monotonic() - t0, None, error=type(e).__name__ + f": {e}"[:120])


def series(text: str) -> list[tuple[str, dict[str, str], str]]:
    """(name, labels, value) of every sample in an exposition."""
    out = []
    for m in SERIES_RE.finditer(text):
        labels = dict(LABEL_RE.findall(m.group(2) or ""))
        out.append((m.group(1), labels, m.group(3)))
    return out


def device_up(text: str) -> list[dict[str, Any]]:
    """{uuid, vendor, gpu, up} of each gpuprobe_device_up sample."""
    out = []
    for m in UP_RE.finditer(text):
        labels = dict(LABEL_RE.findall(m.group(1)))
        out.append({"uuid": labels.get("uuid", ""), "vendor": labels.get("vendor"),
                    "gpu": labels.get("gpu"), "up": float(m.group(2))})
    return out


def footprint(pid: int) -> tuple[float, int]:
    """CPU seconds and resident bytes of a process with its children (gpuprobe's serving
    process): its RSS plus what each child holds alone (USS: the pages it shares with the
    process it was forked from are counted once). Raises psutil.NoSuchProcess once gone."""
    cpu, rss, children = footprint_parts(pid)
    return cpu, rss + children


def footprint_parts(pid: int) -> tuple[float, int, int]:
    """:func:`footprint` in parts: CPU seconds (children included), the process's RSS, and
    its children's USS."""
    p = psutil.Process(pid)
    t = p.cpu_times()
    cpu, rss, children = t.user + t.system, p.memory_info().rss, 0
    for c in p.children(recursive=True):
        try:
            ct = c.cpu_times()
            cpu, children = cpu + ct.user + ct.system, children + c.memory_full_info().uss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return cpu, rss, children


def task_ns(pid: int | str, tid: int | str) -> int | None:
    """Nanoseconds one thread has been on the CPU (``/proc/<pid>/task/<tid>/schedstat``);
    None where it has ended or the kernel has no schedstat."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def task_wakes(pid: int | str, tid: int | str) -> int | None:
    """How often one thread went to sleep and was woken so far (its voluntary context
    switches, ``/proc/<pid>/task/<tid>/status``); None once it has ended."""
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _tasks(pid: int) -> list[tuple[int, str]] | None:
    """(pid, tid) of every live thread of ``pid`` and of its children; None once gone."""
    try:
        pids = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return None
    out = []
    for p in pids:
        try:
            out += [(p, tid) for tid in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue  # ended meanwhile
    return out


def cpu_ns(pid: int) -> int | None:
    """Nanoseconds on the CPU of a process's live threads and its children's, summed from
    each thread's schedstat (:func:`task_ns`); None where the process is gone or the kernel
    has no schedstat. ``footprint``'s CPU (utime + stime) moves in clock ticks (10 ms), which
    is a third of what an idle one-GPU daemon spends in 15 s. A thread or child that ends
    between two readings takes its time with it (as psutil's children figure does): the
    daemons measured keep their threads (pools) for their life."""
    tasks = _tasks(pid)
    if tasks is None or not os.path.exists("/proc/self/schedstat"):
        return None
    return sum(ns for p, tid in tasks if (ns := task_ns(p, tid)) is not None)


def wakes(pid: int) -> int | None:
    """Voluntary context switches so far of a process's live threads and its children's
    (:func:`task_wakes`); None once the process is gone."""
    tasks = _tasks(pid)
    if tasks is None:
        return None
    return sum(n for p, tid in tasks if (n := task_wakes(p, tid)) is not None)


def proc_sample(pid: int) -> dict[str, int] | None:
    """Resident bytes (:func:`footprint`'s), open fds and threads of a live process, from
    /proc; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        _, rss = footprint(pid)
    except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss": rss, "fds": fds, "threads": int(fields["Threads"])}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0-100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """(slope, intercept) of the least-squares line; None with fewer than 3 points."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    return slope, my - slope * mx


@dataclass
class LogCount:
    """Lines of a daemon log: all, ERROR-level, Traceback starts, and the first few of each."""

    lines: int = 0
    errors: int = 0
    warnings: int = 0
    tracebacks: int = 0
    examples: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, path: Path, keep: int = 5) -> LogCount:
        c = cls()
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return c
        for line in text.splitlines():
            c.lines += 1
            bad = False
            if re.search(r"\bERROR\b|\bCRITICAL\b", line):
                c.errors += 1
                bad = True
            if re.search(r"\bWARNING\b", line):
                c.warnings += 1
            if line.startswith("Traceback"):
                c.tracebacks += 1
                bad = True
            if bad and len(c.examples) < keep:
                c.examples.append(line[:200])
        return c


def child_env() -> dict[str, str]:
    """The environment for a daemon child: no systemd socket, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until ``url`` answers 200; raises if the child exits or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with status {proc.returncode} before it was ready")
        if scrape(url, timeout=2).status == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> dict[str, Any]:
    """SIGTERM, then SIGKILL after ``timeout``: how it ended and how long it took."""
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
        killed = False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        killed = True
    return {"returncode": proc.returncode, "stop_seconds": round(time.monotonic() - t0, 2),
            "killed": killed}


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n",
                              encoding="utf-8")


def write_section(path: Path, begin: str, end: str, text: str, heading: str = "") -> None:
    """Put ``text`` (which starts with ``begin`` and ends with ``end``) in place of the part
    of the markdown file ``path`` between those markers, or append it (under ``heading``, a
    markdown heading line, where one is given)."""
    doc = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in doc:
        head, _, rest = doc.partition(begin)
        doc = head + text + rest.partition(end)[2]
    else:
        doc += "\n" + (heading + "\n\n" if heading else "") + text + "\n"
    path.write_text(doc, encoding="utf-8")


def print_table(text: str, write: str | None, begin: str, end: str) -> int:
    """Print a benchmark's table and, with ``--write FILE``, put it in that markdown file
    between ``begin`` and ``end``; 0, the exit status."""
    print(text)
    if write:
        write_section(Path(write), begin, end, text)
    return 0
