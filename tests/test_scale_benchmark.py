"""benchmarks/scale.py at tiny sizes, with few scrapes: the figures' structure, the static
server serving the daemon's byte count, the poll arms making the same calls, the table and
its --write section, and the nvitop-exporter arm (skipped cleanly where it is absent, run
at 1 x 2 where it is installed). No timing is asserted: these are checks of the benchmark,
not of the daemon's speed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from .conftest import load_benchmark

scale = load_benchmark("scale")
FAST = ["--scrapes", "5", "--gap", "0.005", "--idle", "0.3", "--cycles", "1", "--poll-runs", "1",
        "--interval", "1", "--settle-timeout", "60"]


def _args(**kw) -> argparse.Namespace:
    base = {"scrapes": 5, "gap": 0.005, "idle": 0.3, "max_scrape_seconds": 10.0,
            "settle_timeout": 60.0, "cycles": 1, "poll_runs": 1, "nvitop": True, "interval": 1.0,
            "max_processes": None, "poll_nice": None}
    return argparse.Namespace(**{**base, **kw})


def test_parse_sizes() -> None:
    assert scale.parse_sizes("1x0, 8x32,64x128") == [(1, 0), (8, 32), (64, 128)]
    for bad in ("8", "0x2", "65x1", "1x1025", "64x129", "8x-1", ""):
        with pytest.raises(ValueError):
            scale.parse_sizes(bad)


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert scale.main(["--sizes", "8by32"]) == 2
    assert scale.main(["--scrapes", "0"]) == 2
    assert scale.main(["--poll-nice", "20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("scale.py: ") for line in err)


def test_poll_nice_reaches_the_daemon_config() -> None:
    assert scale.daemon_config(5, None, 0)["http"] == {"poll_nice": 0}
    assert "http" not in scale.daemon_config(5)  # gpuprobe's own default


def test_tiny_run_without_nvitop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(scale, "nvitop_available", lambda: False)
    out, doc = tmp_path / "out.json", tmp_path / "perf.md"
    doc.write_text("# Performance\n\nprose\n")
    rc = scale.main(["--sizes", "1x0,2x2", *FAST, "--json", str(out), "--write", str(doc)])
    assert rc in (0, 1)  # 1: a target missed, which at these sizes proves nothing
    captured = capsys.readouterr()
    r = json.loads(out.read_text())
    assert [(s["gpus"], s["procs"]) for s in r["sizes"]] == [(1, 0), (2, 2)]
    assert r["ok"] == (rc == 0)
    for s in r["sizes"]:
        ours, static, poll = s["gpuprobe"], s["static"], s["poll"]
        for arm in (ours, static):
            assert arm["scrapes"] == 5 and arm["errors"] == 0
            assert arm["p50_ms"] > 0 and arm["p99_ms"] >= arm["p50_ms"]
            assert arm["rss_mb"] > 0 and arm["cpu_s_per_min_scraping"] >= 0
            assert arm["wakes_per_min_idle"] >= 0  # present; 0.3 s may see none
            assert 0 <= arm["children_uss_mb"] < arm["rss_mb"]
        # the daemon's serving process is counted; the static server has none
        assert ours["children_uss_mb"] > 0 and static["children_uss_mb"] == 0
        assert ours["series"] > 100 and ours["cpu_ms_per_min_per_series"] >= 0
        # the simulation's own share of the daemon's memory, measured in a process of its own
        assert 0 < s["sim_only_rss_mb"] < ours["rss_mb"] + 20
        # the static server served the daemon's body, byte for byte the same size
        assert static["bytes"] == ours["bytes"] and static["same_bytes"]
        assert static["series"] == ours["series"]
        assert s["static_ratio"] == pytest.approx(ours["p99_ms"] / static["p99_ms"], abs=0.01)
        # the poll arms made the same calls, process queries included
        assert poll["same_calls"] and poll["ratio"] > 0
        assert poll["calls_by_function"]["nvmlDeviceGetComputeRunningProcesses"] >= s["gpus"]
        assert s["nvitop"] == {"skipped": "nvitop-exporter is not installed "
                                          "(pip install -e '.[bench]')"}
    assert "nvitop-exporter arm skipped" in captured.err
    names = [name for name, _ in r["verdicts"]]
    assert "2 x 2: scrape p99 within 2x of the static server" in names
    assert not any("nvitop" in n for n in names)
    text = doc.read_text()
    assert text.startswith("# Performance\n\nprose\n")
    assert scale.HEADING in text and scale.BEGIN in text and scale.END in text
    assert "| 2 x 2 | " in text and "nvitop-exporter arm skipped" in text
    # a second --write replaces the section rather than appending another
    scale.write_section(doc, scale.BEGIN, scale.END, f"{scale.BEGIN}\nnew\n{scale.END}")
    assert doc.read_text().count(scale.BEGIN) == 1 and "\nnew\n" in doc.read_text()


def test_nvitop_arm_at_1x2(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nvitop_exporter")
    monkeypatch.setattr(scale, "compare_poll",
                        lambda g, p, c: {"same_calls": True, "ratio": 1.0})
    s = scale.measure_size(1, 2, _args())
    nv = s["nvitop"]
    assert "error" not in nv, nv
    assert nv["scrapes"] == 5 and nv["errors"] == 0 and nv["series"] > 0
    assert nv["p99_ms"] >= nv["p50_ms"] > 0 and nv["rss_mb"] > 0
    # the simulated NVML's gaps, answered FUNCTION_NOT_FOUND, are listed
    assert isinstance(nv["function_not_found"], list)
    assert all(name.startswith("nvml") for name in nv["function_not_found"])
    names = [n for n, _ in scale.verdicts([s])]
    assert "1 x 2: gpuprobe ahead of nvitop-exporter on scrape p99" in names


def test_nvitop_ready_needs_every_gpu_and_process() -> None:
    line = ('gpu_utilization_Percentage{devicename="H100",hostname="h",index="{i}",'
            'uuid="GPU-{i}"} 1.0\n')
    proc = 'process_info_info{{command="x",index="0",pid="{p}",uuid="GPU-0"}} 1.0\n'
    gpus = "".join(line.replace("{i}", str(i)) for i in range(2))
    ready = scale.nvitop_ready(2, 1)
    assert ready(line.replace("{i}", "0")) == "1 of 2 GPUs' series, 0 of 2 processes'"
    assert ready(gpus + proc.format(p=10000)) is not None
    assert ready(gpus + proc.format(p=10000) + proc.format(p=11000)) is None


def test_poll_comparison_in_fresh_processes() -> None:
    """--poll-runs: each run is a fresh interpreter; the median run is reported with every
    run's ratio, and a run that fails (here: a scenario with no GPU) is an error that names
    the cause."""
    overhead = load_benchmark("overhead")
    r = overhead.compare_poll_runs(1, 2, 1, 3)
    assert r["runs"] == 3 and len(r["ratios"]) == 3 and r["ratios"] == sorted(r["ratios"])
    assert round(r["ratio"], 3) == r["ratios"][1] and r["same_calls"] is True
    assert r["calls_per_cycle"] > 0
    with pytest.raises(SystemExit, match="at least one device"):
        overhead.compare_poll_runs(0, 2, 1, 1)


def test_threads_profile_names_the_threads_encodes_and_collections() -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "threads.py"
    done = subprocess.run([sys.executable, str(script), "--size", "2x2", "--window", "3",
                           "--warmup", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("2 x 2, idle, 3 s: CPU seconds per minute by thread "
                          "(and its wakes a minute)")
    total = next(line for line in out.splitlines() if line.endswith(")")
                 and "all threads (" in line)
    assert int(total.rsplit("(", 1)[1].rstrip(")")) > 0  # an idle daemon's threads wake
    assert "snapshot encodes:" in out
    assert out.count("gc generation") == 3
    bad = subprocess.run([sys.executable, str(script), "--size", "2by2"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("--size:") \
        and bad.stderr.count("\n") == 1


def test_cpu_ns_counts_every_thread_and_child_in_nanoseconds() -> None:
    """A process whose second thread, and whose child, each spin 0.3 s and stay: both
    counted, within a few clock ticks of psutil's figure for the same process and child."""
    import subprocess
    import sys
    import time

    import psutil

    harness = load_benchmark("_harness")
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    code = (f"import subprocess, sys, threading, time\n"
            f"threading.Thread(target=exec, args=({spin + 'time.sleep(60)'!r},),\n"
            f"                 daemon=True).start()\n"
            f"subprocess.Popen([sys.executable, '-c', {spin + 'time.sleep(60)'!r}])\n"
            f"time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ns = harness.cpu_ns(proc.pid)
            if ns is not None and ns >= 0.6e9:
                break
            time.sleep(0.1)
        time.sleep(0.2)
        ns = harness.cpu_ns(proc.pid)
        ticks = harness.footprint(proc.pid)[0]
        assert ns is not None and ns >= 0.6e9  # the thread's and the child's spins
        assert abs(ns / 1e9 - ticks) < 0.05, (ns, ticks)
        assert len(psutil.Process(proc.pid).children()) == 1
        woke = harness.wakes(proc.pid)
        assert woke is not None and woke > 0  # every thread has slept at least once
        assert 0 < (harness.task_wakes(proc.pid, proc.pid) or 0) <= woke  # the main one alone
    finally:
        for c in psutil.Process(proc.pid).children(recursive=True):
            c.kill()
        proc.kill()
        proc.wait(10)
    assert harness.cpu_ns(proc.pid) is None and harness.wakes(proc.pid) is None  # gone
