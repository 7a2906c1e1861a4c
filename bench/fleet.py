"""`fleet collect --ssh` at scale: N lab nodes (netns, each running Debian's sshd; bundle/lab/sshnodes.py), every
node collecting the same slices with one shared start and capture window, against one node alone with the same
options, in one run. Reports the wall times and their ratio (the fleet's promise: N nodes take about as long as
one), each node's duration, and the coordinator's peak RSS (bundles stream to disk: it must not grow with N).

    sudo .venv/bin/python bench/fleet.py [--nodes 40] [--window 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bundle.archive.incidentset import read_set
from bundle.lab.sshnodes import SshNode, start_ssh_nodes
from bundle.lab.topology import Topology


def _run(t: Topology, ssh_config: Path, hosts: list[str], out: Path, window: float, start_in: float,
         parallel: int, slices: list[str]) -> tuple[float, int, str]:
    """Wall seconds, the coordinator's peak RSS (KiB, VmHWM sampled until it exits), stderr's last line."""
    argv = ["ip", "netns", "exec", t.namespaces["ctl"], sys.executable, "-m", "bundle", "fleet", "collect",
            "--ssh", ",".join(hosts), "--ssh-config", str(ssh_config), "--parallel", str(parallel),
            "--start-in", str(start_in), "--window", str(window), "--node-timeout", "120", "-o", str(out),
            "--", "--target", "10.244.60.12:8080", *[a for sl in slices for a in ("--slice", sl)], "--timeout", "60"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    coordinator = None
    while proc.poll() is None:
        if coordinator is None:  # ip netns exec execs into python: the same pid once it has
            coordinator = proc.pid
        try:
            status = Path(f"/proc/{coordinator}/status").read_text()
            peak = max(peak, int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))))
        except (OSError, StopIteration):
            pass
        time.sleep(0.1)
    wall = time.monotonic() - t0
    err = proc.stderr.read() if proc.stderr else ""
    return wall, peak, (err.strip().splitlines() or [""])[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=40)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--start-in", type=float, default=8.0)
    ap.add_argument("--slices", default="route,sockets,capture", help="the nodes' collect slices")
    args = ap.parse_args()
    made_run_sshd = not Path("/run/sshd").exists()
    if made_run_sshd:
        Path("/run/sshd").mkdir(mode=0o755)
    t = Topology(f"nb-bfleet-{os.getpid() % 10000}")
    try:
        nodes = [SshNode(f"node-{i:02d}", 11 + i) for i in range(args.nodes)]
        t0 = time.monotonic()
        ssh_config = start_ssh_nodes(t, nodes)
        t.python(nodes[1].name, "bundle.lab.listener", "--port", "8080", "--send", "64")
        t.wait_listening(nodes[1].name, 8080)
        print(f"lab: {args.nodes} sshd nodes in {time.monotonic() - t0:.1f} s; 2 cores: {os.cpu_count()} cpu(s)")
        with tempfile.TemporaryDirectory(prefix="nb-bench-fleet-") as tmp:
            slices = args.slices.split(",")
            one_wall, one_rss, one_last = _run(t, ssh_config, [nodes[0].name], Path(tmp) / "one.tar.zst",
                                               args.window, args.start_in, 1, slices)
            all_wall, all_rss, all_last = _run(t, ssh_config, [n.name for n in nodes], Path(tmp) / "all.tar.zst",
                                               args.window, args.start_in, args.nodes, slices)
            st = read_set(Path(tmp) / "all.tar.zst")
            one = read_set(Path(tmp) / "one.tar.zst")
            durations = sorted(n.duration_s for n in st.manifest.nodes)
            sizes = (Path(tmp) / "all.tar.zst").stat().st_size
            # each node's own collect (its manifest: created..finished): stretched here by 40 "nodes" sharing
            # this machine's cores; what the fleet adds is the rest
            own = sorted((b.manifest.finished - b.manifest.created).total_seconds() for b in st.bundles.values())
            one_own = [(b.manifest.finished - b.manifest.created).total_seconds() for b in one.bundles.values()][0]
            last_end = max(b.manifest.finished for b in st.bundles.values())
            tail = (st.manifest.finished - last_end).total_seconds()
        print(f"one node : wall {one_wall:6.1f} s, coordinator peak RSS {one_rss / 1024:6.1f} MiB  ({one_last})")
        print(f"{args.nodes} nodes: wall {all_wall:6.1f} s, coordinator peak RSS {all_rss / 1024:6.1f} MiB  ({all_last})")
        print(f"ratio    : {all_wall / one_wall:.2f}x one node's wall time (start-in {args.start_in:g} s, window "
              f"{args.window:g} s, both included); set {sizes / 1e6:.1f} MB")
        print(f"per node : median {durations[len(durations) // 2]:.1f} s, max {durations[-1]:.1f} s; "
              f"{len(st.bundles)} of {len(st.manifest.nodes)} bundles verified")
        print(f"collect  : one node alone {one_own:.1f} s; in the 40, median {own[len(own) // 2]:.1f} s, max "
              f"{own[-1]:.1f} s (the nodes share {os.cpu_count()} cores here); from the last node's end to the set "
              f"written: {tail:.1f} s")
        return 0 if len(st.bundles) == args.nodes else 1
    finally:
        t.teardown()
        if made_run_sshd:
            Path("/run/sshd").rmdir()


if __name__ == "__main__":
    sys.exit(main())
