"""/proc parsing: names, start times, containers and pods, pid reuse."""

from __future__ import annotations

import errno
import os
import time

import pytest

from gpuprobe.probes import host
from gpuprobe.probes.host import ProcessResolver, parse_cgroup, parse_stat

CID = "0123456789abcdef" * 4
POD = "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"


def stat_line(pid: int, name: str, start: int) -> str:
    return (f"{pid} ({name}) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start} "
            "1000 100 18446744073709551615\n")


def test_parse_stat_handles_names_with_spaces_and_parentheses():
    assert parse_stat(stat_line(42, "python3", 123456)) == ("python3", 123456)
    assert parse_stat(stat_line(42, "my (odd) name", 7)) == ("my (odd) name", 7)


@pytest.mark.parametrize("text, container, pod", [
    (f"0::/system.slice/docker-{CID}.scope", CID, None),
    (f"12:memory:/docker/{CID}\n11:cpu:/docker/{CID}", CID, None),
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
     f"{POD.replace('-', '_')}.slice/cri-containerd-{CID}.scope", CID, POD),
    (f"11:memory:/kubepods/burstable/pod{POD}/{CID}", CID, POD),
    (f"0::/machine.slice/libpod-{CID}.scope/container", CID, None),
    (f"0::/kubepods.slice/kubepods-pod{POD.replace('-', '_')}.slice/crio-{CID}.scope",
     CID, POD),
    ("0::/user.slice/user-1000.slice/session-2.scope", None, None),
    ("", None, None),
    # a static pod's UID is its manifest's hash
    ("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
     f"{'ab' * 16}.slice/cri-containerd-{CID}.scope", CID, "ab" * 16),
])
def test_parse_cgroup(text, container, pod):
    assert parse_cgroup(text) == (container, pod)


def make_proc(root, pid, name, start, cgroup=""):
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(stat_line(pid, name, start))
    (d / "cgroup").write_text(cgroup)


def test_resolver_tells_a_reused_pid_apart(tmp_path):
    make_proc(tmp_path, 100, "first", 500, f"0::/system.slice/docker-{CID}.scope")
    r = ProcessResolver(str(tmp_path))
    a = r.resolve(100)
    assert (a.name, a.start_ticks, a.container_id) == ("first", 500, CID)
    # The process ends and another one gets the same pid.
    make_proc(tmp_path, 100, "second", 900)
    b = r.resolve(100)
    assert (b.name, b.start_ticks, b.container_id) == ("second", 900, None)


def test_resolver_forgets_ended_processes_and_warns_once_when_blind(tmp_path, caplog):
    make_proc(tmp_path, 100, "a", 1)
    make_proc(tmp_path, 200, "b", 2)
    r = ProcessResolver(str(tmp_path), revalidate=0)
    assert set(r.resolve_all([100, 200])) == {100, 200}
    os.remove(tmp_path / "200" / "stat")
    assert set(r.resolve_all([100, 200])) == {100}
    assert len(r._cache) == 1
    r.resolve_all([7777, 8888])
    r.resolve_all([7777])
    assert sum("not visible" in rec.message for rec in caplog.records) == 0
    assert sum("none of the GPU processes" in rec.message for rec in caplog.records) == 1


def test_a_reused_pid_is_noticed_within_the_revalidation_window(tmp_path):
    make_proc(tmp_path, 300, "old", 10)
    r = ProcessResolver(str(tmp_path), revalidate=0.2)
    assert r.resolve_all([300])[300].name == "old"
    make_proc(tmp_path, 300, "new", 20)  # the pid is reused between two polls
    assert r.resolve_all([300])[300].name == "old"  # within the window: not yet re-read
    time.sleep(0.25)
    assert r.resolve_all([300])[300].name == "new"
    assert r.resolve_all([300, 301]).keys() == {300}  # a changed pid set is resolved afresh


class _FdLimit:
    """``open`` for the host module that fails with EMFILE (as with no descriptor left)
    while ``on``, for the files named in ``only`` (all when empty)."""

    def __init__(self, only: tuple[str, ...] = ()) -> None:
        self.on = True
        self.only = only
        self.failed = 0

    def __call__(self, path, *args, **kwargs):
        if self.on and (not self.only or str(path).endswith(self.only)):
            self.failed += 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(path))
        return open(path, *args, **kwargs)


def test_out_of_fds_is_named_as_such_and_costs_only_that_poll(tmp_path, caplog, monkeypatch):
    """Issue 11, defect 10: out of file descriptors, the resolver warned that the processes
    were invisible ("run in the host PID namespace"), and the empty answer was reused for
    up to a revalidation period. It names the real cause, keeps no partial answer, and
    the names are back at the first poll with descriptors."""
    make_proc(tmp_path, 100, "trainer", 1, f"0::/system.slice/docker-{CID}.scope")
    make_proc(tmp_path, 200, "infer", 2)
    r = ProcessResolver(str(tmp_path), revalidate=60)
    limit = _FdLimit()
    monkeypatch.setattr(host, "open", limit, raising=False)
    with caplog.at_level("INFO", logger="gpuprobe.host"):
        for _ in range(3):
            found, unchecked = r.resolve_all_checked([100, 200])
            assert found == {} and unchecked == {100, 200}
        limit.on = False
        found = r.resolve_all([100, 200])
    assert {p: h.name for p, h in found.items()} == {100: "trainer", 200: "infer"}
    assert found[100].container_id == CID
    said = [rec.getMessage() for rec in caplog.records]
    assert not any("PID namespace" in m or "none of the GPU processes" in m for m in said)
    warned = [m for m in said if "out of file descriptors" in m]
    assert len(warned) == 1 and "EMFILE" in warned[0], said
    assert sum("available again" in m for m in said) == 1


def test_out_of_fds_between_stat_and_cgroup_does_not_cache_a_missing_container(
        tmp_path, monkeypatch):
    make_proc(tmp_path, 100, "trainer", 1, f"0::/system.slice/docker-{CID}.scope")
    r = ProcessResolver(str(tmp_path), revalidate=60)
    limit = _FdLimit(only=("cgroup",))
    monkeypatch.setattr(host, "open", limit, raising=False)
    assert r.resolve_all([100]) == {}
    assert limit.failed == 1
    limit.on = False
    assert r.resolve_all([100])[100].container_id == CID
