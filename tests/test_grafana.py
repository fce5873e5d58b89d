"""The Grafana dashboards: built from grafana/build.py, current schema, a unit and the
datasource variable on every panel, only known metrics, and no vendor-specific query."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from gpuprobe.daemon.export import catalog

from .conftest import ROOT

DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
# Series that are not gpuprobe's own: Prometheus' scrape series and prometheus_client's
# process collector.
OTHER = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
         "process_resident_memory_bytes", "process_cpu_seconds_total"}
FUNCTIONS = {"sum", "min", "max", "count", "rate", "increase", "by", "without", "ignoring",
             "on", "or", "and", "unless", "time", "avg_over_time", "group_left", "label_join",
             "query_result", "vector", "topk", "bottomk"}
# The rules file's recording rules, which the fleet dashboard is built on.
RECORDS = {r["record"] for g in yaml.safe_load(
    (ROOT / "deploy" / "prometheus" / "gpuprobe-rules.yml").read_text(encoding="utf-8"))["groups"]
    for r in g["rules"] if "record" in r}


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
    assert names == ["datasource", "cluster", "instance", "vendor", "gpu"]
    assert dash["templating"]["list"][0]["type"] == "datasource"
    assert dash["templating"]["list"][0]["query"] == "prometheus"
    known = {m.name for m in catalog.CATALOG} | OTHER | RECORDS
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
            if metric_names(expr) & RECORDS:  # records per host, cluster or model
                assert '$cluster' in expr, (p["title"], expr)
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24


def _load(name: str) -> dict:
    return json.loads((ROOT / "grafana" / "dashboards" / name).read_text(encoding="utf-8"))


def _used(dash: dict) -> set[str]:
    return {n for p in panels(dash) for t in p["targets"] for n in metric_names(t["expr"])}


def test_every_metric_is_on_a_dashboard_and_every_gpu_metric_on_the_device_page():
    dashes = {p.name: _load(p.name) for p in DASHBOARDS}
    everywhere = set().union(*map(_used, dashes.values()))
    missing = {m.name for m in catalog.CATALOG} - everywhere
    assert not missing, f"on no dashboard: {sorted(missing)}"
    # "Every metric of one GPU": all series that carry a gpu label.
    per_gpu = {m.name for m in catalog.CATALOG
               if m.scope in ("device", "link", "process", "leak", "process_leak", "probe", "xid")}
    assert "gpuprobe_bar1_memory_used_bytes" in per_gpu  # the scopes are the ones above
    missing = per_gpu - _used(dashes["gpuprobe-device.json"])
    assert not missing, f"not on the device dashboard: {sorted(missing)}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_variables_and_query_modes(path):
    dash = json.loads(path.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    one_gpu = path.name == "gpuprobe-device.json"
    for name in ("cluster", "instance", "vendor", "gpu"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"] == {"type": "prometheus",
                                                            "uid": "${datasource}"}
        query = v["query"]["query"]
        if name == "gpu":  # by UUID, read as vendor:gpu (test_no_two_gpus_share_a_name)
            assert query.startswith("query_result(") and v["regex"], query
            assert metric_names(query) == {"gpuprobe_device_info"}, query
        else:
            assert query.startswith("label_values(") and query.endswith(f", {name})"), query
            assert metric_names(query[len("label_values("):]) <= {
                "gpuprobe_build_info", "gpuprobe_device_info", name}, query
        assert not re.search(r'vendor\s*=~?\s*"(?!\$vendor)', query), query
        single = one_gpu and name in ("instance", "gpu")
        assert v["multi"] is (not single) and v["includeAll"] is (not single), (name, v)
    for p in panels(dash):
        for t in p["targets"]:
            if p["type"] == "table":
                assert t["instant"] and not t["range"] and t["format"] == "table", p["title"]
            else:  # both at once would show every series of a stat panel twice
                assert t["range"] and not t["instant"], p["title"]
                assert t["format"] == "time_series", p["title"]


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


# -- one name per GPU: NVIDIA 0 and AMD 0 are both gpu="0" -----------------------------------

def _targets():
    for path in DASHBOARDS:
        for p in panels(json.loads(path.read_text(encoding="utf-8"))):
            for t in p["targets"]:
                yield path.name, p["title"], t


def test_every_legend_names_a_gpu_by_vendor_and_index():
    """A legend with {{gpu}} alone shows NVIDIA 0 and AMD 0 both as "0"; the labels it
    names must survive the query's aggregation, and every query selects GPUs by UUID."""
    for dash, title, t in _targets():
        legend, expr = t["legendFormat"], t["expr"]
        assert "{{gpu}}" not in legend.replace("{{vendor}}:{{gpu}}", ""), (dash, title, legend)
        for by in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            kept = {x.strip() for x in by.split(",")}
            assert "gpu" not in kept or "vendor" in kept, (dash, title, expr)
            assert set(re.findall(r"\{\{(\w+)\}\}", legend)) <= kept, (dash, title, expr)
        assert 'gpu=~"$gpu"' not in expr, (dash, title, expr)


def test_no_two_gpus_share_a_name_in_the_gpu_variable(promtool, tmp_path):
    """The GPU variable's query, run by promtool on a host with NVIDIA 0 and AMD 0 (and
    another host's NVIDIA 0), then read as Grafana reads a query_result: the regex's named
    groups give each option its text and value. Three options, three names, three UUIDs."""
    sys.path.insert(0, str(ROOT / "grafana"))
    import build  # grafana/ is not a package
    expr = (build.GPU_VAR_EXPR.replace("$cluster", ".*").replace("$instance", ".*")
            .replace("$vendor", ".*"))
    info = ('gpuprobe_device_info{{instance="{}",job="gpuprobe",gpu="0",uuid="{}",'
            'vendor="{}"}}')
    devices = [("node1:14787", "GPU-a", "nvidia"), ("node1:14787", "AMD-b", "amd"),
               ("node2:14787", "GPU-c", "nvidia")]
    labels = [{"__name__": "gpuprobe_device_info", "gpu": "0", build.GPU_NAME:
               f"{v}:0 on {i}", "instance": i, "job": "gpuprobe", "uuid": u, "vendor": v}
              for i, u, v in devices]
    test = {"evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": info.format(*d), "values": "1x5"} for d in devices],
        "promql_expr_test": [{"expr": expr, "eval_time": "2m", "exp_samples": [
            {"labels": "gpuprobe_device_info{" + ",".join(
                f'{k}="{v}"' for k, v in sorted(lab.items()) if k != "__name__") + "}",
             "value": 1} for lab in labels]}]}]}
    (tmp_path / "t.yml").write_text(yaml.safe_dump(test))
    r = subprocess.run([promtool, "test", "rules", str(tmp_path / "t.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # Grafana's query_result lines: name{label="value",...} value timestamp
    lines = [lab["__name__"] + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(lab.items())
                                              if k != "__name__") + "} 1 1700000000000"
             for lab in labels]
    regex = re.compile(build.GPU_VAR_REGEX.strip("/").replace("(?<", "(?P<"))
    options = [regex.match(line).groupdict() for line in lines]
    assert [o["text"] for o in options] == ["nvidia:0 on node1:14787", "amd:0 on node1:14787",
                                            "nvidia:0 on node2:14787"]
    assert [o["value"] for o in options] == ["GPU-a", "AMD-b", "GPU-c"]
