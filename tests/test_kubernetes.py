"""The Kubernetes manifests: valid against the Kubernetes schemas (kubernetes-validate,
offline), consistent with each other, and the PrometheusRule equal to the rules file."""

from __future__ import annotations

import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from gpuprobe.daemon.core import config as config_mod

from .conftest import ROOT

K8S = ROOT / "deploy" / "kubernetes" / "base"
OVERLAYS = ROOT / "deploy" / "kubernetes"
RULES = ROOT / "deploy" / "prometheus" / "gpuprobe-rules.yml"
CORE = ["namespace.yaml", "configmap.yaml", "daemonset.yaml", "service.yaml",
        "networkpolicy.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", CORE)
def test_core_manifests_validate_strictly_against_the_kubernetes_schema(name):
    kubernetes_validate.validate(load(name), kubernetes_validate.latest_version(), strict=True)


def test_validator_rejects_a_broken_manifest():
    ds = load("daemonset.yaml")
    ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, kubernetes_validate.latest_version(), strict=True)


def test_daemonset_has_what_process_attribution_and_gpus_need():
    ds = load("daemonset.yaml")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    c = pod["containers"][0]
    assert c["securityContext"]["privileged"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "runtimeClassName" not in pod and "env" not in c  # the overlays' business
    assert c["ports"][0] == {"name": "metrics", "containerPort": 14787, "protocol": "TCP"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod.get(
        "labels", ds["spec"]["template"]["metadata"]["labels"]).items()


def test_configmap_is_a_valid_gpuprobe_config():
    data = yaml.safe_load(load("configmap.yaml")["data"]["gpuprobe.yaml"])
    cfg = config_mod.from_mapping(data)
    assert cfg.listen_address()[1] == 14787


def test_service_and_servicemonitor_select_the_pods():
    ds, svc, sm = load("daemonset.yaml"), load("service.yaml"), load("servicemonitor.yaml")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint["port"] == svc["spec"]["ports"][0]["name"]
    # The Operator names the job after the Service: the exporter-down alert selects it.
    assert svc["metadata"]["name"] == "gpuprobe"
    assert 'up{job="gpuprobe"}' in RULES.read_text(encoding="utf-8")


def test_prometheusrule_holds_the_rules_file_and_is_up_to_date(promtool, tmp_path):
    pr = load("prometheusrule.yaml")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1" and pr["kind"] == "PrometheusRule"
    assert pr["spec"]["groups"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-prometheusrule.py"),
                        "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rules = tmp_path / "from-prometheusrule.yml"
    rules.write_text(yaml.safe_dump({"groups": pr["spec"]["groups"]}))
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_kustomization_lists_every_manifest():
    k = load("kustomization.yaml")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == files
    image = load("daemonset.yaml")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split(":")[0] in {i["name"] for i in k["images"]}


def test_network_policy_lets_only_prometheus_reach_the_metrics_port():
    policy = load("networkpolicy.yaml")
    pod = load("daemonset.yaml")["spec"]["template"]
    assert not pod["spec"].get("hostNetwork"), "NetworkPolicy does not apply to host networking"
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= pod["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert "namespaceSelector" in peer  # same rule: Prometheus pods in that namespace only
    ports = pod["spec"]["containers"][0]["ports"]
    assert [p["port"] for p in rule["ports"]] == [p["name"] for p in ports]


def _render(path) -> list[dict]:
    import shutil

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_kustomize_renders_every_manifest():
    kinds = {d["kind"] for d in _render(K8S)}
    assert {"DaemonSet", "NetworkPolicy", "ConfigMap", "Service"} <= kinds


CORE_KINDS = {"Namespace", "ConfigMap", "DaemonSet", "Service", "NetworkPolicy"}


def _daemonset(docs: list[dict]) -> dict:
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    return ds


def _node_terms(ds: dict) -> list[dict]:
    affinity = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return [{e["key"]: (e["operator"], e["values"]) for e in t["matchExpressions"]}
            for t in terms]


@pytest.mark.parametrize("vendor", ["nvidia", "amd"])
def test_each_overlay_renders_and_validates_strictly(vendor):
    docs = _render(OVERLAYS / vendor)
    assert {"DaemonSet", "ServiceMonitor", "PrometheusRule"} <= {d["kind"] for d in docs}
    for d in docs:
        if d["kind"] in CORE_KINDS:
            kubernetes_validate.validate(d, kubernetes_validate.latest_version(), strict=True)


def test_the_nvidia_overlay_runs_on_nvidia_nodes_only_with_the_nvidia_runtime():
    ds = _daemonset(_render(OVERLAYS / "nvidia"))
    assert ds["metadata"]["name"] == "gpuprobe"  # the Service and the alerts' job name
    assert _node_terms(ds) == [{"nvidia.com/gpu.present": ("In", ["true"])},
                               {"feature.node.kubernetes.io/pci-10de.present": ("In", ["true"])}]
    pod = ds["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    c = pod["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and "compute" in env[
        "NVIDIA_DRIVER_CAPABILITIES"]
    assert c["securityContext"]["privileged"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_amd_overlay_runs_on_amd_nodes_with_the_device_nodes_and_the_hosts_rocm():
    ds = _daemonset(_render(OVERLAYS / "amd"))
    assert ds["metadata"]["name"] == "gpuprobe-amd"  # beside the NVIDIA one in a mixed cluster
    assert _node_terms(ds) == [{"feature.node.kubernetes.io/amd-gpu": ("In", ["true"])},
                               {"feature.node.kubernetes.io/pci-1002.present": ("In", ["true"])}]
    pod = ds["spec"]["template"]["spec"]
    assert "runtimeClassName" not in pod
    c = pod["containers"][0]
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in c["env"]}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["PYTHONPATH"] == "/opt/rocm/share/amd_smi" and env["ROCM_PATH"] == "/opt/rocm"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v.get("hostPath", {}).get("path") for v in pod["volumes"]}
    for path in ("/dev/kfd", "/dev/dri", "/opt/rocm"):
        assert volumes[mounts[path]] == path, path
    assert c["securityContext"]["privileged"] is True
    assert "/etc/gpuprobe" in mounts and "/tmp" in mounts  # the base's mounts kept


@pytest.mark.parametrize("vendor", ["nvidia", "amd"])
def test_pods_are_named_from_the_kubelets_directory_mounted_read_only(vendor):
    docs = _render(OVERLAYS / vendor)
    pod = _daemonset(docs)["spec"]["template"]["spec"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    logs = yaml.safe_load(cm["data"]["gpuprobe.yaml"])["host"]["pod_logs_dir"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == logs]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["hostPath"]["path"] == "/var/log/pods"
    # the pod's namespace and pod labels must not be renamed exported_*
    (sm,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert all(e.get("honorLabels") is True for e in sm["spec"]["endpoints"])


def test_runbook_base_gives_every_alert_an_absolute_runbook_url(promtool, tmp_path):
    base = "https://docs.example.com/gpuprobe/alerts.html"
    gen = [sys.executable, str(ROOT / "scripts" / "gen-prometheusrule.py")]
    r = subprocess.run([*gen, "--runbook-base", base, "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    shipped = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    made = yaml.safe_load((tmp_path / "gpuprobe-rules.yml").read_text(encoding="utf-8"))
    pr = yaml.safe_load((tmp_path / "prometheusrule.yaml").read_text(encoding="utf-8"))
    assert pr["spec"]["groups"] == made["groups"]
    alerts = 0
    for g_made, g in zip(made["groups"], shipped, strict=True):
        for r_made, rule in zip(g_made["rules"], g["rules"], strict=True):
            if "alert" not in rule:
                assert r_made == rule
                continue
            alerts += 1
            ann = dict(r_made["annotations"])
            anchor = rule["annotations"]["runbook"].split("#")[1]
            assert ann.pop("runbook_url") == f"{base}#{anchor}"
            assert {**r_made, "annotations": ann} == rule
    assert alerts >= 15
    check = subprocess.run([promtool, "check", "rules", str(tmp_path / "gpuprobe-rules.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    for bad in ("docs.example.com/alerts", "ftp://x/alerts", f"{base}#x"):
        r = subprocess.run([*gen, "--runbook-base", bad, "--out-dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--runbook-base" in r.stderr
