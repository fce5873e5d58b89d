"""Pod names and namespaces from the kubelet's pod log directory, and on process series."""

from __future__ import annotations

import logging
import os

import pytest
from prometheus_client import generate_latest

from gpuprobe.probes.host import ProcessResolver
from gpuprobe.probes.pods import PodNames, parse_entry
from tests.conftest import make_daemon
from tests.test_host import CID, POD, make_proc

CGROUP = (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
          f"{POD.replace('-', '_')}.slice/cri-containerd-{CID}.scope")


@pytest.mark.parametrize("entry, parsed", [
    (f"serving_inference-7d9f8b6c5-x2k4q_{POD}", (POD, "serving", "inference-7d9f8b6c5-x2k4q")),
    ("kube-system_etcd-node1_" + "ab" * 16, ("ab" * 16, "kube-system", "etcd-node1")),
    (f"ns_pod.with.dots_{POD}", (POD, "ns", "pod.with.dots")),
    (POD, None),                                  # kubelets before 1.14: the UID alone
    (f"ns_name_{POD}_extra", None),
    (f"_name_{POD}", None),
    ("ns__" + POD, None),
    ("ns_name_", None),
    ("x" * 64 + f"_name_{POD}", None),            # longer than a namespace can be
])
def test_parse_entry(entry, parsed):
    assert parse_entry(entry) == parsed


def test_lookup_reads_only_directory_names_and_relists_for_a_new_pod(tmp_path, monkeypatch):
    (tmp_path / f"serving_web-0_{POD}").mkdir()
    (tmp_path / f"serving_web-0_{POD}" / "web").mkdir()
    other = "11111111-2222-4333-8444-555555555555"
    opened: list[str] = []
    real_open = open

    def spy(path, *a, **k):
        opened.append(str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    pods = PodNames(str(tmp_path), relist=0)
    assert pods.lookup(POD) == ("serving", "web-0")
    assert pods.lookup(other) is None
    (tmp_path / f"research_trainer-3_{other}").mkdir()
    assert pods.lookup(other) == ("research", "trainer-3")
    assert opened == []
    # a pod that is gone leaves the map with the next listing
    os.rmdir(tmp_path / f"serving_web-0_{POD}" / "web")
    os.rmdir(tmp_path / f"serving_web-0_{POD}")
    assert pods.lookup("22222222-2222-4333-8444-555555555555") is None
    assert pods.lookup(POD) is None


def test_an_unknown_pod_costs_one_listing_per_interval_and_one_warning(tmp_path, caplog,
                                                                        monkeypatch):
    listings = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: listings.append(p) or real(p))
    pods = PodNames(str(tmp_path / "absent"), relist=3600)
    with caplog.at_level(logging.WARNING, logger="gpuprobe.host"):
        for _ in range(50):
            assert pods.lookup(POD) is None
    assert len(listings) == 1
    warned = [r.getMessage() for r in caplog.records if "kubelet" in r.getMessage()]
    assert len(warned) == 1 and POD in warned[0] and "host.pod_logs_dir" in warned[0]


def test_an_empty_root_turns_it_off(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "scandir", lambda p: pytest.fail("listed"))
    assert PodNames("").lookup(POD) is None


def test_the_resolver_names_the_pod_and_catches_up_when_its_directory_appears(tmp_path):
    proc, logs = tmp_path / "proc", tmp_path / "pods"
    logs.mkdir()
    make_proc(proc, 100, "trainer", 500, CGROUP)
    make_proc(proc, 200, "plain", 600)
    r = ProcessResolver(str(proc), revalidate=0, pods=PodNames(str(logs), relist=0))
    got = r.resolve_all([100, 200])
    assert (got[100].pod_uid, got[100].pod_namespace, got[100].pod_name) == (POD, None, None)
    assert (got[200].pod_namespace, got[200].pod_name) == (None, None)
    (logs / f"research_trainer-0_{POD}").mkdir()
    got = r.resolve_all([100, 200])
    assert (got[100].container_id, got[100].pod_namespace, got[100].pod_name) == (
        CID, "research", "trainer-0")


def gib(n: int) -> dict:
    return {"pattern": "constant", "size": f"{n}GiB"}


def test_process_series_carry_namespace_and_pod_from_the_simulated_kubelet():
    daemon = make_daemon({"devices": [{"vendor": "nvidia", "processes": [
        {"pid": 4101, "name": "trainer", "pod": POD, "container": CID,
         "pod_name": "trainer-0", "namespace": "research", "memory": gib(4)},
        {"pid": 4102, "name": "unnamed_pod", "container": CID,
         "pod": "11111111-2222-4333-8444-555555555555", "memory": gib(2)},
    ]}]})
    try:
        daemon.scheduler.run_once()
        body = generate_latest(daemon.registry).decode()
    finally:
        daemon.stop()
    named = [ln for ln in body.splitlines()
             if ln.startswith("gpuprobe_process_memory_used_bytes{") and 'pid="4101"' in ln]
    assert len(named) == 1 and 'namespace="research"' in named[0] \
        and 'pod="trainer-0"' in named[0] and f'pod_uid="{POD}"' in named[0]
    other = [ln for ln in body.splitlines()
             if ln.startswith("gpuprobe_process_memory_used_bytes{") and 'pid="4102"' in ln]
    assert len(other) == 1 and "namespace=" not in other[0] and 'pod_uid="' in other[0]


@pytest.mark.parametrize("process, message", [
    ({"pod": "not-a-uid"}, "devices[0].processes[0].pod: expected a pod UID"),
    ({"pod": POD, "pod_name": "Trainer", "namespace": "x"},
     "devices[0].processes[0].pod_name: expected a Kubernetes name"),
    ({"pod": POD, "pod_name": "t", "namespace": "a_b"},
     "devices[0].processes[0].namespace: expected a Kubernetes name"),
    ({"pod_name": "t", "namespace": "n"}, "pod_name and namespace go together, with pod"),
    ({"pod": POD, "pod_name": "t"}, "pod_name and namespace go together, with pod"),
])
def test_scenario_pod_fields_are_checked(process, message):
    from gpuprobe.probes.sim.scenario import ScenarioError, parse

    with pytest.raises(ScenarioError, match=message.replace(".", r"\.").replace("[", r"\[")
                       .replace("]", r"\]")):
        parse({"devices": [{"vendor": "nvidia", "processes": [
            {"pid": 5, "memory": {"pattern": "constant", "size": "1GiB"}, **process}]}]})
