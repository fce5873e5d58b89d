"""What the host knows about a GPU process: name, start time, container and pod.

Vendor libraries give only a pid. This module reads ``<proc_root>/<pid>/stat`` (name and start
time) and ``<proc_root>/<pid>/cgroup`` (container id and Kubernetes pod UID) once per process,
and asks :class:`~gpuprobe.probes.pods.PodNames` for the pod's name and namespace.
A pid seen in the previous poll is taken to be the same process until its start time is
checked again, at most ``revalidate`` seconds later (60 by default): a pid reused by a new
GPU process within that time is noticed that much late. Re-reading every pid on every poll
would cost as much as the NVML calls themselves. ``proc_root`` is ``/proc``, ``/host/proc`` in a
container that mounts the host's, or the simulator's fake tree. psutil is not used here because
it neither parses cgroups nor takes a per-instance proc root.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import time
from dataclasses import dataclass

from gpuprobe.probes.pods import PodNames

log = logging.getLogger("gpuprobe.host")

# A container id is the last 64-hex-digit component of a cgroup path, whatever the runtime:
# docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope,
# /docker/<id>, /kubepods/burstable/pod<uid>/<id>.
_CONTAINER_RE = re.compile(r"(?:^|[/\-:])([0-9a-f]{64})(?:\.scope)?(?=/|$)")
# kubepods-burstable-pod<uid with _>.slice (systemd driver) or /pod<uid>/ (cgroupfs driver); a
# static pod's UID is the 32-hex-digit hash of its manifest.
_POD_RE = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
    r"|[0-9a-f]{32}(?=\.slice|/|$))")


# The process (EMFILE) or the system (ENFILE) has no file descriptor left: a /proc read fails
# for that reason, not because the process is invisible or gone.
FD_EXHAUSTED = (errno.EMFILE, errno.ENFILE)


class OutOfFds(Exception):
    """A /proc read failed because no file descriptor was left (EMFILE or ENFILE)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def describe_fd_error(e: OSError) -> str:
    """'EMFILE: Too many open files' for an OSError."""
    name = errno.errorcode.get(e.errno or 0, str(e.errno))
    return f"{name}: {e.strerror or e}"


@dataclass(frozen=True, slots=True)
class HostProcess:
    pid: int
    start_ticks: int
    name: str
    container_id: str | None = None
    pod_uid: str | None = None
    pod_namespace: str | None = None
    pod_name: str | None = None


def parse_stat(text: str) -> tuple[str, int]:
    """(name, start time in clock ticks since boot) from a ``/proc/<pid>/stat`` line."""
    # The name sits in parentheses and may itself contain spaces and parentheses.
    open_, close = text.index("("), text.rindex(")")
    name = text[open_ + 1 : close]
    rest = text[close + 2 :].split()
    # rest[0] is field 3 (state); starttime is field 22.
    return name, int(rest[19])


def parse_cgroup(text: str) -> tuple[str | None, str | None]:
    """(container id, pod UID) from ``/proc/<pid>/cgroup``; None where not in one."""
    container = pod = None
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        if container is None:
            ids = _CONTAINER_RE.findall(path)
            if ids:
                container = ids[-1]
        if pod is None:
            m = _POD_RE.search(path)
            if m:
                pod = m.group(1).replace("_", "-")
    return container, pod


class ProcessResolver:
    """pid -> HostProcess, cached per (pid, start time) so a reused pid is a new process."""

    def __init__(self, proc_root: str = "/proc", revalidate: float = 60.0,
                 pods: PodNames | None = None) -> None:
        self.proc_root = proc_root
        self.pods = pods
        self.revalidate = revalidate
        self._cache: dict[tuple[int, int], HostProcess] = {}
        self._current: dict[int, tuple[HostProcess, float]] = {}  # pid -> (process, checked)
        self._last: tuple[tuple[int, ...], float, dict[int, HostProcess]] | None = None
        self._warned_invisible = False
        self._out_of_fds = False  # the last poll could not read some pids for want of fds
        self._lock = threading.Lock()

    def _read(self, pid: int, name: str) -> str | None:
        try:
            with open(os.path.join(self.proc_root, str(pid), name), encoding="utf-8",
                      errors="replace") as f:
                return f.read()
        except OSError as e:
            if e.errno in FD_EXHAUSTED:
                raise OutOfFds(e) from e
            return None

    def resolve(self, pid: int) -> HostProcess | None:
        """The live process with this pid, or None when the host cannot see it. Raises
        :class:`OutOfFds` when no file descriptor was left to read it with (then nothing
        about it is cached: a container read as none would stick)."""
        stat = self._read(pid, "stat")
        if stat is None:
            return None
        try:
            name, start = parse_stat(stat)
        except (ValueError, IndexError):
            return None
        key = (pid, start)
        cached = self._cache.get(key)
        if cached is not None and (cached.pod_name is not None or cached.pod_uid is None
                                   or self.pods is None):
            return cached
        if cached is None:
            cgroup = self._read(pid, "cgroup") or ""
            container, pod = parse_cgroup(cgroup)
            cached = HostProcess(pid, start, name, container, pod)
        if cached.pod_uid is not None and self.pods is not None:
            # asked again while unnamed: the pod directory may have appeared since
            found = self.pods.lookup(cached.pod_uid)
            if found is not None:
                cached = HostProcess(pid, start, name, cached.container_id, cached.pod_uid,
                                     *found)
        self._cache[key] = cached
        return cached

    def resolve_all(self, pids: list[int]) -> dict[int, HostProcess]:
        """Resolve the pids of one poll and forget processes that are gone. The NVIDIA and
        AMD process collectors share one resolver, so calls are serialised."""
        return self.resolve_all_checked(pids)[0]

    def resolve_all_checked(self, pids: list[int]
                            ) -> tuple[dict[int, HostProcess], set[int]]:
        """(what :meth:`resolve_all` returns, the pids that could not be checked at all
        because the process was out of file descriptors): those are not known to be gone,
        only unnamed for this poll."""
        with self._lock:
            return self._resolve_all(pids)

    def _resolve_all(self, pids: list[int]) -> tuple[dict[int, HostProcess], set[int]]:
        now = time.monotonic()
        key = tuple(pids)
        last = self._last
        if last is not None and last[0] == key and now - last[1] < self.revalidate:
            return last[2], set()  # the same processes as last time, all checked recently
        found = {}
        current = {}
        unchecked: set[int] = set()
        out_of_fds: OutOfFds | None = None
        for pid in pids:
            seen = self._current.get(pid)
            if seen is not None and now - seen[1] < self.revalidate:
                found[pid] = seen[0]
                current[pid] = seen
                continue
            if out_of_fds is not None:  # the next read would fail the same way
                unchecked.add(pid)
                continue
            try:
                proc = self.resolve(pid)
            except OutOfFds as e:
                out_of_fds = e
                unchecked.add(pid)
                continue
            if proc is not None:
                found[pid] = proc
                current[pid] = (proc, now)
        if out_of_fds is not None:
            # Keep what is known (the unchecked pids' cache entries, the earlier checks) and
            # read again next poll; say why once, and not that the processes are invisible.
            self._current = {**self._current, **current}
            self._last = None
            if not self._out_of_fds:
                self._out_of_fds = True
                log.warning(
                    "out of file descriptors reading %s (%s): names, containers and pods of "
                    "%d GPU process(es) are missing from this poll, and from each poll until "
                    "descriptors are free again; raise the daemon's open-file limit "
                    "(LimitNOFILE=) or find what holds them", self.proc_root,
                    describe_fd_error(out_of_fds.error), len(unchecked))
            return found, unchecked
        if self._out_of_fds:
            self._out_of_fds = False
            log.info("file descriptors are available again: GPU process names are back")
        self._current = current
        live = {(p.pid, p.start_ticks) for p in found.values()}
        for gone in [k for k in self._cache if k not in live]:
            del self._cache[gone]
        # Checked times differ per pid; the fast path may reuse this result until the oldest
        # check is due again.
        oldest = min((checked for _, checked in current.values()), default=now)
        self._last = (key, oldest, found)
        if pids and not found and not self._warned_invisible:
            self._warned_invisible = True
            log.warning(
                "none of the GPU processes (pids %s...) is visible under %s: process names and "
                "containers are unavailable; run in the host PID namespace or set host.proc_root",
                pids[:3], self.proc_root)
        return found, set()
