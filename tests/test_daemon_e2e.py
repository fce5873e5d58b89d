"""`gpuprobe run --simulate` as a user runs it: scraped over HTTP and checked by promtool."""

from __future__ import annotations

import signal
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuprobe.daemon.export import catalog

from .conftest import RunningDaemon, real_time_collectors, wait_for, write_yaml

pytestmark = pytest.mark.slow

FAST_CONFIG = {
    "collectors": real_time_collectors(),
    "nvidia": {"retry_initial": "100ms", "retry_max": "500ms"},
    "probes": {"pcie": {"every": "2s"}, "launch": {"every": "2s"}},
    "exporter": {"link_metrics": True},  # every family, the per-link ones (off by default) too
}
# Families the built-in scenario has no hardware for (none since the simulated MI300X reports
# retired pages).
# Only with a web config file (TLS, basic auth): test_http_tls.py serves one.
NOT_IN_DEFAULT_SCENARIO: set[str] = {"gpuprobe_web_config_last_reload_successful",
                                     "gpuprobe_web_config_last_reload_success_timestamp_seconds"}


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def values(fams: dict, name: str) -> list:
    fam = fams.get(name) or fams.get(catalog.BY_NAME[name].family)
    if fam is None:
        return []
    return [(s.labels, s.value) for s in fam.samples if s.name == name]


@pytest.fixture
def fast_config(tmp_path):
    return write_yaml(tmp_path / "fast.yaml", FAST_CONFIG)


def test_default_scenario_serves_every_family_and_promtool_is_clean(fast_config, promtool):
    d = RunningDaemon("--simulate", "--config", str(fast_config))
    try:
        d.wait_ready()

        missing: set[str] = set()

        def complete():
            status, text = d.get("/metrics")
            names = {m.name for m in catalog.CATALOG if m.name not in NOT_IN_DEFAULT_SCENARIO}
            found = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
            missing.clear()
            missing.update(names - found)
            return text if status == 200 and not missing else None
        try:
            text = wait_for(complete, timeout=60)
        except AssertionError:
            raise AssertionError(f"never exported: {sorted(missing)}") from None
        check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                               capture_output=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        report = check.stdout + check.stderr
        assert report.strip() == "", report
        for path, code in (("/healthz", 200), ("/readyz", 200), ("/", 200), ("/nope", 404)):
            assert d.get(path)[0] == code, path
        assert "gpuprobe" in d.get("/")[1]
    finally:
        d.proc.send_signal(signal.SIGTERM)
        out = d.stop()
    assert d.proc.returncode == 0, out
    assert "shutting down" in out


def test_lost_device_is_down_while_the_others_report(tmp_path, fast_config):
    scenario = write_yaml(tmp_path / "lost.yaml", {
        "time_acceleration": 60, "seed": 5,
        "devices": [
            {"vendor": "nvidia", "processes": [
                {"pid": 501, "name": "a", "memory": {"pattern": "constant", "size": "1GiB"}}]},
            {"vendor": "nvidia", "events": [{"at": "3m", "kind": "fall_off_bus",
                                             "duration": "8m"}],
             "processes": [{"pid": 502, "name": "b",
                            "memory": {"pattern": "constant", "size": "2GiB"}}]},
        ]})
    d = RunningDaemon("--simulate", str(scenario), "--config", str(fast_config))
    try:
        d.wait_ready()

        def state():
            fams = families(d.get("/metrics")[1])
            up = {lab["gpu"]: v for lab, v in values(fams, "gpuprobe_device_up")}
            mem = {lab["gpu"]: v for lab, v in values(fams, "gpuprobe_memory_used_bytes")}
            xid = {(lab["gpu"], lab["xid"]): v
                   for lab, v in values(fams, "gpuprobe_xid_errors_total")}
            return up, mem, xid

        def lost():
            up, mem, xid = state()
            return (up, mem, xid) if up.get("1") == 0.0 else None
        up, mem, _ = wait_for(lost, timeout=20)
        assert up["0"] == 1.0 and mem["0"] == 2**30  # the other GPU keeps reporting
        assert "1" not in mem  # no stale values for the lost one
        wait_for(lambda: state()[2].get(("1", "79")) == 1.0, timeout=10)  # XID 79 counted
        wait_for(lambda: state()[0].get("1") == 1.0, timeout=30)  # back after 8 scenario min
        assert state()[1]["1"] == 2 * 2**30
    finally:
        d.stop()
