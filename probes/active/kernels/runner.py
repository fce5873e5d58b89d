"""The probe child process: ``python -m gpuprobe.probes.active.kernels.runner '<request JSON>'``.

It measures one probe on the one GPU its parent made visible, prints ``PROGRESS <text>``
lines on stderr while it works, and one ``RESULT <JSON>`` line on stdout at the end. Its GPU
context lives and dies with it.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from types import ModuleType


def _progress(message: str) -> None:
    print(f"PROGRESS {message}", file=sys.stderr, flush=True)


def _nvml_link(uuid: str) -> tuple[Callable[[], dict | None], Callable[[], None]]:
    """A reader of the link's generation and width through NVML (no CUDA context)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
    except Exception:
        return (lambda: None), (lambda: None)

    def read() -> dict | None:
        try:
            return {"generation": pynvml.nvmlDeviceGetCurrPcieLinkGeneration(handle),
                    "width": pynvml.nvmlDeviceGetCurrPcieLinkWidth(handle)}
        except Exception:
            return None

    return read, pynvml.nvmlShutdown


def measure(req: dict, progress: Callable[[str], None] = _progress) -> dict:
    backend, probe = req["backend"], req["probe"]
    rt: ModuleType  # the cuda or the hip module: their functions differ in signature
    if backend == "sim":
        from gpuprobe.probes.active.kernels import simulated

        return simulated.run(req, progress)
    if backend == "cuda":
        from gpuprobe.probes.active.kernels import cuda as rt

        dev = rt.CudaProbeDevice().open()
        link, close_link = _nvml_link(req["uuid"])
    elif backend == "hip":
        from gpuprobe.probes.active.kernels import hip as rt

        dev = rt.HipProbeDevice().open()
        link, close_link = (lambda: None), (lambda: None)
    else:
        raise ValueError(f"unknown probe backend {backend!r}")
    try:
        if backend == "cuda" and dev.uuid() != req["uuid"]:
            raise RuntimeError(f"visible GPU is {dev.uuid()}, expected {req['uuid']}")
        if probe == "pcie":
            out = rt.pcie(dev, req["size"], req["copies"], req["repetitions"], progress, link)
        elif backend == "cuda":
            out = rt.launch(dev, req["spin_ns"], req["reach_bound_ns"], req["calibrations"],
                            progress)
        else:
            out = rt.launch(dev, req["spin_ns"], req["reach_bound_ns"], req["calibrations"],
                            req.get("compute_units"), req.get("arch"), progress)
    finally:
        dev.close()
        close_link()
    out["gpu_seconds"] = dev.held
    return out


def main(argv: list[str]) -> int:
    try:
        req = json.loads(argv[1])
        result = {"ok": True, **measure(req)}
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print("RESULT " + json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
