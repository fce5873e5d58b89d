"""The shipped alert rules: promtool-clean, unit-tested, documented, and the leak alert fed
with the detector's own output on the evaluation corpus."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import yaml

from gpuprobe.daemon.analysis.leaks import LeakDetector
from gpuprobe.daemon.core.config import LeaksConfig
from gpuprobe.daemon.export import catalog

from .conftest import ROOT

RULES = ROOT / "deploy" / "prometheus" / "gpuprobe-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "gpuprobe-rules.test.yml"
ALERTS_DOC = ROOT / "docs" / "alerts.md"


def alerts() -> list[dict]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r for g in data["groups"] for r in g["rules"] if "alert" in r]


def promtool_run(promtool: str, *args: str, cwd: Path | None = None) -> str:
    r = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    return out


def test_promtool_check_rules_is_clean(promtool):
    out = promtool_run(promtool, "check", "rules", str(RULES))
    assert "SUCCESS" in out and "WARNING" not in out.upper(), out


def test_promtool_unit_tests_pass(promtool):
    out = promtool_run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert "SUCCESS" in out, out


def test_every_alert_has_a_firing_and_a_quiet_case():
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    firing, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def test_every_recording_rule_is_tested_and_uses_known_metrics():
    """Each record: rule has a promql_expr_test of its own name, and reads only catalogue
    families or the group's own records."""
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    records = [r for g in data["groups"] for r in g["rules"] if "record" in r]
    assert len(records) >= 20
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    tested = {case["expr"].strip() for t in tests for case in t.get("promql_expr_test", [])}
    names = {r["record"] for r in records}
    assert names - tested == set(), "recording rules without a promtool test"
    known = {m.name for m in catalog.CATALOG} | names
    for r in records:
        name = r["record"]
        assert re.fullmatch(r"(instance|cluster|model):gpuprobe_[a-z_]+:[a-z]+", name), name
        used = set(re.findall(r"\b(?:[a-z]+:)?gpuprobe_[a-z0-9_]+(?::[a-z]+)?", r["expr"]))
        assert used and used <= known, (name, used - known)


def test_every_alert_is_documented_labelled_and_uses_known_metrics():
    doc = ALERTS_DOC.read_text(encoding="utf-8")
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", doc, flags=re.M)}
    known = {m.name for m in catalog.CATALOG} | {"up"}
    for a in alerts():
        name = a["alert"]
        assert a["labels"]["severity"] in ("critical", "warning"), name
        ann = a["annotations"]
        assert ann["summary"] and ann["description"], name
        assert ann["runbook"] == f"docs/alerts.md#{name.lower()}", name
        assert name.lower() in anchors, f"{name} has no section in docs/alerts.md"
        used = set(re.findall(r"\b(?:gpuprobe_[a-z0-9_]+|up)\b(?=\s*[{\[)=<>! ]|\s*$)",
                              a["expr"]))
        assert used and used <= known, (name, used - known)
        assert not re.search(r'vendor\s*=~?\s*"', a["expr"]), f"{name} selects a vendor"
        # NVIDIA 0 and AMD 0 are both gpu="0": a GPU is named by vendor and index together.
        for text in ann.values():
            bare = text.replace("{{ $labels.vendor }}:{{ $labels.gpu }}", "")
            assert "$labels.gpu" not in bare, (name, text)


# -- the leak alert on the detector's own output ------------------------------------------------

def _corpus():
    spec = importlib.util.spec_from_file_location("leaks_bench", ROOT / "benchmarks" / "leaks.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def detector_series(fn, minutes: int) -> tuple[list[int], list[float]]:
    """What Prometheus would scrape once a minute from the daemon: the suspected flag and the
    growth rate, with the detector fed a sample every 10 s."""
    det = LeakDetector(LeaksConfig())
    flags, rates = [], []
    t = 0.0
    for minute in range(minutes + 1):
        while t <= minute * 60:
            det.observe("p", t, fn(t))
            a = det.assess("p")
            t += 10.0
        flags.append(int(a is not None and a.suspected))
        rates.append(0.0 if a is None else a.slope)
    return flags, rates


def test_leak_alert_on_detector_output_fires_for_leaks_only(promtool, tmp_path):
    bench = _corpus()
    traces = {t.name: t for t in bench.corpus()}
    chosen = {
        "leak": traces["steady leak, 2 MiB/min from the process's start, noise 16 MiB"],
        "staircase": traces["step leak: +64 MiB every 5 min, noise 16 MiB"],
        "settling": traces["caching allocator settling: +512 MiB every 4 min for 20 min"],
        "sawtooth": traces["allocator sawtooth, 4-12 GiB every 10 min"],
        "fastsaw": traces["fast allocator sawtooth, 2-6 GiB every 45 s"],
        "warmup": traces["warm-up to 22 GiB over 5 min, then plateau"],
        "staged": traces["staged warm-up: +4 GiB at 0, 2 and 4 min"],
        "epochs": traces["training epochs: 30 GiB, 52 GiB peaks of 8 min every 40 min"],
    }
    minutes = 90
    series, first = [], {}
    for i, (name, trace) in enumerate(chosen.items()):
        flags, rates = detector_series(trace.fn, minutes)
        first[name] = flags.index(1) if 1 in flags else None
        labels = (f'instance="node1:14787",job="gpuprobe",gpu="0",uuid="GPU-0",'
                  f'vendor="nvidia",pid="{100 + i}",process_name="{name}"')
        series.append({"series": f"gpuprobe_process_memory_leak_suspected{{{labels}}}",
                       "values": " ".join(map(str, flags))})
        series.append({"series": f"gpuprobe_process_memory_growth_bytes_per_second{{{labels}}}",
                       "values": " ".join(f"{r:.3f}" for r in rates)})
    assert first["leak"] is not None and first["staircase"] is not None
    assert all(first[n] is None
               for n in ("settling", "sawtooth", "fastsaw", "warmup", "staged", "epochs"))

    cases = []
    for minute in range(0, minutes + 1, 5):
        # The alert waits 2 minutes (its `for`); firing needs the flag at 1 since then.
        firing = [n for n in ("leak", "staircase") if minute >= first[n] + 2]
        cases.append({"eval_time": f"{minute}m", "alertname": "GpuprobeMemoryLeakSuspected",
                      "exp_alerts": [{"exp_labels": {"severity": "warning",
                                                     "instance": "node1:14787",
                                                     "job": "gpuprobe", "gpu": "0",
                                                     "uuid": "GPU-0", "vendor": "nvidia",
                                                     "pid": str(100 + list(chosen).index(n)),
                                                     "process_name": n}}
                                     for n in firing]})
    # The rules as shipped, annotations left out: gpuprobe-rules.test.yml checks those, and
    # promtool compares them whenever an alert fires.
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    test_file = tmp_path / "leak.test.yml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": cases}]}))
    out = promtool_run(promtool, "test", "rules", test_file.name, cwd=tmp_path)
    assert "SUCCESS" in out, out


def test_example_prometheus_config_is_valid_and_loads_the_rules(promtool):
    config = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    out = promtool_run(promtool, "check", "config", config.name, cwd=config.parent)
    every = [r for g in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
             for r in g["rules"]]
    assert "SUCCESS" in out and f"{len(every)} rules found" in out, out
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert [j["job_name"] for j in data["scrape_configs"]] == ["gpuprobe"]


# -- the optional compatibility rules (docs/migration.md) -----------------------------------

COMPAT = ROOT / "deploy" / "prometheus" / "gpuprobe-compat-rules.yml"
COMPAT_TESTS = ROOT / "deploy" / "prometheus" / "gpuprobe-compat-rules.test.yml"


def test_compat_rules_are_current_clean_and_each_old_name_tested(promtool):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-compat-rules.py"),
                        "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = promtool_run(promtool, "check", "rules", str(COMPAT))
    assert "SUCCESS" in out and "WARNING" not in out.upper(), out
    out = promtool_run(promtool, "test", "rules", COMPAT_TESTS.name, cwd=COMPAT_TESTS.parent)
    assert "SUCCESS" in out, out
    records = {r["record"] for g in yaml.safe_load(COMPAT.read_text(encoding="utf-8"))["groups"]
               for r in g["rules"]}
    tested = {case["expr"] for t in yaml.safe_load(COMPAT_TESTS.read_text(encoding="utf-8"))[
        "tests"] for case in t["promql_expr_test"]}
    assert len(records) >= 40 and records == tested
    known = {m.name for m in catalog.CATALOG}
    for g in yaml.safe_load(COMPAT.read_text(encoding="utf-8"))["groups"]:
        for rule in g["rules"]:
            used = set(re.findall(r"\bgpuprobe_[a-z0-9_]+", rule["expr"]))
            assert used and used <= known, (rule["record"], used - known)
    doc = (ROOT / "docs" / "migration.md").read_text(encoding="utf-8")
    missing = {n for n in records if f"`{n}`" not in doc}
    assert not missing, f"not in docs/migration.md: {sorted(missing)}"
