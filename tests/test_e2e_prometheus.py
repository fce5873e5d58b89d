"""End to end against a real Prometheus: `gpuprobe run --simulate` scraped every second with
the shipped alert rules loaded. Every dashboard panel's queries must return data; the leak
alert must fire for the leaking process and never for its sawtooth and warm-up neighbours;
the device-down alert must fire for the GPU that falls off the bus.

The default scenario runs 60 times faster than the wall clock, so the rules' `for:` waits
are divided by 60 as well (an alert that waits 2 minutes of GPU time waits 2 s here); the
expressions are the shipped ones. In the default scenario GPU 0 runs train_leaky (a leak),
pytorch_allocator (a sawtooth) and inference_server (a warm-up); GPU 3 falls off the bus 30
scenario minutes in, for 20 (30 s and 20 s of wall time).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, RunningDaemon, find_tool, free_port, wait_for, write_yaml

pytestmark = pytest.mark.slow

ACCELERATION = 60
LEAKS_OF_GPU0 = {"train_leaky": True, "pytorch_allocator": False, "inference_server": False}
FALLS_OFF = "3"
CONFIG = {
    "collectors": {"nvidia": {"interval": "500ms"}, "nvidia_processes": {"interval": "1s"},
                   "nvidia_events": {"interval": "500ms"}, "memory_leaks": {"interval": "250ms"},
                   "pcie_probe": {"interval": "500ms", "timeout": "45s"},
                   "launch_probe": {"interval": "500ms", "timeout": "45s"}},
    "probes": {"pcie": {"every": "2s"}, "launch": {"every": "2s"}},
}
VARIABLES = {"$instance": ".+", "$vendor": ".+", "$gpu": ".+", "$__rate_interval": "10s",
             "${datasource}": ""}


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


def scaled_rules(path: Path) -> Path:
    """The shipped rules with every `for:` divided by the scenario's acceleration."""
    rules = yaml.safe_load((ROOT / "deploy/prometheus/gpuprobe-rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{max(1, int(_seconds(rule['for']) * 1000 / ACCELERATION))}ms"
    return write_yaml(path, rules)


class Prometheus:
    def __init__(self, binary: str, tmp: Path, target: str, rules: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = write_yaml(tmp / "prometheus.yml", {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "gpuprobe",
                                "static_configs": [{"targets": [target]}]}]})
        self.log = open(tmp / "prometheus.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def prometheus_binary() -> str:
    path = find_tool("prometheus")
    if path is None:
        if os.environ.get("GPUPROBE_REQUIRE_PROMETHEUS"):
            pytest.fail("prometheus not found; scripts/test.sh installs Debian's prometheus")
        pytest.skip("prometheus not installed (scripts/test.sh installs it)")
    return path


def panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text(encoding="utf-8"))
        for panel in dash["panels"]:
            for t in panel.get("targets", []):
                expr = t["expr"]
                for var, value in VARIABLES.items():
                    expr = expr.replace(var, value)
                out.append((path.name, panel["title"], expr))
    return out


def test_dashboards_alerts_and_metrics_against_a_real_prometheus(
        tmp_path, promtool, prometheus_binary):
    scenario = yaml.safe_load((ROOT / "probes/sim/scenarios/default.yaml").read_text())
    assert scenario["time_acceleration"] == ACCELERATION
    config = write_yaml(tmp_path / "gpuprobe.yaml", CONFIG)
    rules = scaled_rules(tmp_path / "rules.yml")
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    daemon = RunningDaemon("--simulate", "--config", str(config))
    prom = None
    try:
        daemon.wait_ready()
        prom = Prometheus(prometheus_binary, tmp_path, f"127.0.0.1:{daemon.port}", rules)
        wait_for(prom.ready, timeout=60, interval=0.2)
        start = time.time()
        seen: dict[tuple[str, str], set[str]] = {}  # (alert, gpu/process) -> states

        def poll() -> bool:
            for a in prom.api("alerts")["alerts"]:
                labels = a["labels"]
                key = (labels["alertname"], labels.get("process_name") or labels.get("gpu", ""))
                seen.setdefault(key, set()).add(a["state"])
            return ("firing" in seen.get(("GpuprobeMemoryLeakSuspected", "train_leaky"), ())
                    and "firing" in seen.get(("GpuprobeDeviceDown", FALLS_OFF), ()))

        wait_for(poll, timeout=150, interval=1.0)
        # A little longer, so that a late false alarm would have time to show.
        end = time.time() + 10
        while time.time() < end:
            poll()
            time.sleep(1)

        if os.environ.get("GPUPROBE_KEEP_E2E"):
            Path("/tmp/e2e-alerts.txt").write_text("\n".join(map(str, sorted(seen.items()))))
        leak_alerts = {k[1] for k in seen if k[0] == "GpuprobeMemoryLeakSuspected"}
        for name, leaking in LEAKS_OF_GPU0.items():
            assert (name in leak_alerts) == leaking, (name, sorted(seen))
        # Also over the whole run, from Prometheus' own record of alert states.
        history = prom.api("query_range", query='ALERTS{alertname="GpuprobeMemoryLeakSuspected"}',
                           start=str(start - 5), end=str(time.time()), step="1")
        assert {r["metric"]["process_name"] for r in history["result"]} == {"train_leaky"}
        down = {k[1] for k in seen if k[0] == "GpuprobeDeviceDown"}
        assert down == {FALLS_OFF}, sorted(seen)

        # Every dashboard query returned data during the run.
        empty = []
        for dash, title, expr in panel_queries():
            data = prom.api("query_range", query=expr, start=str(start), end=str(time.time()),
                            step="2")
            if not data["result"]:
                empty.append(f"{dash}: {title}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)

        _, text = daemon.get("/metrics")
        check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                               capture_output=True, timeout=30)
        assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), (
            check.stdout + check.stderr)
    finally:
        if prom is not None:
            prom.stop()
            if os.environ.get("GPUPROBE_KEEP_E2E"):
                shutil.copy(tmp_path / "prometheus.log", "/tmp/e2e-prometheus.log")
        daemon.stop()
