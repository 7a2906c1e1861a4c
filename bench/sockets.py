"""Benchmark: the sockets slice against `ss -tanp` + `ss -uanp` on the same netns, in one run.

    sudo .venv/bin/python bench/sockets.py [--sizes 10000 50000] [--repeat 3]

For each size, a fresh netns holds that many sockets in mixed states (bundle.lab.socketfarm).
Prints wall times (best of --repeat), the ratio ours/ss (goal: < 1.0) and our peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pyroute2 import IPRoute, netns  # noqa: E402
from bundle.lab import socketfarm  # noqa: E402

_SLICE_ONCE = r"""
import json, resource, sys, time
from bundle._netns import setns_net, named_netns_path
setns_net(named_netns_path(sys.argv[1]))
from bundle.collect.base import SliceContext
from bundle.collect.sockets import SocketsCollector
from bundle.models.request import CollectOptions
ctx = SliceContext(vantage_id="bench", targets=(), passive=True, deadline=time.monotonic() + 120,
                   options=CollectOptions(socket_samples=1))
t = time.perf_counter()
result = SocketsCollector().collect(ctx)
elapsed = time.perf_counter() - t
doc = json.loads(result.artifacts[0].data)
print(json.dumps({"seconds": elapsed, "sockets": doc["total"], "kept": doc["kept"],
                  "json_bytes": len(result.artifacts[0].data),
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def _time_ss(ns: str) -> float:
    t = time.perf_counter()
    for flag in ("-tanp", "-uanp"):
        subprocess.run(["ip", "netns", "exec", ns, "ss", flag], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def _ours(ns: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _SLICE_ONCE, ns], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout
    return json.loads(out)


def _cli(ns: str, folder: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bundle", "collect", "--slice", "sockets", "--passive", "--socket-samples",
                    "1", "--netns", ns, "-o", f"{folder}/b.tar.zst"], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - t


def run(size: int, repeat: int) -> dict[str, float]:
    name = f"nbt-bench-{size}"
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        with tempfile.TemporaryDirectory() as tmp, socketfarm.running(name, size):
            ss = _best(lambda: _time_ss(name), repeat)
            runs = [_ours(name) for _ in range(repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            cli = _best(lambda: _cli(name, tmp), repeat)
            return {"size": size, "sockets": best["sockets"], "ss_s": ss, "ours_s": best["seconds"],
                    "ratio": best["seconds"] / ss, "ours_cli_s": cli, "maxrss_mb": max(r["maxrss_mb"] for r in runs),
                    "json_mb": best["json_bytes"] / 1e6}
    finally:
        netns.remove(name)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    print(f"{'target':>8} {'sockets':>8} {'ss -tanp+-uanp':>15} {'sockets slice':>14} {'ratio':>6} "
          f"{'netbundle CLI':>14} {'peak RSS':>9} {'JSON':>8}")
    for size in args.sizes:
        r = run(size, args.repeat)
        print(f"{size:>8} {r['sockets']:>8} {r['ss_s']:>14.3f}s {r['ours_s']:>13.3f}s {r['ratio']:>6.2f} "
              f"{r['ours_cli_s']:>13.3f}s {r['maxrss_mb']:>7.0f}MB {r['json_mb']:>6.1f}MB")


if __name__ == "__main__":
    main()
