"""Benchmark: a whole collection at scale — a node with 50,000 sockets, 100,000 conntrack entries, 10,000 routes
and 40 pod netns, collected from the node and every pod in one run.

    sudo .venv/bin/python bench/collect.py [--sockets 50000] [--entries 100000] [--routes 10000] [--pods 40]

Prints the collection's wall time against its deadline, the largest process's peak RSS (engine or an agent), the
bundle's size with the default capture limits, and the node's route and sockets slices beside `ip -j route show
table all` + `ip -j neigh` and `ss -tanp` + `ss -uanp` on the same state. Then `sos report --batch -o networking`
(Debian `sosreport`: `make bench-deps`) on the same lab: its wall time, archive size, what it collected and what
it skipped, beside the slowest run of each of our slices. Goals (issue 10): within the deadline, peak under
300 MB, bundle under 20 MB; each of our five slices in less wall time than sos's networking plugin.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._conntrack_lab import conntrack_netns, fill_udp  # noqa: E402
from bundle.lab import socketfarm  # noqa: E402
from bundle.lab.topology import Topology  # noqa: E402

def _timed(ns: str, argvs: list[list[str]]) -> float:
    t = time.perf_counter()
    for argv in argvs:
        subprocess.run(["ip", "netns", "exec", ns, *argv], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def _alone(ns: str, tmp: Path, slice_name: str, *extra: str) -> float:
    """One slice of the node collected by itself (no other agent competing for the 2 cores): its duration."""
    from bundle.archive import read_bundle

    out = tmp / f"alone-{slice_name}.tar.zst"
    subprocess.run([sys.executable, "-m", "bundle", "collect", "--passive", "--slice", slice_name, "--netns", ns,
                    *extra, "-o", str(out)], cwd=REPO, capture_output=True, check=True)
    return read_bundle(out, tables=False).manifest.slices[0].duration_s


def _sos(tmp: Path) -> dict[str, object] | None:
    """sos's networking plugin on this machine, as a support engineer would run it; None when sos is absent."""
    if shutil.which("sos") is None:
        return None
    folder = tmp / "sos"
    folder.mkdir()
    started = time.perf_counter()
    proc = subprocess.run(["sos", "report", "--batch", "-o", "networking", "--tmp-dir", str(folder)],
                          capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    archives = sorted(folder.glob("sosreport-*.tar.*"))
    archives = [a for a in archives if not a.name.endswith((".md5", ".sha256"))]
    if proc.returncode != 0 or not archives:
        return {"wall_s": wall, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    subprocess.run(["tar", "-xf", str(archives[0]), "-C", str(folder)], check=True)
    top = next(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("sosreport-"))
    files = [p for p in (top / "sos_commands" / "networking").rglob("*") if p.is_file()]
    log = (top / "sos_logs" / "sos.log").read_text(errors="replace")
    return {"wall_s": wall, "size_kb": archives[0].stat().st_size / 1024, "outputs": len(files),
            "netns_outputs": sum(1 for p in files if p.name.startswith("ip_netns_exec_")),
            "skipped": [line.split("skipped command '")[1].split("'")[0] for line in log.splitlines()
                        if "skipped command '" in line and "ip netns exec" not in line],
            "skipped_in_netns": sum(1 for line in log.splitlines()
                                    if "skipped command 'ip netns exec" in line)}


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    p = argparse.ArgumentParser()
    p.add_argument("--sockets", type=int, default=50_000)
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--routes", type=int, default=10_000)
    p.add_argument("--pods", type=int, default=40)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    with Topology(f"nb-bench-scale-{os.getpid()}") as t, tempfile.TemporaryDirectory() as tmp:
        node = conntrack_netns(t)
        t.bridge("node", "cbr0")
        t.address("node", "cbr0", "10.244.1.1/24")
        pods = []
        for i in range(args.pods):
            role = f"pod{i}"
            pods.append(t.add_netns(role))
            t.veth("node", f"vp{i}", role, "eth0")
            t.enslave("node", f"vp{i}", "cbr0")
            t.address(role, "eth0", f"10.244.1.{10 + i}/24")
            t.route(role, "0.0.0.0/0", gateway="10.244.1.1")
        with t.ipr("node") as ipr:
            for i in range(args.routes):
                ipr.route("add", dst=f"172.16.{i >> 8}.{i & 255}/32", gateway="10.98.0.2")
        with socketfarm.running(node, args.sockets, lifetime=900):
            fill_udp(node, args.entries)
            count = subprocess.run(["ip", "netns", "exec", node, "conntrack", "-C"], capture_output=True,
                                   text=True).stdout.strip()
            out = Path(tmp) / "scale.tar.zst"
            argv = [sys.executable, "-m", "bundle", "collect", "--passive", "--timeout", str(args.timeout),
                    "--netns", node, "--target", "10.244.1.10:80", "-o", str(out)]
            for ns in pods:
                argv += ["--netns", ns]
            started = time.perf_counter()
            proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - started
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            ip_s = _timed(node, [["ip", "-j", "route", "show", "table", "all"], ["ip", "-j", "neigh"]])
            ss_s = _timed(node, [["ss", "-tanp"], ["ss", "-uanp"]])
            size_mb = out.stat().st_size / 1e6 if out.exists() else 0.0
            from bundle.archive import read_bundle

            b = read_bundle(out)
            runs = {(r.vantage, r.slice): r for r in b.manifest.slices}
            vid = f"netns-{node}"
            statuses: dict[str, int] = {}
            for r in b.manifest.slices:
                statuses[r.status.value] = statuses.get(r.status.value, 0) + 1
            socks, nat = b.sockets(vid), b.nat(vid)
            slowest: dict[str, float] = {}
            for r in b.manifest.slices:
                slowest[r.slice] = max(slowest.get(r.slice, 0.0), r.duration_s)
            route_alone = _alone(node, Path(tmp), "route")
            sockets_alone = _alone(node, Path(tmp), "sockets", "--socket-samples", "1")
            sos = _sos(Path(tmp))
    print(f"state: {args.sockets} sockets asked ({socks.total if socks else '?'} seen), conntrack {count} entries, "
          f"{args.routes} routes, {args.pods} pod netns + the node")
    print(f"collect: exit {proc.returncode}, {wall:.1f} s (deadline {args.timeout:.0f} s), largest process peak "
          f"{peak_mb:.0f} MB, bundle {size_mb:.1f} MB, slices {json.dumps(statuses)}")
    print(f"node route slice {runs[(vid, 'route')].duration_s:.2f} s vs ip -j route show table all + ip -j neigh "
          f"{ip_s:.2f} s; sockets slice {runs[(vid, 'sockets')].duration_s:.2f} s (3 samples) vs ss -tanp + ss -uanp "
          f"{ss_s:.2f} s; nat slice {runs[(vid, 'nat')].duration_s:.2f} s"
          + (f" (conntrack total {nat.table.total})" if nat and not hasattr(nat.table, 'unavailable') else ""))
    print(f"alone on the node: route slice {route_alone:.2f} s vs ip {ip_s:.2f} s; sockets slice (1 sample, owners) "
          f"{sockets_alone:.2f} s vs ss {ss_s:.2f} s")
    goals = wall < args.timeout and peak_mb < 300 and size_mb < 20
    print(f"goals (within the deadline, < 300 MB, < 20 MB): {'met' if goals else 'NOT met'}")
    print(f"slowest run of each slice over the {args.pods + 1} vantages: "
          + ", ".join(f"{name} {d:.2f} s" for name, d in slowest.items()))
    if sos is None:
        print("sos: not installed (make bench-deps installs Debian's sosreport)")
        return
    if "error" in sos:
        print(f"sos report failed after {sos['wall_s']:.1f} s: {sos['error']}")
        return
    print(f"sos report --batch -o networking: {sos['wall_s']:.1f} s, {sos['size_kb']:.0f} KB, {sos['outputs']} "
          f"command outputs ({sos['netns_outputs']} of them inside a netns); skipped on its kernel-module check: "
          f"{', '.join(sos['skipped']) or 'nothing'} (+{sos['skipped_in_netns']} in netns)")
    faster = all(d < float(sos["wall_s"]) for d in slowest.values())  # type: ignore[arg-type]
    print(f"goal: every slice faster than sos's networking plugin -> {'met' if faster else 'NOT met'}; "
          f"the whole collection {wall:.1f} s vs sos {sos['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
