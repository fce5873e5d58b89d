"""The main process's threads at a lower CPU priority (nice) than the serving process's.

The serving process (serving.py) answers a scrape in about 2 ms of CPU; the main process's
polls, encodes and probes are bulk work that no client waits on. On a host whose CPUs are
busy (the poll itself, the training job's data loaders) the scheduler then runs a scrape
first. Measured with ``benchmarks/scale.py --sizes 64x128 --poll-nice 0`` (and ``10``) on 2
CPUs, two runs each: scrape p99 6.31 and 5.95 ms at the same priority, 3.74 and 3.69 ms with
the main process 10 steps lower, against 3.3-3.7 ms for the same bytes served alone
(docs/performance.md).

Linux keeps a nice value per thread and a new thread takes its creator's, so lowering every
thread that exists (but the one that forks the serving process again if it dies) covers the
threads started later from them too, and the probe children they start. ``gpuprobe run``
does it right after the first fork, when only that thread and its own exist. Elsewhere
``setpriority`` applies to the whole process, serving included: nothing is done.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Collection

log = logging.getLogger("gpuprobe")

MAX_NICE = 19


def lower_threads(steps: int, keep: Collection[int]) -> int:
    """Raise the nice value of each of this process's threads by ``steps`` (capped at 19),
    except the native thread ids in ``keep``; the number of threads lowered."""
    if steps <= 0 or not sys.platform.startswith("linux"):
        return 0
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError as e:
        log.debug("thread priorities left as they are: %s", e)
        return 0
    lowered = 0
    for tid in tids:
        if tid in keep:
            continue
        try:
            now = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, now + steps))
            lowered += 1
        except OSError:  # the thread ended meanwhile, or a seccomp policy refuses
            continue
    log.debug("%d threads lowered by %d nice steps", lowered, steps)
    return lowered
