"""When each probe runs on each GPU: the schedule, the duty cycle, backoff and jitter.

Every (GPU, probe kind) has a state: when it is next due, the failures in a row, the values
of its last successful run and its run and skip counts. A first run comes soon after start,
spread so that GPUs do not all start together; after a success the next is due ``every``
later, after a skip or a failure exponentially later (up to ``backoff_max``), each with
``jitter``. The duty cycle: a run's GPU time is spread over at least ``1/duty_cycle`` of
wall time before the next.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gpuprobe.daemon.core.config import ProbesConfig
from gpuprobe.daemon.core.model import ProbeSample
from gpuprobe.probes.active.child import Outcome

log = logging.getLogger("gpuprobe.probes")


@dataclass
class ProbeState:
    next_due: float
    failures: int = 0
    values: dict[str, float] = field(default_factory=dict)
    duration: float | None = None
    last_success: float | None = None
    runs: Counter = field(default_factory=Counter)
    skips: Counter = field(default_factory=Counter)
    gpu_seconds: float = 0.0


class Schedule:
    """The states of every (GPU, probe kind); ``every(probe)`` is a kind's period."""

    def __init__(self, cfg: ProbesConfig, every: Callable[[str], float],
                 clock: Callable[[], float], rng: random.Random) -> None:
        self.cfg = cfg
        self.every = every
        self.clock = clock
        self.rng = rng
        self._lock = threading.Lock()
        self.states: dict[tuple[str, str], ProbeState] = {}

    def _jitter(self) -> float:
        j = self.cfg.jitter
        return self.rng.uniform(1 - j, 1 + j)

    def state(self, probe: str, uuid: str) -> ProbeState:
        key = (uuid, probe)
        with self._lock:
            if key not in self.states:
                # A first run soon after start, spread so GPUs do not all start together.
                first = self.rng.uniform(1.0, min(30.0, self.every(probe)))
                self.states[key] = ProbeState(next_due=self.clock() + first)
            return self.states[key]

    def _backoff(self, state: ProbeState, probe: str) -> float:
        state.failures += 1
        return min(self.every(probe) * 2 ** min(state.failures, 20), self.cfg.backoff_max)

    def skipped(self, state: ProbeState, reason: str, probe: str) -> None:
        """A gate said no: counted, and the next try backs off."""
        state.runs["skipped"] += 1
        state.skips[reason] += 1
        wait = self._backoff(state, probe)
        state.next_due = self.clock() + wait * self._jitter()

    def ran(self, state: ProbeState, probe: str, out: Outcome,
            values: Callable[[Mapping], dict[str, float]], uuid: str, name: str) -> None:
        """A run ended: counted; on success ``values(out.values)`` are kept; the next run is
        due after the period (success) or a backoff, and after the duty cycle allows."""
        state.runs[out.outcome] += 1
        state.gpu_seconds += out.gpu_seconds
        state.duration = out.wall_seconds
        now = self.clock()
        if out.outcome == "ok":
            state.values = values(out.values)
            state.last_success = time.time()
            state.failures = 0
            wait = self.every(probe) * self._jitter()
        else:
            log.warning("%s probe on GPU %s (%s) %s: %s", probe, name, uuid, out.outcome,
                        out.detail)
            wait = self._backoff(state, probe) * self._jitter()
        # The duty cycle: the GPU time this run took, spread over at least 1/duty_cycle.
        state.next_due = now + max(wait, out.gpu_seconds / self.cfg.duty_cycle)

    def samples(self, probe: str) -> tuple[ProbeSample, ...]:
        with self._lock:
            items = [(k, s) for k, s in self.states.items() if k[1] == probe]
        return tuple(ProbeSample(
            device_uuid=uuid, probe=probe, values=dict(s.values), duration_seconds=s.duration,
            last_success=s.last_success, runs=dict(s.runs), skips=dict(s.skips),
            gpu_seconds_total=s.gpu_seconds) for (uuid, _), s in items)
