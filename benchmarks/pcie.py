"""PCIe probe accuracy on a real GPU, against a PyTorch reference, in one run; and its cost.

Both sides copy the same buffer size from pinned host memory the same number of times, timed
with CUDA events after a warm-up, median of the repetitions; each runs in its own child
process with the GPU made visible by UUID (PyTorch is only needed for the reference; it is
not a dependency of gpuprobe). Rounds alternate the two so drift hits both. Also measured:
our probe across buffer sizes, the launch probe on the idle GPU, and what a probe run costs
(time holding a GPU context, and the duty cycle that implies).

Targets (issue 4): at least 95% of the reference in each direction, and at least 85% of the
trained link's theoretical per-direction rate.

    python3 benchmarks/pcie.py [--rounds 5] [--json OUT.json] [--write docs/performance.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gpuprobe.daemon.core.model import pcie_link_bytes_per_second
from gpuprobe.probes.active.child import run_child
from gpuprobe.probes.active.specs import probe_values

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import write_section

MIB = 2**20
TORCH_REFERENCE = r"""
import json, statistics, sys, torch
size, copies, reps = (int(x) for x in sys.argv[1:4])
host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
host.fill_(0x5A)
dev = torch.empty(size, dtype=torch.uint8, device="cuda")
stream = torch.cuda.Stream()
start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
rates = {"host_to_device": [], "device_to_host": []}
with torch.cuda.stream(stream):
    dev.copy_(host, non_blocking=True)
    host.copy_(dev, non_blocking=True)
    stream.synchronize()
    for _ in range(reps):
        for direction, (dst, src) in (("host_to_device", (dev, host)),
                                      ("device_to_host", (host, dev))):
            start.record(stream)
            for _ in range(copies):
                dst.copy_(src, non_blocking=True)
            stop.record(stream)
            stop.synchronize()
            rates[direction].append(size * copies / (start.elapsed_time(stop) / 1e3))
print(json.dumps({d: statistics.median(v) for d, v in rates.items()}))
"""


def first_gpu() -> dict:
    import pynvml

    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        uuid = pynvml.nvmlDeviceGetUUID(h)
        return {"uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
                "name": str(pynvml.nvmlDeviceGetName(h)),
                "driver": str(pynvml.nvmlSystemGetDriverVersion()),
                "max_generation": pynvml.nvmlDeviceGetMaxPcieLinkGeneration(h),
                "max_width": pynvml.nvmlDeviceGetMaxPcieLinkWidth(h)}
    finally:
        pynvml.nvmlShutdown()


def ours(uuid: str, size: int, copies: int, reps: int) -> dict:
    req = {"probe": "pcie", "backend": "cuda", "uuid": uuid, "size": size, "copies": copies,
           "repetitions": reps}
    out = run_child(req, {"CUDA_VISIBLE_DEVICES": uuid}, 120)
    if out.outcome != "ok":
        raise SystemExit(f"probe {out.outcome}: {out.detail}")
    return {**probe_values("pcie", out.values), "gpu_seconds": out.gpu_seconds,
            "wall_seconds": out.wall_seconds}


def reference(uuid: str, size: int, copies: int, reps: int) -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": uuid}
    p = subprocess.run([sys.executable, "-c", TORCH_REFERENCE, str(size), str(copies),
                        str(reps)], capture_output=True, text=True, env=env, timeout=300)
    if p.returncode:
        raise SystemExit(f"PyTorch reference failed: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def launch(uuid: str) -> dict:
    req = {"probe": "launch", "backend": "cuda", "uuid": uuid, "spin_ns": 20_000,
           "reach_bound_ns": 100_000, "calibrations": 20}
    out = run_child(req, {"CUDA_VISIBLE_DEVICES": uuid}, 120)
    if out.outcome != "ok":
        return {"outcome": out.outcome, "detail": out.detail}
    return {**out.values, "gpu_seconds": out.gpu_seconds, "wall_seconds": out.wall_seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", default=64 * MIB, type=int)
    ap.add_argument("--copies", default=4, type=int)
    ap.add_argument("--repetitions", default=5, type=int)
    ap.add_argument("--sweep", default="8,16,32,64,128", help="buffer sizes in MiB")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--write", metavar="FILE", help="update this markdown file's table")
    args = ap.parse_args()
    gpu = first_gpu()
    uuid, size, copies, reps = gpu["uuid"], args.size, args.copies, args.repetitions
    rounds = []
    for i in range(args.rounds):
        o, r = ours(uuid, size, copies, reps), reference(uuid, size, copies, reps)
        rounds.append({"ours": o, "reference": r})
        print(f"round {i + 1}: ours {o['host_to_device'] / 1e9:.2f}/"
              f"{o['device_to_host'] / 1e9:.2f} GB/s, PyTorch "
              f"{r['host_to_device'] / 1e9:.2f}/{r['device_to_host'] / 1e9:.2f} GB/s",
              file=sys.stderr, flush=True)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    result: dict = {"gpu": gpu, "size": size, "copies": copies, "repetitions": reps,
                    "rounds": rounds, "python": platform.python_version()}
    for d in ("host_to_device", "device_to_host"):
        result[d] = {"ours": med([x["ours"][d] for x in rounds]),
                     "reference": med([x["reference"][d] for x in rounds])}
        result[d]["vs_reference"] = result[d]["ours"] / result[d]["reference"]
    link = rounds[-1]["ours"]
    rate = link.get("link_bytes_per_second") or pcie_link_bytes_per_second(
        gpu["max_generation"], gpu["max_width"])
    result["link"] = {"generation": link.get("link_generation"),
                      "width": link.get("link_width"), "bytes_per_second": rate}
    for d in ("host_to_device", "device_to_host"):
        result[d]["vs_link"] = result[d]["ours"] / rate
    result["gpu_seconds_per_run"] = med([x["ours"]["gpu_seconds"] for x in rounds])
    result["wall_seconds_per_run"] = med([x["ours"]["wall_seconds"] for x in rounds])
    moved = size * copies * (reps + 0.25) * 2  # + the warm-up copy each way
    result["copy_seconds_per_run"] = moved / result["host_to_device"]["ours"]
    result["sweep"] = {}
    for mib in (int(x) for x in args.sweep.split(",") if x):
        o = ours(uuid, mib * MIB, copies, reps)
        result["sweep"][mib] = {"host_to_device": o["host_to_device"],
                                "device_to_host": o["device_to_host"]}
    result["launch"] = launch(uuid)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.write:
        write_doc(Path(args.write), result)
    ok = all(result[d]["vs_reference"] >= 0.95 and result[d]["vs_link"] >= 0.85
             for d in ("host_to_device", "device_to_host"))
    return 0 if ok else 1


BEGIN, END = "<!-- BEGIN pcie.py -->", "<!-- END pcie.py -->"


def write_doc(path: Path, r: dict) -> None:
    def verdict(ok: bool) -> str:
        return "meets" if ok else "MISSES"

    gpu, link = r["gpu"], r["link"]
    lines = [BEGIN,
             f"Measured by `python3 benchmarks/pcie.py --write docs/performance.md` on "
             f"{gpu['name']} (driver {gpu['driver']}), link trained at Gen{link['generation']} "
             f"x{link['width']} ({link['bytes_per_second'] / 1e9:.1f} GB/s per direction in "
             f"theory), {time.strftime('%Y-%m-%d')}. {r['size'] // MIB} MiB buffer, "
             f"{r['copies']} copies per repetition, median of {r['repetitions']} repetitions; "
             f"medians of {len(r['rounds'])} alternating rounds.",
             "",
             "| Direction | gpuprobe | PyTorch, same copies | vs PyTorch (>= 95%) | "
             "vs link rate (>= 85%) |",
             "|---|---|---|---|---|"]
    for d, name in (("host_to_device", "Host to device"), ("device_to_host", "Device to host")):
        x = r[d]
        lines.append(f"| {name} | {x['ours'] / 1e9:.2f} GB/s | {x['reference'] / 1e9:.2f} GB/s "
                     f"| {x['vs_reference']:.1%}: {verdict(x['vs_reference'] >= 0.95)} "
                     f"| {x['vs_link']:.1%}: {verdict(x['vs_link'] >= 0.85)} |")
    gpu_s = r["gpu_seconds_per_run"]
    lines += ["",
              f"Cost of one run: {gpu_s:.2f} s holding a GPU context (of which "
              f"{r['copy_seconds_per_run'] * 1e3:.0f} ms of copies), "
              f"{r['wall_seconds_per_run']:.2f} s of wall time for the child process. At the "
              f"default period of 15 minutes that is {gpu_s / 900:.3%} of the GPU's time; "
              f"the 0.1% duty cycle alone would allow a run every {gpu_s / 0.001:.0f} s.",
              "",
              "| Buffer | Host to device | Device to host |", "|---|---|---|"]
    for mib, v in r["sweep"].items():
        lines.append(f"| {mib} MiB | {v['host_to_device'] / 1e9:.2f} GB/s | "
                     f"{v['device_to_host'] / 1e9:.2f} GB/s |")
    la = r["launch"]
    if "launch_latency_seconds" in la:
        lines += ["", f"Launch probe on the idle GPU: first block "
                  f"{la['launch_latency_seconds'] * 1e6:.1f} us after the launch call "
                  f"(+/- {la['launch_latency_uncertainty_seconds'] * 1e6:.1f} us), "
                  f"{la['sm_reach_ratio']:.0%} of {la['sm_count']} SMs reached within 100 us, "
                  f"{la['gpu_seconds']:.2f} s holding a context."]
    lines.append(END)
    write_section(path, BEGIN, END, "\n".join(lines),
                  heading="## PCIe probe accuracy (`benchmarks/pcie.py`)")


if __name__ == "__main__":
    sys.exit(main())
