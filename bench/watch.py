"""What `netbundle watch` costs while it watches, and whether its ring keeps up — in one run, on the `healthy` lab:

1. Idle cost: `watch --every 1 --ring-bytes 64MiB` on a target from the client pod for --minutes (default 10),
   with an application in the pod connecting four times a second (the ring has traffic to keep and let go).
   The watch process's CPU (utime+stime from /proc) as % of one core, and its RSS sampled every 5 s: first,
   after the ring filled, last, max — flat means the ring and the record are bounded.
2. Burst: 10,000 packets/s for --burst-seconds (default 10) to the target's port from the pod, the ring and
   tcpdump (`-w /dev/null`, same interface, same filter) listening at once. The ring's PACKET_STATISTICS
   (received, dropped) from the bundle --bundle-on-exit writes, against tcpdump's own count.

    sudo .venv/bin/python bench/watch.py [--minutes 10] [--burst-seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bundle.archive import read_bundle
from bundle.lab import scenarios

TARGET = "10.244.1.3:8080"
_BLAST = """
import socket, sys, time
rate, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, start = 0, time.monotonic()
while time.monotonic() - start < seconds:
    due = int((time.monotonic() - start) * rate)
    while sent < due:
        s.sendto(b"x" * 32, ("10.244.1.3", 8080))
        sent += 1
    time.sleep(0.002)
print(sent)
"""


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    return int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("VmRSS:")))


def _watch(info: scenarios.LabInfo, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bundle", "watch", "--target", TARGET, "--netns",
                             info.namespaces["pod"], "--every", "1", "--ring-bytes", str(64 << 20), "--out-dir",
                             str(out), "--json", "--no-counter-triggers", "--slice", "route", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def idle(info: scenarios.LabInfo, minutes: float, tmp: Path) -> None:
    app = subprocess.Popen(["ip", "netns", "exec", info.namespaces["pod"], sys.executable, "-m", "bundle.lab.client",
                            "--target", TARGET, "--interval", "0.25"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    proc = _watch(info, tmp)
    try:
        time.sleep(3)
        cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
        samples: list[tuple[float, int]] = []
        while time.monotonic() - t0 < minutes * 60:
            samples.append((time.monotonic() - t0, _rss_kib(proc.pid)))
            time.sleep(5)
        cpu = (_cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        app.kill()
    filled = next((rss for t, rss in samples if t >= 40), samples[-1][1])  # the 30 s ring is full by then
    print(f"idle watch, {minutes:g} min, 1 probe/s, 64 MiB ring, app at 4 connects/s: CPU {cpu:.2f}% of one core; "
          f"RSS first {samples[0][1] / 1024:.1f} MiB, after the ring filled {filled / 1024:.1f} MiB, "
          f"last {samples[-1][1] / 1024:.1f} MiB, max {max(r for _, r in samples) / 1024:.1f} MiB "
          f"({len(samples)} samples)")


def burst(info: scenarios.LabInfo, seconds: float, tmp: Path) -> None:
    iface = "eth0"
    dump = subprocess.Popen(["ip", "netns", "exec", info.namespaces["pod"], "tcpdump", "-i", iface, "-nn", "-w",
                             "/dev/null", "-s", "128", "-B", "8192", f"host 10.244.1.3 and port 8080"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # UDP to a port nothing listens on: every datagram earns an ICMP port unreachable, which would be a trigger
    proc = _watch(info, tmp, "--bundle-on-exit", "--no-icmp-trigger", "--ring-seconds", str(seconds + 5))
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())  # the start event: the ring is listening
    assert first["event"] == "start" and first["ring"], first
    sent = subprocess.run(["ip", "netns", "exec", info.namespaces["pod"], sys.executable, "-c", _BLAST, "10000",
                           str(seconds)], capture_output=True, text=True, check=True).stdout.strip()
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    dump.send_signal(signal.SIGINT)
    _, err = dump.communicate(timeout=30)
    path = next(e["path"] for e in map(json.loads, stdout.splitlines()) if e["event"] == "bundle")
    ring = read_bundle(Path(path)).watch().ring
    tcpdump = {rest: int(n) for n, rest in (line.split(" ", 1) for line in err.splitlines()
                                            if line.split(" ", 1)[0].isdigit())}
    print(f"burst: {sent} UDP packets in {seconds:g} s ({int(sent) / seconds:.0f}/s) to {TARGET}; ring: kernel "
          f"received {ring.kernel_received}, dropped {ring.kernel_dropped}, seen {ring.packets_seen}, kept "
          f"{ring.packets_kept}; tcpdump on the same interface: captured {tcpdump.get('packets captured', '?')}, "
          f"dropped by kernel {tcpdump.get('packets dropped by kernel', '?')}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--burst-seconds", type=float, default=10.0)
    ap.add_argument("--only", choices=("burst", "idle"), help="run one part")
    args = ap.parse_args()
    with scenarios.running("healthy", f"nb-bwatch{os.getpid() % 1000}") as info, \
            tempfile.TemporaryDirectory(prefix="nb-bench-watch-") as tmp:
        if args.only != "idle":
            burst(info, args.burst_seconds, Path(tmp))
        if args.only != "burst":
            idle(info, args.minutes, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
