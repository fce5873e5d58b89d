"""Bad input, side by side: hostile config and scenario files through `gpuprobe check-config`,
and hypothesis's fuzz inputs through the config and scenario loaders, for one or two
installations of gpuprobe (say, the one before the hardening and this one).

    .venv/bin/python benchmarks/bad_input.py [--before OLD/.venv/bin/python] [--fuzz 1000]
                                             [--write docs/reliability.md]

Each file case runs `PYTHON -m gpuprobe.daemon check-config FILE` in a child with a 60 s
limit and a 4 GiB address-space limit, and records its exit status, wall time, peak memory
(from wait4), how many lines it printed, the longest, and whether a traceback was among
them. The fuzz part feeds ``--fuzz`` inputs to each of four loaders (config values, config
files, scenario values, scenario files; the strategies of tests/test_fuzz_inputs.py) and
counts the exceptions other than ConfigError and ScenarioError, and the error lines longer
than 300 characters or on more than one line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _harness import print_table  # noqa: E402

LIMIT_S = 60
LIMIT_AS = 4 * 2**30

# Nine levels of nine aliases under a key the config knows: 9**9 values once expanded.
BILLION_LAUGHS = "\n".join(
    ["log_level:", "  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"  - &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    + [""])


def cases(tmp: Path) -> list[tuple[str, str]]:
    """(what, path) of each hostile file; config files unless the name says scenario."""
    def write(name: str, data: str | bytes) -> str:
        p = tmp / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(p)

    def scenario(name: str, text: str | bytes) -> str:
        s = write(name, text)
        return write(name + ".config.yaml", f"simulation: {{enabled: true, scenario: {s}}}\n")

    nvidia = "devices:\n  - vendor: nvidia\n    model: NVIDIA H100 80GB HBM3\n    memory: 80GiB\n"
    return [
        (f"billion laughs (a {len(BILLION_LAUGHS)}-byte config)",
         write("laughs.yaml", BILLION_LAUGHS)),
        ("/dev/zero as the config file", "/dev/zero"),
        ("10,000 nested lists", write("deep.yaml", "log_level: " + "[" * 10000)),
        ("a 400-digit integer interval",
         write("digits.yaml", "collectors: {nvidia: {interval: " + "9" * 400 + "}}\n")),
        ("interval .nan", write("nan.yaml", "collectors: {nvidia: {interval: .nan}}\n")),
        ("probes.pcie.buffer_size .inf",
         write("inf.yaml", "probes: {pcie: {buffer_size: .inf}}\n")),
        ("a 900 KB bad value", write("long.yaml", "log_level: " + "x" * 900_000 + "\n")),
        ("not UTF-8", write("latin1.yaml", b"log_level: \xe9t\xe9\n")),
        ("scenario: sm_max: abcMHz",
         scenario("clock.yaml", nvidia + "    clocks: {sm_max: abcMHz}\n")),
        ("scenario: pcie max_generation .nan",
         scenario("gen.yaml", nvidia + "    pcie: {max_generation: .nan}\n")),
        ("scenario: an XID repeated 100,000,000 times",
         scenario("xid.yaml", nvidia + "    events:\n      - {at: 1m, kind: xid, code: 79, "
                                       "count: 100000000, spacing: 1ms}\n")),
        ("scenario: not UTF-8", scenario("latin1-s.yaml", b"name: \xff\xfe\n")),
    ]


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


def run_case(python: str, path: str) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([python, "-m", "gpuprobe.daemon", "check-config", path],
                                stdout=out, stderr=out, preexec_fn=_limits, cwd=ROOT)
        status, killed = None, False
        while status is None:
            pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status = os.waitstatus_to_exitcode(code)
                peak_mb = usage.ru_maxrss / 1024
                break
            if time.monotonic() - started > LIMIT_S:
                proc.kill()
                _, code, usage = os.wait4(proc.pid, 0)
                status, killed, peak_mb = None, True, usage.ru_maxrss / 1024
                break
            time.sleep(0.005)
        proc.returncode = -1  # reaped by wait4
        wall = time.monotonic() - started
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    lines = text.splitlines()
    return {"status": "killed at 60 s" if killed else status, "wall_s": wall,
            "peak_mb": peak_mb, "lines": len(lines),
            "longest": max((len(x) for x in lines), default=0),
            "traceback": "Traceback" in text,
            "first_line": (lines[0][:160] if lines else "")}


FUZZ = r'''
import collections, json, sys, traceback
sys.path.insert(0, sys.argv[2])
from hypothesis import HealthCheck, given, settings
from tests import test_fuzz_inputs as f
from gpuprobe.daemon.core import config
from gpuprobe.daemon.core.config import ConfigError
from gpuprobe.probes.sim import scenario as sm
from gpuprobe.probes.sim.scenario import ScenarioError

S = settings(max_examples=int(sys.argv[1]), deadline=None, derandomize=True, database=None,
             suppress_health_check=list(HealthCheck))
crashes, total, long_lines = collections.Counter(), collections.Counter(), collections.Counter()

def record(kind, fn):
    total[kind] += 1
    try:
        fn()
    except (ConfigError, ScenarioError) as e:
        if len(str(e)) > 300 or "\n" in str(e):
            long_lines[kind] += 1
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)[-1]
        crashes[f"{type(e).__name__} at {tb.filename.split('/')[-1]}:{tb.lineno}"] += 1

def run(kind, strategy, fn):
    @S
    @given(strategy)
    def t(x):
        record(kind, lambda: fn(x))
    t()

def text_file(name, load):
    def go(t):
        p = f.WORK / name
        p.write_bytes(t.encode("utf-8", "surrogatepass") if isinstance(t, str) else t)
        load(p)
    return go

run("config values", f.structural(f.DEPLOY), config.from_mapping)
run("config files", f.text_mutations(f.DEPLOY_TEXT) | f.YAMLISH, text_file("c.yaml", config.load))
run("scenario values", f.structural(f.SCENARIO), lambda d: sm.parse(d, "s"))
run("scenario files", f.text_mutations(f.SCENARIO_TEXT) | f.YAMLISH,
    text_file("s.yaml", sm.load))
print(json.dumps({"inputs": sum(total.values()), "crashes": sum(crashes.values()),
                  "sites": len(crashes), "long_lines": sum(long_lines.values()),
                  "top": crashes.most_common(5)}))
'''


def run_fuzz(python: str, n: int) -> dict[str, Any]:
    p = subprocess.run([python, "-c", FUZZ, str(n), str(ROOT)], capture_output=True, text=True,
                       cwd=ROOT, timeout=1800)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


BEGIN, END = "<!-- BEGIN bad_input.py -->", "<!-- END bad_input.py -->"


def table(arms: dict[str, dict[str, Any]], argv: list[str]) -> str:
    names = list(arms)

    def cell(r: dict[str, Any]) -> str:
        status = r["status"] if isinstance(r["status"], str) else f"exit {r['status']}"
        tb = ", **traceback**" if r["traceback"] else ""
        return (f"{status}{tb}; {r['wall_s'] * 1e3:.0f} ms, {r['peak_mb']:.0f} MB; "
                f"{r['lines']} line(s), longest {r['longest']:,}")

    lines = [BEGIN,
             f"Measured by `.venv/bin/python benchmarks/bad_input.py {' '.join(argv)}` on "
             f"{platform.machine()} ({os.cpu_count()} CPUs, Python "
             f"{platform.python_version()}), {time.strftime('%Y-%m-%d')}. Each cell: exit "
             "status, wall time and peak memory of `gpuprobe check-config FILE`, and what it "
             "printed.", "",
             "| Input | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, (what, _) in enumerate(arms[names[0]]["cases"]):
        lines.append(f"| {what} | " + " | ".join(cell(arms[n]["cases"][i][1]) for n in names)
                     + " |")
    fuzz = [arms[n].get("fuzz") for n in names]
    if all(fuzz):
        def f(x: dict[str, Any]) -> str:
            if "error" in x:
                return f"did not run: {x['error'][:80]}"
            return (f"{x['crashes']} tracebacks from {x['sites']} code sites, "
                    f"{x['long_lines']} error lines over 300 characters or multi-line")
        lines.append(f"| fuzz: {fuzz[0].get('inputs', '?')} inputs to the four loaders | "
                     + " | ".join(f(x) for x in fuzz) + " |")  # type: ignore[arg-type]
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", metavar="PYTHON",
                    help="the python of an older installation to compare with")
    ap.add_argument("--fuzz", type=int, default=1000, help="inputs per loader (0: none)")
    ap.add_argument("--write", metavar="FILE", help="update this markdown file's table")
    args = ap.parse_args()
    pythons = {"now": sys.executable}
    if args.before:
        pythons = {"before": args.before, **pythons}
    arms: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gpuprobe-bad-input-") as tmp:
        todo = cases(Path(tmp))
        for name, python in pythons.items():
            arms[name] = {"cases": [(what, run_case(python, path)) for what, path in todo]}
            if args.fuzz:
                arms[name]["fuzz"] = run_fuzz(python, args.fuzz)
            print(json.dumps({name: arms[name]}, indent=1), flush=True)
    return print_table(table(arms, sys.argv[1:]), args.write, BEGIN, END)


if __name__ == "__main__":
    sys.exit(main())
