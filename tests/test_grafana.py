"""The Grafana dashboards: built from grafana/build.py, current schema, a unit and the
datasource variable on every panel, only known metrics, and no vendor-specific query."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from gpuprobe.daemon import catalog

from .conftest import ROOT

DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
# Series that are not gpuprobe's own: Prometheus' scrape series and prometheus_client's
# process collector.
OTHER = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
         "process_resident_memory_bytes", "process_cpu_seconds_total"}
FUNCTIONS = {"sum", "min", "max", "count", "rate", "increase", "by", "without", "ignoring",
             "on", "or", "and", "unless", "time", "avg_over_time", "group_left"}


def panels(dash: dict) -> list[dict]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def metric_names(expr: str) -> set[str]:
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    no_labels = re.sub(r"\{[^}]*\}", "{}", no_strings)
    no_groupings = re.sub(r"\b(by|without|ignoring|on)\s*\([^)]*\)", "", no_labels)
    no_ranges = re.sub(r"\[[^\]]*\]", "", no_groupings)
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", no_ranges)
            if w not in FUNCTIONS}


def test_five_dashboards_equal_the_build_output():
    assert {p.name for p in DASHBOARDS} == {
        "gpuprobe-fleet.json", "gpuprobe-device.json", "gpuprobe-processes-leaks.json",
        "gpuprobe-pcie-probes.json", "gpuprobe-exporter.json"}
    r = subprocess.run([sys.executable, str(ROOT / "grafana" / "build.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_schema_variables_units_and_queries(path):
    dash = json.loads(path.read_text(encoding="utf-8"))
    assert dash["schemaVersion"] >= 39 and dash["uid"] and dash["title"]
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "instance", "vendor", "gpu"]
    assert dash["templating"]["list"][0]["type"] == "datasource"
    assert dash["templating"]["list"][0]["query"] == "prometheus"
    known = {m.name for m in catalog.CATALOG} | OTHER
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    for p in panels(dash):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["fieldConfig"]["defaults"].get("unit"), f"{p['title']} has no unit"
        assert p["targets"], p["title"]
        for t in p["targets"]:
            expr = t["expr"]
            assert not re.search(r'vendor\s*=~?\s*"(?!\$vendor)', expr), (p["title"], expr)
            assert metric_names(expr) <= known, (p["title"], metric_names(expr) - known)
            if any(n.startswith("gpuprobe_") for n in metric_names(expr)):
                assert '$instance' in expr, (p["title"], expr)
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24


def test_metric_name_extraction_sees_through_promql():
    assert metric_names('sum by (instance) (rate(gpuprobe_a_total{gpu=~"$gpu"}[5m])) '
                        '- ignoring (threshold) gpuprobe_b{x="y"}') == {
        "gpuprobe_a_total", "gpuprobe_b"}


def test_provisioning_files():
    ds = yaml.safe_load((ROOT / "grafana/provisioning/datasources/gpuprobe.yaml").read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    dp = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/gpuprobe.yaml").read_text())
    assert dp["apiVersion"] == 1 and dp["providers"][0]["type"] == "file"
    assert dp["providers"][0]["options"]["path"]
