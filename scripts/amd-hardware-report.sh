#!/usr/bin/env bash
# What the first AMD host must still check for gpuprobe (docs/hardware/amd.md, "To check on an
# AMD host"): run it on a ROCm machine and send back OUTDIR (or OUTDIR.tar.gz).
# Usage: scripts/amd-hardware-report.sh OUTDIR   (PYTHON=interpreter with amdsmi;
#        ROCM_PATH=/opt/rocm by default)
#
# Read-only: it reads versions, sysfs and the amdsmi library, and never sets anything (no
# partition change, no reset, no clocks, no power caps). Every step records its output or
# its error in OUTDIR and the script goes on; steps.txt lists each step's exit status.
# The numbers in brackets are the rows of docs/hardware/amd.md each step settles.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:?usage: scripts/amd-hardware-report.sh OUTDIR}
mkdir -p "$out" || exit 1
py=${PYTHON:-python3}
rocm=${ROCM_PATH:-/opt/rocm}

# step NAME FILE COMMAND...: run COMMAND, stdout to OUTDIR/FILE, stderr to OUTDIR/FILE.err
step() {
    local name=$1 file=$2
    shift 2
    "$@" > "$out/$file" 2> "$out/$file.err"
    local rc=$?
    echo "$name: exit $rc" >> "$out/steps.txt"
    [ -s "$out/$file.err" ] || rm -f "$out/$file.err"
    return 0
}

: > "$out/steps.txt"
# -- versions [1] -------------------------------------------------------------------------
{
    echo "date: $(date -u +%FT%TZ)"
    echo "kernel: $(uname -r)"
    echo "os: $(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-?}")"
    echo "rocm (.info/version): $(cat "$rocm/.info/version" 2>/dev/null || echo absent)"
    echo "amdgpu module: $(cat /sys/module/amdgpu/version 2>/dev/null \
        || modinfo -F version amdgpu 2>/dev/null || echo unknown)"
    echo "amd-smi: $(command -v amd-smi || echo absent)"
} > "$out/versions.txt" 2>&1
step "lspci" lspci.txt sh -c 'lspci -nn -d 1002: 2>/dev/null || echo "lspci absent"'

lib_found=no
for f in "$rocm/lib/libamd_smi.so" /usr/lib/x86_64-linux-gnu/libamd_smi.so; do
    [ -e "$f" ] && lib_found=yes
done
if [ "$lib_found" = no ] && ! command -v amd-smi > /dev/null 2>&1; then
    msg="no ROCm found (no libamd_smi.so under $rocm/lib, no amd-smi on PATH): nothing to check; install ROCm's amd-smi-lib and run again"
    echo "$msg" | tee "$out/NO_ROCM.txt" >&2
    echo "report written to $out"
    exit 0
fi

# -- the amd-smi tool [3, 8, 9, 12, 14, 18, 19] -------------------------------------------
if command -v amd-smi > /dev/null 2>&1; then
    step "amd-smi version" amd-smi-version.txt amd-smi version
    for sub in list static metric partition process; do
        step "amd-smi $sub --json" "amd-smi-$sub.json" amd-smi "$sub" --json
    done
    step "amd-smi partition (text)" amd-smi-partition.txt amd-smi partition
else
    echo "amd-smi: not on PATH, skipped" >> "$out/steps.txt"
fi
step "rocm-smi --showallinfo" rocm-smi.txt sh -c \
    'command -v rocm-smi > /dev/null && rocm-smi --showallinfo || echo "rocm-smi absent"'

# -- KFD topology: each node's memory banks, the per-partition truth of ROCm/ROCm#4750 [8] --
step "kfd topology" kfd-topology.txt sh -c '
for n in /sys/class/kfd/kfd/topology/nodes/*; do
    [ -d "$n" ] || continue
    echo "== $n"
    grep -E "^(gpu_id|simd_count|location_id|domain|unique_id|num_xcc|drm_render_minor) " \
        "$n/properties" 2>/dev/null
    for b in "$n"/mem_banks/*; do
        [ -f "$b/properties" ] && { echo "-- $b"; cat "$b/properties"; }
    done
done'
# sysfs memory and partition files of each amdgpu DRM device [8, 9, 20]
step "drm sysfs" drm-sysfs.txt sh -c '
for d in /sys/class/drm/card*/device; do
    [ -f "$d/vendor" ] && [ "$(cat "$d/vendor")" = 0x1002 ] || continue
    echo "== $d -> $(readlink -f "$d")"
    for f in mem_info_vram_total mem_info_vram_used mem_info_vis_vram_total \
             mem_info_gtt_total current_compute_partition available_compute_partition \
             current_memory_partition available_memory_partition unique_id \
             power/runtime_status; do
        [ -r "$d/$f" ] && echo "$f: $(cat "$d/$f")"
    done
done'

# -- the binding: every function gpuprobe calls, per handle [1-20] -----------------------
step "binding versions (pip)" binding-pip.txt sh -c \
    "$py -m pip show amdsmi 2>&1; ls -l '$rocm/share/amd_smi' 2>&1"
step "binding calls" amdsmi-calls.json "$py" - "$rocm" <<'PY'
"""Calls, through the real amdsmi binding, every function gpuprobe's AMD backend uses, on
every processor handle, and records each value or exception as JSON (read-only)."""
import contextlib
import ctypes
import io
import json
import sys
import time

rocm = sys.argv[1]
sys.path.append(f"{rocm}/share/amd_smi")
report = {"python": sys.version}


def record(fn):
    try:
        return {"value": fn()}
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        code = getattr(e, "get_error_code", lambda: None)()
        return {"error": type(e).__name__, "status": code, "text": str(e)[:300]}


printed = io.StringIO()  # the binding prints to stdout when it cannot load the library
try:
    with contextlib.redirect_stdout(printed):
        import amdsmi
except BaseException as e:  # KeyError without libamd_smi.so, AttributeError on skew
    print(json.dumps({"import": f"{type(e).__name__}: {e}", "printed": printed.getvalue()}))
    sys.exit(0)

from amdsmi import amdsmi_wrapper as W

report["binding"] = {"__version__": getattr(amdsmi, "__version__", None),
                     "__file__": getattr(amdsmi, "__file__", None)}
report["amdsmi_get_rocm_version"] = record(amdsmi.amdsmi_get_rocm_version)  # [1]
report["amdsmi_init"] = record(lambda: amdsmi.amdsmi_init(amdsmi.AmdSmiInitFlags.INIT_AMD_GPUS))
report["amdsmi_get_lib_version"] = record(amdsmi.amdsmi_get_lib_version)  # [1]
handles = record(amdsmi.amdsmi_get_processor_handles)
report["amdsmi_get_processor_handles"] = {"count": len(handles.get("value") or [])}
T, M = amdsmi.AmdSmiTemperatureType, amdsmi.AmdSmiTemperatureMetric


def raw_metrics(h):
    """The gpu_metrics struct read through the wrapper, as the backend does [5, 7, 11]."""
    s = W.amdsmi_gpu_metrics_t()
    rc = W.amdsmi_get_gpu_metrics_info(h, ctypes.byref(s))
    out = {"status": rc}
    for name, _ in s._fields_:
        v = getattr(s, name)
        if hasattr(v, "_length_"):
            v = [x if isinstance(x, int) else repr(x) for x in v]
        elif not isinstance(v, int | float):
            v = repr(v)
        out[name] = v
    return out


def per_handle(h):
    calls = {
        "amdsmi_get_gpu_device_bdf": lambda: amdsmi.amdsmi_get_gpu_device_bdf(h),  # [9]
        "amdsmi_get_gpu_device_uuid": lambda: amdsmi.amdsmi_get_gpu_device_uuid(h),  # [10,12]
        "amdsmi_get_gpu_asic_info": lambda: amdsmi.amdsmi_get_gpu_asic_info(h),
        "amdsmi_get_gpu_board_info": lambda: amdsmi.amdsmi_get_gpu_board_info(h),
        "amdsmi_get_gpu_driver_info": lambda: amdsmi.amdsmi_get_gpu_driver_info(h),
        "amdsmi_get_gpu_vbios_info": lambda: amdsmi.amdsmi_get_gpu_vbios_info(h),
        "amdsmi_get_gpu_kfd_info": lambda: amdsmi.amdsmi_get_gpu_kfd_info(h),  # [8, 9]
        "amdsmi_get_gpu_compute_partition": lambda: amdsmi.amdsmi_get_gpu_compute_partition(h),
        "amdsmi_get_gpu_memory_partition": lambda: amdsmi.amdsmi_get_gpu_memory_partition(h),
        "amdsmi_get_gpu_memory_partition_config":
            lambda: amdsmi.amdsmi_get_gpu_memory_partition_config(h),
        "amdsmi_get_gpu_vram_info": lambda: amdsmi.amdsmi_get_gpu_vram_info(h),  # [8]
        "amdsmi_get_gpu_vram_usage": lambda: amdsmi.amdsmi_get_gpu_vram_usage(h),  # [8]
        "amdsmi_get_gpu_memory_total": lambda: {
            k: record(lambda k=k: amdsmi.amdsmi_get_gpu_memory_total(
                h, getattr(amdsmi.AmdSmiMemoryType, k))) for k in ("VRAM", "VIS_VRAM", "GTT")},
        "amdsmi_get_gpu_memory_usage": lambda: {  # [8, 20]
            k: record(lambda k=k: amdsmi.amdsmi_get_gpu_memory_usage(
                h, getattr(amdsmi.AmdSmiMemoryType, k))) for k in ("VRAM", "VIS_VRAM", "GTT")},
        "amdsmi_get_temp_metric": lambda: {  # [4]
            f"{t}.{m}": record(lambda t=t, m=m: amdsmi.amdsmi_get_temp_metric(
                h, getattr(T, t), getattr(M, m)))
            for t in ("EDGE", "HOTSPOT", "VRAM")
            for m in ("CURRENT", "CRITICAL", "EMERGENCY", "MAX")},
        "amdsmi_get_power_info": lambda: amdsmi.amdsmi_get_power_info(h),  # [3]
        "amdsmi_get_power_cap_info": lambda: amdsmi.amdsmi_get_power_cap_info(h),  # [2]
        "amdsmi_get_energy_count": lambda: amdsmi.amdsmi_get_energy_count(h),
        "amdsmi_get_gpu_fan_speed": lambda: {  # Instinct: NOT_SUPPORTED (passive)
            str(i): record(lambda i=i: amdsmi.amdsmi_get_gpu_fan_speed(h, i)) for i in range(2)},
        "amdsmi_get_gpu_fan_speed_max": lambda: amdsmi.amdsmi_get_gpu_fan_speed_max(h, 0),
        "amdsmi_get_gpu_xgmi_link_status": lambda: amdsmi.amdsmi_get_gpu_xgmi_link_status(h),
        "amdsmi_get_clock_info": lambda: {
            c: record(lambda c=c: amdsmi.amdsmi_get_clock_info(
                h, getattr(amdsmi.AmdSmiClkType, c))) for c in ("GFX", "MEM", "SOC")},
        "amdsmi_get_gpu_activity": lambda: amdsmi.amdsmi_get_gpu_activity(h),
        "amdsmi_get_gpu_metrics_info": lambda: amdsmi.amdsmi_get_gpu_metrics_info(h),  # [11]
        "amdsmi_get_gpu_metrics_info (raw struct)": lambda: raw_metrics(h),  # [5, 7]
        "amdsmi_get_pcie_info": lambda: amdsmi.amdsmi_get_pcie_info(h),
        "amdsmi_get_gpu_ecc_enabled": lambda: amdsmi.amdsmi_get_gpu_ecc_enabled(h),  # [19]
        "amdsmi_get_gpu_total_ecc_count": lambda: amdsmi.amdsmi_get_gpu_total_ecc_count(h),
        "amdsmi_get_gpu_ecc_count": lambda: {  # [19]
            b.name: record(lambda b=b: amdsmi.amdsmi_get_gpu_ecc_count(h, b))
            for b in amdsmi.AmdSmiGpuBlock if b.value},
        "amdsmi_get_gpu_bad_page_info": lambda: amdsmi.amdsmi_get_gpu_bad_page_info(h),  # [18]
        "amdsmi_get_gpu_process_list": lambda: amdsmi.amdsmi_get_gpu_process_list(h),  # [13,14]
    }
    out = {name: record(fn) for name, fn in calls.items()}
    for name, fn in (("amdsmi_get_gpu_pci_throughput", amdsmi.amdsmi_get_gpu_pci_throughput),
                     ("amdsmi_get_violation_status", amdsmi.amdsmi_get_violation_status)):
        t0 = time.monotonic()  # [15]: how long each blocks
        out[name] = record(lambda fn=fn: fn(h))
        out[name]["seconds"] = round(time.monotonic() - t0, 3)
    return out


report["handles"] = [per_handle(h) for h in handles.get("value") or []]

# [17]: an event reader on each physical GPU for ~3 s; expected: NO_DATA (status 40)
events = []
for h in handles.get("value") or []:
    kinds = [amdsmi.AmdSmiEvtNotificationType.THERMAL_THROTTLE,
             amdsmi.AmdSmiEvtNotificationType.GPU_PRE_RESET,
             amdsmi.AmdSmiEvtNotificationType.GPU_POST_RESET]
    made = record(lambda h=h, kinds=kinds: amdsmi.AmdSmiEventReader(h, kinds))
    if "error" in made:
        events.append({"AmdSmiEventReader": made})
        break
    reader = made["value"]
    reads = [record(lambda: reader.read(1000)) for _ in range(3)]
    events.append({"AmdSmiEventReader.read": reads})
    events.append({"stop": record(reader.stop)})
    break  # one reader: the read is global across GPUs in 7.0.2
report["events"] = events
report["amdsmi_shut_down"] = record(amdsmi.amdsmi_shut_down)
print(json.dumps(report, indent=1, default=repr))
PY

# -- gpuprobe itself, if installed [all] --------------------------------------------------
if "$py" -c "import gpuprobe" > /dev/null 2>&1; then
    step "gpuprobe snapshot --json" snapshot.json "$py" -m gpuprobe.daemon snapshot --json
else
    echo "gpuprobe: not importable by $py, snapshot skipped" >> "$out/steps.txt"
fi
echo "report written to $out (send it back, e.g. tar czf report.tar.gz $out)"
