"""The collectors every vendor has, once: the telemetry poll and the process listing.

A vendor's collector fills in what its library reads; the loop over the devices in their
lanes, a device that is lost, hung or silent, and the library going down are handled here
the same way for every vendor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from gpuprobe.daemon.core.model import CollectorResult, DeviceSample
from gpuprobe.probes.backend.devices import Device, down_sample, run_on_devices
from gpuprobe.probes.backend.errors import DeviceLost, LibraryDown
from gpuprobe.probes.backend.lifetime import Lifetime
from gpuprobe.probes.backend.query import Query
from gpuprobe.probes.host import ProcessResolver

D = TypeVar("D", bound=Device)
S = TypeVar("S", bound=Lifetime[Any])


class Telemetry(Generic[S, D]):
    """The telemetry collector: it drives the session (init, discovery), then reads each
    unit (a device, or a GPU with its partitions) in its GPU's lane until the deadline.
    A unit whose lane is hung reads down (reason "timeout"), a lost one down with the
    reason it was lost, until the session finds it again; a unit that answered none of its
    calls reads down too (:meth:`Query.verdict`)."""

    name: str

    def __init__(self, session: S, clock: Callable[[], float]) -> None:
        """``clock`` gives the samples' wall-clock time."""
        self.session = session
        self.session.driven = True
        self.now = clock
        self._stuck: set[str] = set()

    # -- for the vendor ----------------------------------------------------------------------

    def units(self) -> list[D]:
        """What one share of the poll (in one lane) reads, for this poll."""
        raise NotImplementedError

    def members(self, dev: D) -> list[D]:
        """The devices whose samples reading ``dev`` gives."""
        return [dev]

    def read(self, dev: D, q: Query) -> list[DeviceSample]:
        """The samples of ``dev``'s members (raises DeviceLost when it is gone)."""
        raise NotImplementedError

    # -- the poll ----------------------------------------------------------------------------

    def _read(self, dev: D, q: Query) -> list[DeviceSample] | None:
        if dev.lost and not self.session.refind(dev, q):
            return None
        try:
            samples = self.read(dev, q)
        except DeviceLost as e:
            self.session.lose(dev, str(e))
            return None
        members = {d.uuid: d for d in self.members(dev)}
        return [q.verdict(members[s.identity.uuid], s) if s.identity.uuid in members else s
                for s in samples]

    def collect(self, deadline: float) -> CollectorResult:
        errors: Counter = Counter()
        session = self.session
        if not session.ensure(errors, deadline):
            return CollectorResult(
                ok=session.absent or session.initialising,
                devices=tuple(down_sample(d, "backend down") for d in session.known()),
                backends=(session.status(),), errors=errors)
        q = session.query(errors)
        units = self.units()
        results, stuck = run_on_devices(units, lambda d: self._read(d, q), deadline)
        samples: list[DeviceSample] = []
        failure: BaseException | None = None
        for dev in units:
            r: Any = results.get(dev.uuid)
            if dev.uuid in stuck:
                samples.extend(down_sample(d, "timeout") for d in self.members(dev))
            elif isinstance(r, LibraryDown):
                failure = r.__cause__ or r
            elif isinstance(r, BaseException):
                raise r
            elif r is None:
                reason = dev.lost_reason or (dev.parent.lost_reason if dev.parent else None)
                samples.extend(down_sample(d, reason or "lost") for d in self.members(dev))
            else:
                samples.extend(r)
        if stuck != self._stuck:
            if stuck - self._stuck:
                session.log.warning(
                    "%s(s) %s did not answer within the deadline; not called again until the "
                    "hung call returns", session.names.gpu,
                    ", ".join(sorted(d.identity.name for d in units if d.uuid in stuck)))
            self._stuck = stuck
        if failure is not None:
            session.mark_down(failure)
            return CollectorResult(
                ok=False, devices=tuple(down_sample(d, "backend down") for d in session.known()),
                backends=(session.status(),), errors=errors)
        return CollectorResult(ok=True, devices=tuple(samples), backends=(session.status(),),
                               errors=errors, timestamp=self.now())

    def close(self) -> None:
        pass  # the shared session is closed with the sources (daemon/service/wiring.py)


class Processes(Generic[S, D]):
    """The process collector: it lists, in each target's lane, which processes hold
    memory on it; the vendor turns the listings into samples (:meth:`samples`). It does not
    drive the session: it waits for the telemetry collector's discovery."""

    name: str

    def __init__(self, session: S, resolver: ProcessResolver, probe_children: set[int],
                 clock: Callable[[], float]) -> None:
        """``probe_children``: pids of gpuprobe's own probe runs, marked as such."""
        self.session = session
        self.resolver = resolver
        self.probe_children = probe_children
        self.now = clock

    # -- for the vendor ----------------------------------------------------------------------

    def targets(self) -> list[D]:
        """The devices listed in this poll."""
        raise NotImplementedError

    def list(self, dev: D, q: Query) -> Mapping[int, Any]:
        """pid -> what the library tells of it, for one device."""
        raise NotImplementedError

    def samples(self, listings: dict[str, Any], errors: Counter) -> CollectorResult:
        """The result from each target's listing (by uuid; None where it was lost)."""
        raise NotImplementedError

    # -- the poll ----------------------------------------------------------------------------

    def _list(self, dev: D, q: Query) -> Mapping[int, Any] | None:
        try:
            return self.list(dev, q)
        except DeviceLost as e:
            self.session.lose(dev, str(e))
            return None

    def collect(self, deadline: float) -> CollectorResult:
        errors: Counter = Counter()
        session = self.session
        if not session.ensure(errors, deadline, drive=False):
            return CollectorResult(ok=session.absent or session.initialising, errors=errors)
        q = session.query(errors)
        results, _stuck = run_on_devices(self.targets(), lambda d: self._list(d, q), deadline)
        for r in results.values():
            if isinstance(r, LibraryDown):
                session.mark_down(r.__cause__ or r)
                return CollectorResult(ok=False, errors=errors)
            if isinstance(r, BaseException):
                raise r
        return self.samples(results, errors)

    def close(self) -> None:
        pass  # the shared session is closed with the sources (daemon/service/wiring.py)


def holders(session: Lifetime[D], uuid: str, deadline: float,
            targets: Callable[[D], list[D]],
            list_processes: Callable[[D, Query], Mapping[int, Any]]) -> set[int] | None:
    """The pids holding GPU ``uuid`` now (listed on each of its ``targets``: the GPU, or its
    instances or partitions); None if it cannot be told (the GPU or library is down, or a
    listing failed or did not answer in time)."""
    dev = session.devices.get(uuid)
    if dev is None or not session.up or not dev.up:
        return None
    q = session.query(Counter())
    results, stuck = run_on_devices(targets(dev), lambda d: list_processes(d, q), deadline)
    if stuck or any(isinstance(r, BaseException) or r is None for r in results.values()):
        return None
    return {pid for r in results.values() for pid in r}


