"""Kubernetes pod names and namespaces, by pod UID, from the kubelet's pod log directory.

The cgroup path of a GPU process gives its pod's UID (probes/host.py), not the pod's name. The
kubelet makes one directory per pod it runs, named ``<namespace>_<name>_<uid>``, under
``/var/log/pods`` (kubelet ``BuildPodLogsDirectory``; every CRI runtime since Kubernetes 1.14),
before any of the pod's containers start and until the pod is removed. Reading the *names* of
those directories gives the mapping with no API server, no kubelet credentials, no network
and no new dependency; no file in them is opened (they hold the pods' logs). Namespaces and
pod names are DNS-1123 names, which cannot contain ``_``, so a name splits one way.

The directory is listed again only when a UID not in the last listing is asked for, and at
most once per ``relist`` seconds, so a host whose pods are not all in the directory (the
mount missing, a pod of another kubelet) costs one listing per interval, not one per poll.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("gpuprobe.host")

# what Kubernetes allows: a namespace is a DNS-1123 label, a pod name a DNS-1123 subdomain
_MAX_NAMESPACE, _MAX_NAME = 63, 253


def parse_entry(entry: str) -> tuple[str, str, str] | None:
    """(uid, namespace, name) from a pod log directory's name; None for anything else."""
    parts = entry.split("_")
    if len(parts) != 3:
        return None
    namespace, name, uid = parts
    if not (namespace and name and uid) or len(namespace) > _MAX_NAMESPACE \
            or len(name) > _MAX_NAME:
        return None
    return uid, namespace, name


class PodNames:
    """pod UID -> (namespace, name) on this node; ``root`` empty turns it off."""

    def __init__(self, root: str = "/var/log/pods", relist: float = 30.0) -> None:
        self.root = root
        self.relist = relist
        self._names: dict[str, tuple[str, str]] = {}
        self._listed_at: float | None = None
        self._warned = False
        self._lock = threading.Lock()

    def lookup(self, uid: str) -> tuple[str, str] | None:
        """(namespace, name) of the pod with this UID, or None when the kubelet's directory
        does not name it (or cannot be read)."""
        if not self.root:
            return None
        with self._lock:
            found = self._names.get(uid)
            if found is not None:
                return found
            now = time.monotonic()
            if self._listed_at is not None and now - self._listed_at < self.relist:
                return None
            self._listed_at = now
            self._names = self._list()
            found = self._names.get(uid)
            if found is None and not self._warned:
                self._warned = True
                log.warning(
                    "pod %s of a GPU process is not among the kubelet's pod directories in "
                    "%s: the pod and namespace labels of its series are absent (mount the "
                    "host's /var/log/pods read-only, as deploy/kubernetes does, or set "
                    "host.pod_logs_dir; empty turns this off)", uid, self.root)
            return found

    def _list(self) -> dict[str, tuple[str, str]]:
        names: dict[str, tuple[str, str]] = {}
        try:
            with os.scandir(self.root) as it:
                for entry in it:
                    parsed = parse_entry(entry.name)
                    if parsed is not None:
                        names[parsed[0]] = (parsed[1], parsed[2])
        except OSError as e:
            log.debug("cannot list %s: %s", self.root, e)
        return names
