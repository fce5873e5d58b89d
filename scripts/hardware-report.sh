#!/usr/bin/env bash
# Runs gpuprobe against this machine's real GPUs and saves what it saw into OUTDIR, for
# docs/hardware/: raw NVML answers, snapshots, scrapes idle and under load (PyTorch, when
# installed, makes the load), promtool's verdict, the GPU tests and the overhead benchmark.
# Usage: scripts/hardware-report.sh OUTDIR   (PROMTOOL=path to use a promtool not on PATH)
# The GPU must be idle (no other processes) for the probes to run.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/hardware-report.sh OUTDIR}
mkdir -p "$out"
py=${PYTHON:-python3}
promtool=${PROMTOOL:-promtool}
site=$(mktemp -d)
port=14787
# No network on the GPU host: install from the checkout, dependencies already present.
$py -m pip install -q --no-deps --no-build-isolation --no-index --target "$site" . \
    > "$out/install.log" 2>&1 || { cat "$out/install.log"; exit 1; }
export PYTHONPATH="$site"
gp() { $py -m gpuprobe.daemon "$@"; }
scrape() { curl -s "http://127.0.0.1:$port/metrics" > "$out/$1"; }

nvidia-smi > "$out/nvidia-smi.txt" 2>&1
nvidia-smi -q > "$out/nvidia-smi-q.txt" 2>&1
$py scripts/nvml_facts.py > "$out/nvml_facts.json" 2> "$out/nvml_facts.err"
gp snapshot > "$out/snapshot.txt" 2> "$out/snapshot.err"
gp snapshot --json > "$out/snapshot.json" 2>> "$out/snapshot.err"

gp probe pcie > "$out/probe-pcie.txt" 2> "$out/probe-pcie.err"
gp probe launch > "$out/probe-launch.txt" 2> "$out/probe-launch.err"
# Memory: a bare interpreter, after importing gpuprobe, after nvmlInit (the driver library).
$py - > "$out/rss.txt" 2>&1 <<'PY'
import psutil
p = psutil.Process()
print("python", p.memory_info().rss / 1e6, "MB")
import gpuprobe.daemon.service.app  # noqa: F401
print("gpuprobe imported", p.memory_info().rss / 1e6, "MB")
import pynvml
pynvml.nvmlInit()
print("after nvmlInit", p.memory_info().rss / 1e6, "MB")
PY
# Started directly (not through gp) so that $! is the daemon and SIGTERM reaches it. Probes
# run every 20 s here so that the scrapes show them.
cat > "$out/config.yaml" <<'YAML'
probes:
  pcie: {every: 20s}
  launch: {every: 20s}
YAML
$py -m gpuprobe.daemon run --config "$out/config.yaml" --listen "127.0.0.1:$port" \
    > "$out/daemon.log" 2>&1 &
daemon=$!
sleep 25  # idle: the first scheduled probes (due within 20 s) run
scrape metrics-idle.txt
$py - > "$out/load.log" 2>&1 <<'PY' &
import time
import torch
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
host = torch.empty(256 * 2**20, dtype=torch.uint8).pin_memory()
dev = torch.empty_like(host, device="cuda")
t0 = time.time()
while time.time() - t0 < 25:
    for _ in range(20):
        y = x @ x
    dev.copy_(host, non_blocking=True)
    host.copy_(dev, non_blocking=True)
    torch.cuda.synchronize()
print("load done")
PY
load=$!
sleep 16
scrape metrics-busy.txt
gp snapshot > "$out/snapshot-busy.txt" 2>&1
wait $load
sleep 7
scrape metrics-after.txt
curl -s "http://127.0.0.1:$port/readyz" > "$out/readyz.json"
curl -s "http://127.0.0.1:$port/healthz" > "$out/healthz.json"
sleep 25  # idle again: the scheduled probes run
scrape metrics-probed.txt
grep "^process_resident_memory_bytes" "$out/metrics-probed.txt" >> "$out/rss.txt"
kill -TERM $daemon
wait $daemon
echo "daemon exit status $?" >> "$out/daemon.log"

for f in metrics-idle.txt metrics-busy.txt metrics-probed.txt; do
    echo "== $f" >> "$out/promtool.txt"
    $promtool check metrics < "$out/$f" >> "$out/promtool.txt" 2>&1
    echo "exit $?" >> "$out/promtool.txt"
done
$py -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > "$out/pytest-gpu.txt" 2>&1
$py -m pytest -q tests/test_probes.py -k "ptx or cuda_symbols" -p no:cacheprovider -rs \
    > "$out/pytest-kernels.txt" 2>&1
$py benchmarks/pcie.py --json "$out/pcie.json" > "$out/pcie.log" 2>&1
$py benchmarks/overhead.py --real --cycles 40 --rss-warmup 20 > "$out/overhead-real.json" \
    2> "$out/overhead-real.err"
echo "report written to $out"
