"""The benchmarks' lab netns with conntrack on: UDP sent from it to 10.99.0.0/16 goes to a second netns through
a resolved next hop, so each datagram makes one confirmed entry; a 600 s UDP timeout keeps them (lab-only
per-netns settings)."""

from __future__ import annotations

import subprocess
import sys

from bundle.lab.topology import Topology

_CONNTRACK_ON = "table inet nb_bench {\n chain out {\n type filter hook output priority 0;\n ct state new counter\n }\n}\n"


_FILL = """
import socket, sys
n, to = int(sys.argv[1]), sys.argv[2:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    if to:  # one destination: a socket of its own per datagram, so each has its own source port
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", (to[0], int(to[1])) if to else (f"10.99.{(i >> 8) & 255}.{i & 255}", 1000 + (i >> 16)))
    if to:
        s.close()
"""


def fill_udp(ns: str, n: int, to: tuple[str, int] | None = None) -> None:
    """n conntrack entries: one datagram to each of n distinct destinations behind the sink, or with `to`, n
    datagrams to that one address and port from n distinct source ports (the entries of one target)."""
    dest = [to[0], str(to[1])] if to else []
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _FILL, str(n), *dest], check=True)


def conntrack_netns(t: Topology) -> str:
    ns = t.add_netns("node")
    t.add_netns("sink")  # the datagrams' next hop: resolved once, so every entry is confirmed at once
    t.veth("node", "eth0", "sink", "eth0")
    t.address("node", "eth0", "10.98.0.1/24")
    t.address("sink", "eth0", "10.98.0.2/24")
    t.route("node", "10.99.0.0/16", gateway="10.98.0.2")
    t.nft("node", _CONNTRACK_ON)
    t.sysctl("node", "net.netfilter.nf_conntrack_udp_timeout", "600")
    t.sysctl("node", "net.netfilter.nf_conntrack_udp_timeout_stream", "600")
    return ns
