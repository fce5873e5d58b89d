"""What the fault-injection tests of both backends (test_nvidia_faults.py,
test_amd_faults.py) check the same way: /metrics still renders, no internal error was
counted, the collections end at their deadline while a call hangs, and a GPU that stops
answering reads down, is logged once going and once coming back."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families


def renders(d, expect: str = "gpuprobe_device_up") -> set[str]:
    """The metric names /metrics renders; ``expect`` must be one of them."""
    text = generate_latest(d.registry).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert expect in names
    return names


def no_internal_errors(d) -> None:
    for h in d.store.view().health.values():
        assert h.errors_total.get("internal", 0) == 0, h


def errors(d, cls: str) -> int:
    """The errors of class ``cls`` counted by all collectors together."""
    return sum(h.errors_total.get(cls, 0) for h in d.store.view().health.values())


def settle(run_once: Callable[[], None], check: Callable[[], None], timeout: float = 15.0
           ) -> None:
    """``run_once`` (the collectors, at the clock's present time) until ``check`` passes.

    A fault test's first cycle can end, on a loaded machine, while the library's bring-up or
    first discovery is still under way (each waits only to a share of its collector's
    deadline), so the GPUs the fault is not on are not known yet. The tests are about one
    GPU's faults, not start-up time: they settle first, with the fault in place. A fault
    that takes the others down never settles and fails here with ``check``'s assertion."""
    end = time.monotonic() + timeout
    while True:
        run_once()
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > end:
                raise
        time.sleep(0.05)


def cycles_end_in_time(cycle: Callable[[], None], within: float,
                       check: Callable[[], None], times: int = 2) -> None:
    """``times`` runs of ``cycle``, each over within ``within`` seconds (every collector ends
    at its deadline, whatever a hung call does), ``check`` after each."""
    for _ in range(times):
        t0 = time.monotonic()
        cycle()
        assert time.monotonic() - t0 < within
        check()


def unsupported(d, library, fn: str, target: int, error: int, cycle: Callable[[], None],
                others_fine: Callable[[], None]) -> tuple[int, int]:
    """``fn`` failing on GPU ``target`` of the simulated ``library`` with ``error`` (its
    not-supported or no-permission code): after four cycles the others are fine, /metrics
    renders, an unsupported error and no internal one is counted. The calls of ``fn`` on
    ``target`` after two cycles and after four: equal where it was not asked again."""
    library.faults.add(fn, target, error=error)
    settle(d.scheduler.run_once, others_fine)
    cycle()
    cycle()
    calls = library.calls_by_device
    after_two = calls[(fn, target)]
    cycle()
    cycle()
    others_fine()
    renders(d)
    no_internal_errors(d)
    assert errors(d, "unsupported") >= 1
    return after_two, calls[(fn, target)]


def gpu_answering_nothing(d, faults, error: int, cycle: Callable[[], None],
                          sample: Callable[[], object], others_fine: Callable[[], None],
                          caplog) -> None:
    """Every call to the second GPU of a vendor (device 1 of ``faults``, read by ``sample``)
    failing with the transient ``error``: it reads down with the reason and without its
    static facts, the others are fine, it is logged once, and it reads up again (logged once
    more) when calls answer."""
    cycle()
    assert sample().up
    with caplog.at_level("INFO", logger="gpuprobe"):
        faults.add("*", 1, error=error)
        for _ in range(3):
            cycle()
            s = sample()
            assert not s.up
            assert s.down_reason.startswith("no call answered"), s.down_reason
            assert s.memory.total_bytes is None and s.thermal.thresholds == {}
            others_fine()
        renders(d)
        no_internal_errors(d)
        faults.clear()
        cycle()
    s = sample()
    assert s.up and s.memory.used_bytes is not None
    said = [r.getMessage() for r in caplog.records]
    assert sum("answered none" in m for m in said) == 1, said
    assert sum("answers calls again" in m for m in said) == 1, said
