"""Compare the metric families and series of two builds' /metrics on the default simulation.

Each build (a Python interpreter with gpuprobe installed) runs ``gpuprobe run --simulate``
with the default config on a loopback port; after the same wait both are scraped and the
families and series (name and labels, not values) compared. Used to show that a refactor
changes no output: ``python benchmarks/series_diff.py --before /path/to/old/python``.

The active probes run on a randomised schedule (jitter, a random first run), so which GPU
has been probed, or skipped for which reason, by the time of the scrape is chance: their
series (``gpuprobe_probe_*``) are compared by family only, every other series exactly.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from _harness import child_env, free_port, scrape, series, stop, wait_http

PROBE = "gpuprobe_probe_"


def run(python: str, wait: float) -> tuple[set[str], set[str]]:
    port = free_port()
    cmd = [python, "-m", "gpuprobe.daemon", "run", "--simulate", "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_http(url, proc)
        time.sleep(wait)
        text = scrape(url).text
    finally:
        stop(proc)
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    keys = {name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"
            for name, labels, _ in series(text)}
    return families, keys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="the Python of the old build")
    ap.add_argument("--after", default=sys.executable, help="the Python of the new build")
    ap.add_argument("--wait", type=float, default=90.0,
                    help="seconds after the first answer before the scrape (default 90: "
                         "long enough for every probe kind to have run)")
    args = ap.parse_args()
    (fb, sb), (fa, sa) = run(args.before, args.wait), run(args.after, args.wait)
    sb, sa = ({k for k in x if not k.startswith(PROBE)} for x in (sb, sa))
    print(f"families: before {len(fb)}, after {len(fa)}, only before {len(fb - fa)}, "
          f"only after {len(fa - fb)}")
    print(f"series (all but {PROBE}*): before {len(sb)}, after {len(sa)}, only before "
          f"{len(sb - sa)}, only after {len(sa - sb)}")
    for tag, diff in (("-", sorted(fb - fa) + sorted(sb - sa)), ("+", sorted(fa - fb)
                                                                   + sorted(sa - sb))):
        for line in diff:
            print(f"{tag} {line}")
    return 0 if fb == fa and sb == sa else 1


if __name__ == "__main__":
    sys.exit(main())
