"""The devices a backend knows, each with its GPU's worker and lane: losing and finding them
again.

A device is known by UUID and stays known (and down) after it is lost; it is looked up again
after a backoff that doubles per failed look-up and per flap.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpuprobe.daemon.core import relay
from gpuprobe.daemon.core.model import DeviceIdentity, DeviceSample
from gpuprobe.daemon.core.workers import Worker

DEVICE_RETRY_MAX = 60.0
# A device whose worker has run one call for this long is treated as hung: nothing more is
# queued for it until that call returns. Normal vendor calls take microseconds to
# milliseconds.
STUCK_SECONDS = 2.0


@dataclass(eq=False)
class Device:
    """A device a backend knows, by UUID; it stays known (and down) after it is lost."""

    uuid: str
    handle: Any
    identity: DeviceIdentity
    worker: Worker
    parent: Device | None = None
    lost: bool = False
    lost_reason: str | None = None
    retry_at: float = 0.0
    backoff: float = 1.0
    unsupported: set[str] = field(default_factory=set)
    static: dict[str, Any] = field(default_factory=dict)
    # per-device state of readers, by name (Query.first keys its choices ("alt", key))
    state: dict[str | tuple[str, str], Any] = field(default_factory=dict)
    unanswered: bool = False  # its last poll asked it calls and none was answered
    up_since: float = field(default_factory=time.monotonic)  # when last found (or made)
    flaps: int = 0  # times lost since it last stayed up for a whole settle period
    logged_step: float | None = None  # the backoff of the last loss that was logged
    loss_logged: bool = False  # whether its latest loss was logged (then so is its return)

    @property
    def physical(self) -> Device:
        return self.parent or self

    @property
    def up(self) -> bool:
        return not self.lost and not (self.parent is not None and self.parent.lost)


def _each(fn: Callable[[Device], Any], devices: list[Device]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dev in devices:
        try:
            out[dev.uuid] = fn(dev)
        except Exception as e:
            out[dev.uuid] = e
    return out


def run_on_devices(devices: list[Any], fn: Callable[[Any], Any], deadline: float,
                   worker_of: Callable[[Any], Worker] | None = None
                   ) -> tuple[dict[str, Any], set[str]]:
    """Run ``fn(dev)`` for each device in its physical GPU's lane (or in ``worker_of(dev)``'s:
    the slow AMD calls have lanes of their own); wait until ``deadline``. The GPUs are read in
    turn by one thread, and by more only where one is slow (daemon/core/relay.py).

    Returns (uuid -> result or exception, uuids not done). The work waits for another
    collector's call on the same GPU; a GPU whose lane has been inside one call for
    STUCK_SECONDS is hung, is not called again until that call returns, and counts as not
    done, with its instances or partitions. Work not started by the deadline is dropped.
    """
    groups: dict[Worker, list[Device]] = {}
    for dev in devices:
        groups.setdefault(dev.worker if worker_of is None else worker_of(dev), []).append(dev)
    shares: list[tuple[Worker, Callable[[], Any]]] = []
    held: list[list[Device]] = []
    stuck: set[str] = set()
    for worker, devs in groups.items():
        if worker.running_for() > STUCK_SECONDS:
            stuck.update(d.uuid for d in devs)
        else:
            shares.append((worker, functools.partial(_each, fn, devs)))
            held.append(devs)
    done, not_done = relay.run(shares, deadline)
    results: dict[str, Any] = {}
    for r in done.values():
        results.update(r)
    for i in not_done:
        stuck.update(d.uuid for d in held[i])
    return results, stuck


def settle_seconds(retry_max: float) -> float:
    """How long a device found again must stay up before its backoff starts afresh: the
    longest wait between look-ups, so a GPU that flaps is looked at no more often than that."""
    return min(retry_max, DEVICE_RETRY_MAX)


def lose(dev: Device, reason: str, retry_initial: float, retry_max: float,
         now: float | None = None) -> None:
    """Mark a device down; it is looked up again after a backoff that doubles per failed
    look-up, and per flap: a device lost again before it has stayed up for
    ``settle_seconds`` keeps the backoff it had (it is not found again on every poll), and
    its losses and returns are logged at most once per backoff step."""
    now = time.monotonic() if now is None else now
    log = logging.getLogger(f"gpuprobe.{dev.identity.vendor}")
    cap = min(retry_max, DEVICE_RETRY_MAX)
    if not dev.lost:
        if dev.flaps == 0 or now - dev.up_since >= settle_seconds(retry_max):
            dev.flaps = 0  # it had settled (or was never lost): a new episode
            dev.backoff = retry_initial
            dev.logged_step = None
        dev.flaps += 1
        dev.loss_logged = dev.backoff != dev.logged_step
        if dev.loss_logged:
            dev.logged_step = dev.backoff
            if dev.flaps == 1:
                log.warning("GPU %s (%s) is down: %s", dev.identity.name, dev.uuid, reason)
            else:
                log.warning("GPU %s (%s) is down again %.0fs after it came back (lost %d "
                            "times without staying up %gs in between): %s; next look in %gs%s",
                            dev.identity.name, dev.uuid, now - dev.up_since, dev.flaps,
                            settle_seconds(retry_max), reason, dev.backoff,
                            "; not logged again while it keeps flapping"
                            if dev.backoff >= cap else "")
    dev.lost = True
    dev.lost_reason = reason
    dev.retry_at = now + dev.backoff
    dev.backoff = min(dev.backoff * 2, cap)
    dev.state.clear()


def found_again(dev: Device, how: str = "found again", now: float | None = None) -> None:
    """A lost device answers again: it is up, and its backoff is kept until it has stayed up
    for a while (see :func:`lose`); logged when its loss was."""
    dev.lost, dev.lost_reason = False, None
    dev.up_since = time.monotonic() if now is None else now
    if dev.loss_logged:
        logging.getLogger(f"gpuprobe.{dev.identity.vendor}").info(
            "GPU %s (%s) %s", dev.identity.name, dev.uuid, how)


def down_sample(dev: Device, reason: str) -> DeviceSample:
    """What a device that did not answer reports: its identity, down, and why."""
    return DeviceSample(identity=dev.identity, up=False, down_reason=reason)


