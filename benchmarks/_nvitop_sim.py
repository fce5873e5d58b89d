"""nvitop-exporter over gpuprobe's simulated GPUs: the peer benchmarks/scale.py runs side by
side with gpuprobe.

    python benchmarks/_nvitop_sim.py SCENARIO.yaml MISSING.json -- [nvitop-exporter arguments]

Builds ``Simulation(load(SCENARIO))`` on a real-time clock (``SimClock``) and makes
``sys.modules["pynvml"]`` the simulation's private pynvml copy (``sim.nvml``, the vendor's
pynvml over the simulated libnvml) before nvitop is imported, so nvitop's own ``libnvml``
wraps it; then runs nvitop-exporter's ``main`` with the arguments after ``--``.

A function the simulated library does not implement answers FUNCTION_NOT_FOUND (nvitop reads
it as N/A); the names so answered are written to MISSING.json (a sorted JSON list), rewritten
whenever a new one appears, so the benchmark can say which of nvitop's readings were N/A.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
from pathlib import Path
from typing import Any

from gpuprobe.probes.sim import Simulation
from gpuprobe.probes.sim.scenario import load


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: _nvitop_sim.py SCENARIO.yaml MISSING.json -- [nvitop-exporter args]",
              file=sys.stderr)
        return 2
    scenario, missing_path = argv[0], Path(argv[1])
    rest = argv[2:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    sim = Simulation(load(scenario))  # SimClock: scenario time runs with the wall clock
    nvml = sim.nvml
    missing: set[str] = set()
    lock = threading.Lock()
    lookup = getattr(nvml, "_nvmlGetFunctionPointer")  # noqa: B009
    not_found = nvml.NVML_ERROR_FUNCTION_NOT_FOUND

    def recorded(name: str) -> Any:
        try:
            return lookup(name)
        except nvml.NVMLError as e:
            if e.value == not_found:
                with lock:
                    if name not in missing:
                        missing.add(name)
                        missing_path.write_text(json.dumps(sorted(missing)))
            raise

    # pynvml's wrappers look it up as a module global
    setattr(nvml, "_nvmlGetFunctionPointer", recorded)  # noqa: B010
    missing_path.write_text("[]")
    sys.modules["pynvml"] = nvml  # before nvitop imports it
    cli = importlib.import_module("nvitop_exporter.cli")  # imports nvitop, hence pynvml

    sys.argv = ["nvitop-exporter", *rest]
    return int(cli.main())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
