#!/usr/bin/env python3
"""Builds gpuprobe's Grafana dashboards (grafana/dashboards/*.json) from the panel lists below.

    python grafana/build.py          # rewrite the JSON files
    python grafana/build.py --check  # exit 1 if a file differs from what this builds

One source keeps the five dashboards consistent: the same variables (datasource, instance,
vendor, gpu), a unit on every panel, and no query that names a vendor. tests/test_grafana.py
checks the files and that they equal this script's output; tests/test_e2e_prometheus.py runs
every query against a real Prometheus scraping the simulation.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
# The device selector every device panel uses.
# $gpu holds UUIDs: NVIDIA GPU 0 and AMD GPU 0 are both gpu="0", so the index alone would
# select both and list "0" once. Its options read "<vendor>:<gpu> on <instance>" (GPU_VAR).
S = 'cluster=~"$cluster", instance=~"$instance", vendor=~"$vendor", uuid=~"$gpu"'
I = 'cluster=~"$cluster", instance=~"$instance"'  # noqa: E741 - the host selector
C = 'cluster=~"$cluster"'  # the cluster selector of the cluster and model records
RI = "$__rate_interval"
G = "{{vendor}}:{{gpu}}"  # a GPU in a legend: NVIDIA 0 and AMD 0 are both gpu="0"


@dataclass
class Q:
    expr: str
    legend: str = ""


@dataclass
class P:
    title: str
    unit: str
    queries: list[Q]
    kind: str = "timeseries"
    description: str = ""
    width: int = 12
    height: int = 8
    options: dict = field(default_factory=dict)
    thresholds: list[tuple[float | None, str]] | None = None


def _var_datasource() -> dict:
    return {"name": "datasource", "label": "Data source", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "options": []}


def _var_query(name: str, label: str, query: str, multi: bool = True, regex: str = "",
               sort: int = 3) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": f"{name}-values"}, "definition": query,
            "regex": regex, "refresh": 2, "sort": sort, "multi": multi, "includeAll": multi,
            "allValue": ".*" if multi else None, "current": {}, "hide": 0, "options": []}


# The GPU variable: one option per device_info series, its value the UUID and its text the
# name label_join builds ("nvidia:0 on node1:14787"), picked out by the regex's named groups
# text and value (Grafana 7.4+), in whatever order the labels come.
GPU_NAME = "gpuprobe_gpu"
GPU_VAR_EXPR = (f'label_join(label_join(gpuprobe_device_info{{cluster=~"$cluster", '
                f'instance=~"$instance", vendor=~"$vendor"}}, "{GPU_NAME}", ":", "vendor", '
                f'"gpu"), "{GPU_NAME}", " on ", "{GPU_NAME}", "instance")')
GPU_VAR_REGEX = (f'/^(?=.*\\b{GPU_NAME}="(?<text>[^"]+)")'
                 '(?=.*\\buuid="(?<value>[^"]+)")/')


def variables(one_gpu: bool = False) -> list[dict]:
    """The five variables; `one_gpu` makes host and GPU single choices (the device page).
    `cluster` is the label the scraping Prometheus sets on its targets; where there is none,
    its "All" (.*) matches the series without it."""
    return [
        _var_datasource(),
        _var_query("cluster", "Cluster", "label_values(gpuprobe_build_info, cluster)"),
        _var_query("instance", "Host",
                   'label_values(gpuprobe_build_info{cluster=~"$cluster"}, instance)',
                   multi=not one_gpu),
        _var_query("vendor", "Vendor",
                   'label_values(gpuprobe_device_info{cluster=~"$cluster", '
                   'instance=~"$instance"}, vendor)'),
        _var_query("gpu", "GPU", f"query_result({GPU_VAR_EXPR})", multi=not one_gpu,
                   regex=GPU_VAR_REGEX, sort=1),
    ]


def _panel(p: P, pid: int, x: int, y: int) -> dict:
    if p.kind == "row":  # a heading the panels after it sit under, open
        return {"id": pid, "type": "row", "title": p.title, "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}
    # A table shows the latest value of each series (instant, one row per series); every
    # other panel a range, a stat reducing it to its last value under a sparkline. Asking
    # for both would give a stat panel each series twice.
    table = p.kind == "table"
    targets = [{"refId": chr(ord("A") + i), "datasource": DS, "expr": q.expr,
                "legendFormat": q.legend or "__auto", "range": not table, "instant": table,
                "format": "table" if table else "time_series"}
               for i, q in enumerate(p.queries)]
    defaults: dict = {"unit": p.unit}
    if p.thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"color": c, "value": v} for v, c in p.thresholds]}
    if p.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0,
                              "showPoints": "never", "spanNulls": False}
    panel = {"id": pid, "type": p.kind, "title": p.title, "description": p.description,
             "datasource": DS, "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
             "fieldConfig": {"defaults": defaults, "overrides": []},
             "options": p.options or _default_options(p.kind), "targets": targets}
    return panel


def _default_options(kind: str) -> dict:
    if kind == "timeseries":
        return {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                           "calcs": ["lastNotNull", "max"]},
                "tooltip": {"mode": "multi", "sort": "desc"}}
    if kind == "stat":
        return {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    if kind == "table":
        return {"showHeader": True, "cellHeight": "sm"}
    return {}


def dashboard(uid: str, title: str, description: str, panels: list[P],
              one_gpu: bool = False) -> dict:
    laid, x, y, row_h = [], 0, 0, 0
    for i, p in enumerate(panels, start=1):
        if x + p.width > 24 or (p.kind == "row" and x > 0):
            x, y, row_h = 0, y + row_h, 0
        laid.append(_panel(p, i, x, y))
        x += p.width
        row_h = max(row_h, p.height)
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["gpuprobe", "gpu"], "editable": True, "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "timezone": "",
        "templating": {"list": variables(one_gpu)},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["gpuprobe"], "asDropdown": True,
                   "title": "gpuprobe", "includeVars": True, "keepTime": True}],
        "panels": laid,
    }


def row(title: str) -> P:
    return P(title, "", [], kind="row", width=24, height=1)


def sum_by(by: str, fn: str, metric: str, selector: str = S, window: str = RI) -> str:
    """The sum by the labels ``by`` of ``fn`` (rate, increase) of a counter over ``window``."""
    return f"sum by ({by}) ({fn}({metric}{{{selector}}}[{window}]))"


def per_gpu(legends: dict[str, str], rate: bool = False) -> list[Q]:
    """One query a metric (its name less gpuprobe_) of the device page, with the device
    selector, the rate of a counter where ``rate``; the legend its label and the GPU."""
    exprs = {m: f"gpuprobe_{m}{{{S}}}" for m in legends}
    if rate:
        exprs = {m: f"rate({e}[{RI}])" for m, e in exprs.items()}
    return [Q(exprs[m], label + " " + G) for m, label in legends.items()]


def fleet() -> dict:
    """Built on the rules file's gpuprobe-fleet recording rules (docs/deploy.md), so that it
    stays readable at a thousand hosts: counts, the ten worst hosts or GPUs, and roll-ups per
    cluster and GPU model, never a line per GPU."""
    def top(expr: str) -> str:
        return f"topk(10, {expr})"

    def bottom(expr: str) -> str:
        return f"bottomk(10, {expr})"

    return dashboard("gpuprobe-fleet", "gpuprobe / Fleet overview",
                     "Every host of every cluster at a glance: GPUs up or down, the ten "
                     "fullest, hottest and busiest, and the roll-ups per cluster and GPU "
                     "model.", [
        P("Hosts", "none", [Q(f"count(instance:gpuprobe_gpus:count{{{I}}})")], "stat",
          width=3, height=4),
        P("GPUs", "none", [Q(f"sum(instance:gpuprobe_gpus:count{{{I}}})")], "stat", width=3,
          height=4),
        P("GPUs down", "none", [Q(f"sum(instance:gpuprobe_gpus_down:count{{{I}}})")], "stat",
          width=3, height=4, thresholds=[(None, "green"), (1, "red")]),
        P("Hosts with a GPU down", "none",
          [Q(f"count(instance:gpuprobe_gpus_down:count{{{I}}} > 0) or vector(0)")], "stat",
          width=3, height=4, thresholds=[(None, "green"), (1, "red")]),
        P("GPUs throttled by heat or hardware", "none",
          [Q(f"sum(instance:gpuprobe_gpus_throttled:count{{{I}}})")], "stat", width=3,
          height=4, thresholds=[(None, "green"), (1, "orange")]),
        P("GPU-to-GPU links down", "none",
          [Q(f"sum(instance:gpuprobe_interconnect_links_down:sum{{{I}}}) or vector(0)")],
          "stat", width=3, height=4, thresholds=[(None, "green"), (1, "orange")],
          description="NVLink and XGMI links down that were up within the last day."),
        P("Suspected memory leaks", "none",
          [Q(f"sum(instance:gpuprobe_processes_leaking:count{{{I}}})")], "stat", width=3,
          height=4, thresholds=[(None, "green"), (1, "orange")]),
        P("GPUs needing a reset or recovery", "none",
          [Q(f'count(gpuprobe_reset_required{{{S}}} == 1 or gpuprobe_recovery_action'
             f'{{{S}, action!="none"}} == 1) or vector(0)')], "stat", width=3, height=4,
          thresholds=[(None, "green"), (1, "red")]),
        P("Clusters", "none",
          [Q(f"cluster:gpuprobe_gpus:sum{{{C}}}", "GPUs"),
           Q(f"cluster:gpuprobe_gpus_down:sum{{{C}}}", "down"),
           Q(f"cluster:gpuprobe_gpus_throttled:sum{{{C}}}", "throttled"),
           Q(f"cluster:gpuprobe_processes_leaking:sum{{{C}}}", "leaking"),
           Q(f"cluster:gpuprobe_utilization_ratio:avg{{{C}}}", "utilization"),
           Q(f"cluster:gpuprobe_power_draw_watts:sum{{{C}}}", "power (W)")], "table",
          width=24, height=6,
          description="One row per cluster and measure (the cluster label of the scraping "
                      "Prometheus; empty where there is none)."),
        P("Utilization per cluster", "percentunit",
          [Q(f"cluster:gpuprobe_utilization_ratio:avg{{{C}}}", "{{cluster}}")]),
        P("Memory used per cluster", "percentunit",
          [Q(f"cluster:gpuprobe_memory_used_bytes:sum{{{C}}} / "
             f"cluster:gpuprobe_memory_total_bytes:sum{{{C}}}", "{{cluster}}")]),
        P("The ten hosts with the least memory headroom", "percentunit",
          [Q(bottom(f"instance:gpuprobe_memory_headroom_ratio:min{{{I}}}"),
             "{{cluster}} {{instance}}")],
          description="Free share of each host's fullest device (MIG instances and "
                      "partitions included).",
          thresholds=[(None, "red"), (0.05, "orange"), (0.15, "green")]),
        P("The ten busiest hosts", "percentunit",
          [Q(top(f"instance:gpuprobe_utilization_ratio:avg{{{I}}}"),
             "{{cluster}} {{instance}}")]),
        P("The ten GPUs closest to their slowdown temperature", "celsius",
          [Q(bottom(f'gpuprobe_temperature_threshold_celsius{{{S}, threshold="slowdown"}} '
                    f"- ignoring (threshold) gpuprobe_temperature_celsius{{{S}}}"),
             "{{instance}} GPU " + G + " {{sensor}}")],
          description="Degrees below the temperature at which each sensor's GPU cuts its "
                      "clocks; the device's own threshold, not a constant.",
          thresholds=[(None, "red"), (5, "orange"), (10, "green")]),
        P("The ten hosts drawing most power", "watt",
          [Q(top(f"instance:gpuprobe_power_draw_watts:sum{{{I}}}"),
             "{{cluster}} {{instance}}")]),
        P("Utilization per GPU model", "percentunit",
          [Q(f"model:gpuprobe_utilization_ratio:avg{{{C}}}", "{{cluster}} {{model}}")]),
        P("Power per GPU model", "watt",
          [Q(f"model:gpuprobe_power_draw_watts:sum{{{C}}}", "{{cluster}} {{model}}")]),
        P("GPU models", "none",
          [Q(f"model:gpuprobe_gpus:count{{{C}}}", "GPUs"),
           Q(f"model:gpuprobe_memory_used_bytes:sum{{{C}}}", "memory used (bytes)"),
           Q(f"model:gpuprobe_utilization_ratio:avg{{{C}}}", "utilization")], "table",
          width=24, height=6, description="One row per cluster, model and measure."),
        P("The ten GPUs with most hardware errors in the last hour", "short",
          [Q(top(sum_by("instance, vendor, gpu, xid", "increase", "gpuprobe_xid_errors_total",
                        window="1h")), "{{instance}} GPU " + G + " XID {{xid}}"),
           Q(top(sum_by("instance, vendor, gpu", "increase",
                        "gpuprobe_ecc_uncorrected_errors_total", window="1h")),
             "{{instance}} GPU " + G + " uncorrectable ECC")]),
        P("Probe runs failed or timed out in the last hour", "short",
          [Q(top(sum_by("instance, vendor, gpu, probe, outcome", "increase",
                        "gpuprobe_probe_runs_total", f'{S}, outcome=~"failed|timeout"', "1h")),
             "{{instance}} GPU " + G + " {{probe}} {{outcome}}")],
          description="As GpuprobeProbeFailing counts them: a skipped run (a busy GPU) is "
                      "not a failure.", thresholds=[(None, "green"), (2, "orange")]),
        P("Collectors failing", "none", [Q(f"sum(1 - gpuprobe_collector_up{{{I}}})")], "stat",
          width=6, height=4, thresholds=[(None, "green"), (1, "red")]),
    ])


def device() -> dict:
    one = G
    return dashboard("gpuprobe-device", "gpuprobe / Device detail",
                     "Every metric of one GPU (or NVIDIA MIG instance / AMD partition).", [
        P("Identity", "none",
          [Q(f"gpuprobe_device_info{{{S}}}")], "table", width=24, height=5),
        P("Up", "none", [Q(f"gpuprobe_device_up{{{S}}}", one)], "stat", width=4, height=4),
        P("Processes", "none", [Q(f"gpuprobe_device_processes{{{S}}}", one)], "stat", width=4,
          height=4),
        P("Performance state", "none", [Q(f"gpuprobe_performance_state{{{S}}}", one)], "stat",
          width=4, height=4),
        P("ECC enabled", "none", [Q(f"gpuprobe_ecc_enabled{{{S}}}", one)], "stat", width=4,
          height=4),
        P("Row remap pending / failed", "none",
          per_gpu({"row_remap_pending": "pending", "row_remap_failed": "failed"}), "stat",
          width=8, height=4),
        P("Reset required / drain recommended", "none",
          per_gpu({"reset_required": "reset required", "drain_recommended": "drain"}),
          "stat", width=12, height=4, thresholds=[(None, "green"), (1, "red")],
          description="NVIDIA: the driver's reset and drain-and-reset flags."),
        P("Recovery action the driver asks for", "none",
          [Q(f"gpuprobe_recovery_action{{{S}}} == 1", "{{action}} " + G)], "stat", width=12,
          height=4, options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                               "values": False},
                             "colorMode": "none", "graphMode": "none", "textMode": "name"},
          description="none when all is well; else gpu_reset, drain_and_reset, node_reboot, "
                      "..."),
        P("Memory", "bytes",
          per_gpu({"memory_used_bytes": "used", "memory_free_bytes": "free",
                   "memory_reserved_bytes": "reserved", "memory_total_bytes": "total"})),
        P("Memory per process", "bytes",
          [Q(f"gpuprobe_process_memory_used_bytes{{{S}}}", "{{process_name}} ({{pid}})")]),
        P("BAR1 aperture", "bytes",
          per_gpu({"bar1_memory_used_bytes": "used", "bar1_memory_total_bytes": "total"}),
          description="Device memory mapped for the host and peers (AMD: CPU-visible VRAM)."),
        P("GTT (host memory mapped for the GPU)", "bytes",
          per_gpu({"gtt_memory_used_bytes": "used", "gtt_memory_total_bytes": "total"}),
          description="AMD only; an APU keeps most of its memory here."),
        P("Temperatures and thresholds", "celsius",
          [Q(f"gpuprobe_temperature_celsius{{{S}}}", "{{sensor}} " + G),
           Q(f"gpuprobe_temperature_threshold_celsius{{{S}}}",
             "{{sensor}} {{threshold}} " + G)]),
        P("Power", "watt",
          per_gpu({"power_draw_watts": "draw", "power_limit_watts": "limit",
                   "power_limit_default_watts": "default limit",
                   "power_limit_min_watts": "min limit", "power_limit_max_watts": "max limit"})
          + per_gpu({"energy_joules_total": "from energy"}, rate=True),
          description="A limit below the default one was lowered by someone."),
        P("Fans", "percentunit", [Q(f"gpuprobe_fan_speed_ratio{{{S}}}", "fan {{fan}} " + G)],
          description="Absent on passively cooled data-centre GPUs."),
        P("Clocks", "hertz",
          [Q(f"gpuprobe_clock_hertz{{{S}}}", "{{clock}} " + G),
           Q(f"gpuprobe_clock_max_hertz{{{S}}}", "{{clock}} max " + G)]),
        P("Throttle reasons active", "none",
          [Q(f"gpuprobe_throttle_active{{{S}}}", "{{reason}} " + G)]),
        P("Time throttled, by reason", "percentunit",
          [Q(f"rate(gpuprobe_throttle_seconds_total{{{S}}}[{RI}])", "{{reason}} " + G)]),
        P("Utilization", "percentunit",
          [Q(f"gpuprobe_utilization_ratio{{{S}}}", "{{engine}} " + G),
           Q(f"gpuprobe_graphics_engine_active_ratio{{{S}}}", "graphics engine " + G)]),
        P("Busy per XCC", "percentunit",
          [Q(f"gpuprobe_xcc_utilization_ratio{{{S}}}", "XCC {{xcc}} " + G)],
          description="AMD MI300-class: each accelerator complex die, per partition."),
        P("SM activity, occupancy, tensor and DRAM", "percentunit",
          per_gpu({"sm_active_ratio": "SM active", "sm_occupancy_ratio": "SM occupancy",
                   "tensor_active_ratio": "tensor", "dram_active_ratio": "DRAM"})),
        P("PCIe link", "none",
          per_gpu({"pcie_link_generation": "gen", "pcie_link_max_generation": "max gen",
                   "pcie_link_width": "width", "pcie_link_max_width": "max width"})),
        P("PCIe traffic", "Bps",
          [Q(f"rate(gpuprobe_pcie_transmit_bytes_total{{{S}}}[{RI}])", "transmit " + G),
           Q(f"rate(gpuprobe_pcie_receive_bytes_total{{{S}}}[{RI}])", "receive " + G),
           Q(f"gpuprobe_pcie_sampled_throughput_bytes_per_second{{{S}}}",
             "{{direction}} (1 s sample) " + G),
           Q(f"rate(gpuprobe_pcie_transferred_bytes_total{{{S}}}[{RI}])",
             "both directions " + G)],
          description="NVIDIA: rates of byte counters. AMD: a one-second sample taken every "
                      "minute by the amd_slow collector, and on MI300 the rate of the "
                      "device's own byte counter (both directions)."),
        P("PCIe replays, recoveries and NAKs", "ops",
          per_gpu({"pcie_replays_total": "replays", "pcie_link_recoveries_total": "recoveries",
                   "pcie_naks_received_total": "NAKs received",
                   "pcie_naks_sent_total": "NAKs sent",
                   "pcie_replay_rollovers_total": "replay rollovers"}, rate=True)),
        P("PCIe errors by kind", "ops",
          [Q(f"rate(gpuprobe_pcie_errors_total{{{S}}}[{RI}])", "{{kind}} " + G)]),
        P("ECC errors", "short",
          per_gpu({"ecc_corrected_errors_total": "corrected",
                   "ecc_uncorrected_errors_total": "uncorrected",
                   "ecc_lifetime_corrected_errors_total": "corrected, lifetime",
                   "ecc_lifetime_uncorrected_errors_total": "uncorrected, lifetime",
                   "ecc_deferred_errors_total": "deferred"})),
        P("ECC and RAS errors by block", "short",
          [Q(f"gpuprobe_ecc_block_errors_total{{{S}}}", "{{block}} {{severity}} " + G)],
          description="AMD: per hardware block (umc is device memory)."),
        P("Memory taken out of service", "short",
          [Q(f"gpuprobe_remapped_rows_total{{{S}}} or gpuprobe_retired_pages_total{{{S}}} "
             f"or gpuprobe_retired_pages_pending{{{S}}}", "{{__name__}} {{cause}} " + G)],
          description="Remapped rows (Ampere and newer) or retired pages (older GPUs)."),
        P("XID errors and device events", "short",
          [Q(f"gpuprobe_xid_errors_total{{{S}}}", "XID {{xid}} " + G),
           Q(f"gpuprobe_device_events_total{{{S}}}", "{{event}} " + G)],
          description="NVIDIA reports XIDs; AMD reports resets and thermal-throttle events."),
        row("Interconnect: NVLink and XGMI"),
        P("Links up / links", "none",
          [Q(f"gpuprobe_interconnect_links_up{{{S}}}", "up " + G),
           Q(f"gpuprobe_interconnect_links{{{S}}}", "{{type}} links " + G)], "stat", width=8,
          height=4),
        P("Link version, lanes", "none",
          per_gpu({"interconnect_version": "NVLink version",
                   "interconnect_link_width": "lanes per link"}), "stat", width=8, height=4),
        P("Link signalling rate", "Bps",
          per_gpu({"interconnect_link_speed_bytes_per_second": "per link, each way"}),
          "stat", width=8, height=4),
        P("Interconnect traffic, all links", "Bps",
          [Q(f"rate(gpuprobe_interconnect_transmit_bytes_total{{{S}}}[{RI}])",
             "transmit " + G),
           Q(f"rate(gpuprobe_interconnect_receive_bytes_total{{{S}}}[{RI}])",
             "receive " + G)]),
        P("Traffic per link", "Bps",
          [Q(f"rate(gpuprobe_link_transmit_bytes_total{{{S}}}[{RI}])",
             "link {{link}} transmit " + G),
           Q(f"rate(gpuprobe_link_receive_bytes_total{{{S}}}[{RI}])",
             "link {{link}} receive " + G)],
          description="Per-link series need exporter.link_metrics: true (off by default: 126 "
                      "series per H100); the per-GPU totals above are always there."),
        P("Link state", "none", [Q(f"gpuprobe_link_up{{{S}}}", "link {{link}} " + G)],
          description="1 up, 0 down or not connected."),
        P("Link errors, last hour", "short",
          [Q(sum_by("vendor, gpu, kind", "increase", "gpuprobe_interconnect_errors_total",
                    window="1h"), "{{kind}} all links " + G),
           Q(sum_by("vendor, gpu, link, kind", "increase", "gpuprobe_link_errors_total",
                    window="1h"), "{{kind}} link {{link}} " + G)]),
        row("Memory and leaks"),
        P("Memory leak detector", "Bps",
          [Q(f"gpuprobe_memory_growth_bytes_per_second{{{S}}}", "growth " + G)]),
        P("Leak suspected, confidence", "percentunit",
          per_gpu({"memory_leak_suspected": "suspected",
                   "memory_leak_confidence_ratio": "confidence"})),
        P("Growth lasted, time to exhaustion", "s",
          [Q(f"gpuprobe_memory_growth_duration_seconds{{{S}}}", "growth lasted " + G),
           Q(f"min by (vendor, gpu) (gpuprobe_memory_exhaustion_seconds{{{S}}} or "
             f"gpuprobe_process_memory_exhaustion_seconds{{{S}}})", "exhaustion " + G)]),
        P("Process engine busy", "percentunit",
          [Q(f"gpuprobe_process_utilization_ratio{{{S}}}", "{{process_name}} ({{pid}})")],
          description="AMD: the graphics/compute engine's time per process."),
        P("Process memory growth", "Bps",
          [Q(f"gpuprobe_process_memory_growth_bytes_per_second{{{S}}}",
             "{{process_name}} ({{pid}})")],
          description="Only while a process's memory grows."),
        P("Process leak suspected, confidence", "percentunit",
          [Q(f"gpuprobe_process_memory_leak_suspected{{{S}}}",
             "suspected {{process_name}} ({{pid}})"),
           Q(f"gpuprobe_process_memory_leak_confidence_ratio{{{S}}}",
             "confidence {{process_name}} ({{pid}})")]),
        P("Process growth lasted, time to exhaustion", "s",
          [Q(f"gpuprobe_process_memory_growth_duration_seconds{{{S}}}",
             "growth lasted {{process_name}} ({{pid}})"),
           Q(f"gpuprobe_process_memory_exhaustion_seconds{{{S}}}",
             "exhaustion {{process_name}} ({{pid}})")]),
        P("Measured PCIe bandwidth and the link's rate", "Bps",
          [Q(f"gpuprobe_probe_pcie_bandwidth_bytes_per_second{{{S}}}", "{{direction}}"),
           Q(f"gpuprobe_probe_pcie_link_bytes_per_second{{{S}}}", "link rate")]),
        P("Measured over theoretical", "percentunit",
          [Q(f"gpuprobe_probe_pcie_bandwidth_ratio{{{S}}}", "{{direction}}")],
          thresholds=[(None, "red"), (0.7, "green")]),
        P("Launch latency", "s",
          [Q(f"gpuprobe_probe_launch_latency_seconds{{{S}}}", "launch to first block")]),
        P("SMs reached within the bound", "percentunit",
          [Q(f"gpuprobe_probe_sm_reach_ratio{{{S}}}", "SMs reached")]),
        P("Probe runs and skips, last hour", "short",
          [Q(sum_by("probe, outcome", "increase", "gpuprobe_probe_runs_total", window="1h"),
             "{{probe}} {{outcome}}"),
           Q(sum_by("probe, reason", "increase", "gpuprobe_probe_skips_total", window="1h"),
             "{{probe}} skipped: {{reason}}")]),
        P("Probe duty cycle (GPU time held)", "percentunit",
          [Q(f"rate(gpuprobe_probe_gpu_seconds_total{{{S}}}[{RI}])", "{{probe}}")]),
        P("Probe duration and since last success", "s",
          [Q(f"gpuprobe_probe_duration_seconds{{{S}}}", "{{probe}} duration"),
           Q(f"time() - gpuprobe_probe_last_success_timestamp_seconds{{{S}}}",
             "{{probe}} since success")], width=24),
    ], one_gpu=True)


def processes() -> dict:
    who = "{{process_name}} ({{pid}}) GPU " + G + " {{instance}}"
    return dashboard("gpuprobe-processes", "gpuprobe / Processes and leaks",
                     "GPU memory per process and container, and the leak detector's view.", [
        P("Suspected leaks", "none",
          [Q(f"sum(gpuprobe_process_memory_leak_suspected{{{S}}})")], "stat", width=6,
          height=4, thresholds=[(None, "green"), (1, "orange")]),
        P("Soonest memory exhaustion", "s",
          [Q(f"min(gpuprobe_process_memory_exhaustion_seconds{{{S}}} or "
             f"gpuprobe_memory_exhaustion_seconds{{{S}}})")], "stat", width=6, height=4,
          description="Only while a leak is suspected."),
        P("Processes on GPUs", "none", [Q(f"sum(gpuprobe_device_processes{{{S}}})")], "stat",
          width=6, height=4),
        P("Processes per GPU", "none",
          [Q(f"gpuprobe_device_processes{{{S}}}", "GPU " + G + " {{instance}}")], "stat",
          width=6, height=4),
        P("Memory per process", "bytes",
          [Q(f"gpuprobe_process_memory_used_bytes{{{S}}}", who)], width=24, height=9),
        P("Growth rate per process", "Bps",
          [Q(f"gpuprobe_process_memory_growth_bytes_per_second{{{S}}}", who)],
          description="Robust (Theil-Sen) slope over the detector's window."),
        P("Leak confidence per process", "percentunit",
          [Q(f"gpuprobe_process_memory_leak_confidence_ratio{{{S}}}", who)]),
        P("Suspected leaks", "none",
          [Q(f"gpuprobe_process_memory_leak_suspected{{{S}}} == 1", who)], "table",
          width=12),
        P("Time to exhaustion per leaking process", "s",
          [Q(f"gpuprobe_process_memory_exhaustion_seconds{{{S}}}", who)]),
        P("How long growth has lasted", "s",
          [Q(f"gpuprobe_process_memory_growth_duration_seconds{{{S}}}", who)]),
        P("Device memory growth", "Bps",
          [Q(f"gpuprobe_memory_growth_bytes_per_second{{{S}}}", "GPU " + G + " {{instance}}")]),
        P("Memory per container", "bytes",
          [Q(f'sum by (instance, container_id, namespace, pod, pod_uid) '
             f'(gpuprobe_process_memory_used_bytes{{{S}, container_id!=""}})',
             "{{namespace}}/{{pod}} {{container_id}} pod {{pod_uid}}")], width=24),
    ])


def pcie() -> dict:
    g = "GPU " + G + " {{instance}}"
    return dashboard("gpuprobe-pcie", "gpuprobe / PCIe and probes",
                     "Measured PCIe bandwidth against the link's rate, link state, and the "
                     "active probes.", [
        P("Measured PCIe bandwidth and the link's rate", "Bps",
          [Q(f"gpuprobe_probe_pcie_bandwidth_bytes_per_second{{{S}}}", g + " {{direction}}"),
           Q(f"gpuprobe_probe_pcie_link_bytes_per_second{{{S}}}", g + " link rate")],
          width=24),
        P("Measured over theoretical", "percentunit",
          [Q(f"gpuprobe_probe_pcie_bandwidth_ratio{{{S}}}", g + " {{direction}}")],
          thresholds=[(None, "red"), (0.7, "green")]),
        P("Link generation, now and max", "none",
          [Q(f"gpuprobe_pcie_link_generation{{{S}}}", g + " now"),
           Q(f"gpuprobe_pcie_link_max_generation{{{S}}}", g + " max")]),
        P("Link width, now and max", "none",
          [Q(f"gpuprobe_pcie_link_width{{{S}}}", g + " now"),
           Q(f"gpuprobe_pcie_link_max_width{{{S}}}", g + " max")]),
        P("Replays", "ops", [Q(f"rate(gpuprobe_pcie_replays_total{{{S}}}[{RI}])", g)]),
        P("Launch latency", "s",
          [Q(f"gpuprobe_probe_launch_latency_seconds{{{S}}}", g)],
          description="Launch to first block, from the last launch probe (cached)."),
        P("SMs reached within the bound", "percentunit",
          [Q(f"gpuprobe_probe_sm_reach_ratio{{{S}}}", g)]),
        P("Probe runs by outcome, last hour", "short",
          [Q(sum_by("probe, outcome", "increase", "gpuprobe_probe_runs_total", window="1h"),
             "{{probe}} {{outcome}}")]),
        P("Probe skips by reason, last hour", "short",
          [Q(sum_by("probe, reason", "increase", "gpuprobe_probe_skips_total", window="1h"),
             "{{probe}} {{reason}}")]),
        P("Probe duty cycle (GPU time held)", "percentunit",
          [Q(f"rate(gpuprobe_probe_gpu_seconds_total{{{S}}}[{RI}])", g + " {{probe}}")]),
        P("Probe duration and last success", "s",
          [Q(f"gpuprobe_probe_duration_seconds{{{S}}}", g + " {{probe}}"),
           Q(f"time() - gpuprobe_probe_last_success_timestamp_seconds{{{S}}}",
             g + " {{probe}} since success")]),
    ])


def exporter() -> dict:
    return dashboard("gpuprobe-exporter", "gpuprobe / Exporter health",
                     "gpuprobe itself: scrapes, collectors, backends, its own cost.", [
        P("Scrape up", "none", [Q(f'up{{job="gpuprobe", {I}}}', "{{instance}}")], "stat",
          width=6, height=4, thresholds=[(None, "red"), (1, "green")]),
        P("Backends up", "none",
          [Q(f"gpuprobe_backend_up{{{I}}}", "{{instance}} {{backend}}")], "stat", width=6,
          height=4),
        P("Build", "none", [Q(f"gpuprobe_build_info{{{I}}}")], "table", width=6, height=4),
        P("Backend versions", "none", [Q(f"gpuprobe_backend_info{{{I}}}")], "table", width=6,
          height=4),
        P("Binding/library version mismatch", "none",
          [Q(f"gpuprobe_backend_version_mismatch{{{I}}}", "{{instance}} {{backend}}")],
          "stat", width=6, height=4, thresholds=[(None, "green"), (1, "red")],
          description="1: the vendor library's Python binding does not match the library; "
                      "the AMD backend then refuses to run."),
        P("Collector up", "none",
          [Q(f"gpuprobe_collector_up{{{I}}}", "{{instance}} {{collector}}"),
           Q(f"gpuprobe_collector_stalled{{{I}}}", "{{instance}} {{collector}} stalled")]),
        P("Collector duration", "s",
          [Q(f"gpuprobe_collector_duration_seconds{{{I}}}", "{{instance}} {{collector}}")]),
        P("Collector errors by class", "ops",
          [Q(sum_by("instance, collector, class", "rate", "gpuprobe_collector_errors_total", I),
             "{{instance}} {{collector}} {{class}}")]),
        P("Since each collector's last success", "s",
          [Q(f"time() - gpuprobe_collector_last_success_timestamp_seconds{{{I}}}",
             "{{instance}} {{collector}}")]),
        P("Scrape duration", "s",
          [Q(f'scrape_duration_seconds{{job="gpuprobe", {I}}}', "{{instance}}")]),
        P("Resident memory", "bytes",
          [Q(f'process_resident_memory_bytes{{job="gpuprobe", {I}}}', "{{instance}} RSS")]),
        P("CPU used", "percentunit",
          [Q(f'rate(process_cpu_seconds_total{{job="gpuprobe", {I}}}[{RI}])',
             "{{instance}}")]),
        P("Series exported", "short",
          [Q(f'scrape_samples_scraped{{job="gpuprobe", {I}}}', "{{instance}}")]),
        P("HTTP requests by handler and code", "reqps",
          [Q(sum_by("instance, handler, code", "rate", "gpuprobe_http_requests_total", I),
             "{{instance}} {{handler}} {{code}}")]),
        P("Refused connections and requests", "ops",
          [Q(sum_by("instance, reason", "rate", "gpuprobe_http_refused_total", I),
             "{{instance}} {{reason}}")],
          description="Slow or idle clients cut off, connections over the cap, failed TLS "
                      "handshakes and client certificates, wrong passwords "
                      "(docs/security.md)."),
        P("HTTP connections", "short",
          [Q(f"gpuprobe_http_connections{{{I}}}", "{{instance}} open"),
           Q(f"gpuprobe_http_connections_max{{{I}}}", "{{instance}} max")]),
        P("Web config reload", "none",
          [Q(f"gpuprobe_web_config_last_reload_successful{{{I}}}", "{{instance}}")], "stat",
          width=6, height=4, thresholds=[(None, "red"), (1, "green")],
          description="0: the web config file (TLS, basic auth) changed and failed to load; "
                      "the previous one is still served. No data without a web config file."),
        P("Since the web config last loaded", "s",
          [Q(f"time() - gpuprobe_web_config_last_reload_success_timestamp_seconds{{{I}}}",
             "{{instance}}")], "stat", width=6, height=4),
    ])


DASHBOARDS = {"gpuprobe-fleet.json": fleet, "gpuprobe-device.json": device,
              "gpuprobe-processes-leaks.json": processes, "gpuprobe-pcie-probes.json": pcie,
              "gpuprobe-exporter.json": exporter}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
            for name, build in DASHBOARDS.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    stale = []
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("stale, run python grafana/build.py: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
