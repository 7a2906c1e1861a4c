"""Benchmark: the NAT slice's conntrack work against `conntrack -L` and `conntrack -C`, in one run, on one table.

    sudo .venv/bin/python bench/conntrack.py [--entries 100000] [--runs 3]

A lab netns gets conntrack switched on (one nft rule that matches on ct state) and a long UDP timeout (a
per-netns sysctl, lab only); a socket there sends one UDP datagram to each of --entries distinct
address/port pairs in a subnet routed to a second netns, so each makes one conntrack entry. Then,
inside that netns, each run times:
  ours       the whole slice's conntrack part: settings and counters (/proc/sys, /proc/net/stat) before and
             after, one ctnetlink dump with exact totals by protocol and TCP state and the entries touching
             the watched addresses (a target and its endpoints), timed inside a fresh process once its
             imports are done (the collect agent has them loaded), with its peak RSS; the process's whole
             time is printed beside it;
  conntrack -L > /dev/null, and conntrack -C.
Prints each best of --runs and the ratio. Goal: ours < conntrack -L alone (ratio < 1.0), under 150 MB peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._conntrack_lab import conntrack_netns, fill_udp  # noqa: E402
from bundle.lab.topology import Topology  # noqa: E402

_OURS = """
import json, resource, socket, sys, time
t0 = time.perf_counter()
from bundle.collect.nat import conntrack_table, sample, settings
t = time.perf_counter()
conf, first = settings(), sample()
table = conntrack_table(["10.99.0.1", "10.99.0.2", "10.99.1.7"], 5000, 60)
last = sample()
elapsed = time.perf_counter() - t
print(json.dumps({"s": elapsed, "import_s": t - t0, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "total": table.total, "matched": table.matched, "count": last.count}))
"""


def _in(ns: str, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True,
                          **kw)  # type: ignore[call-overload]


def _timed(ns: str, argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", ns, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    with Topology(f"nb-bench-ct-{os.getpid()}") as t:
        ns = conntrack_netns(t)
        fill = time.perf_counter()
        fill_udp(ns, args.entries)
        fill = time.perf_counter() - fill
        count = int(_in(ns, ["conntrack", "-C"]).stdout.strip())
        ours: list[dict[str, float]] = []
        listing, counting = [], []
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for _ in range(args.runs):
            started = time.perf_counter()
            ours.append(json.loads(_in(ns, [sys.executable, "-c", _OURS], env=env).stdout))
            ours[-1]["process_s"] = time.perf_counter() - started
            listing.append(_timed(ns, ["conntrack", "-L"]))
            counting.append(_timed(ns, ["conntrack", "-C"]))
    best = min(ours, key=lambda r: r["s"])
    print(f"table: {count} entries (filled in {fill:.1f} s); ours saw {best['total']:.0f}, "
          f"{best['matched']:.0f} matching the watched addresses")
    print(f"{'netbundle conntrack part':<28} {best['s']:6.3f} s  peak RSS {max(r['rss_mb'] for r in ours):.0f} MB "
          f"(as a fresh process: {min(r['process_s'] for r in ours):.3f} s, of which importing "
          f"{min(r['import_s'] for r in ours):.3f} s; the agent has imported it already)")
    print(f"{'conntrack -L > /dev/null':<28} {min(listing):6.3f} s")
    print(f"{'conntrack -C':<28} {min(counting):6.3f} s")
    print(f"ratio ours / conntrack -L: {best['s'] / min(listing):.2f} (goal < 1.0)")


if __name__ == "__main__":
    main()
