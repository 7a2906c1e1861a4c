"""The counters slice against the kernel's own tool: every counter `nstat -az` prints in a netns equals what the
slice read there at the end of its window (the netns is quiet in between); the parser on the three files'
formats; the slice alone takes two readings an interval apart, not a whole deadline."""

from __future__ import annotations

import os
import subprocess

import pytest

from bundle.archive import read_bundle
from bundle.collect.counters import WATCHED, parse
from tests.conftest import netbundle

pytestmark = pytest.mark.privileged


def _nstat(netns: str) -> dict[str, int]:
    # -a absolute values, -z zeros too, -s leave nstat's history file alone
    out = subprocess.run(["ip", "netns", "exec", netns, "nstat", "-azs"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[1:] if line.strip()}


@pytest.fixture
def quiet_netns():
    name = f"nbt-ctr-{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        # some traffic first, so the counters compared are not all zero: pings, a refused TCP connect, a UDP
        # datagram to a closed port (UdpNoPorts, IcmpOutDestUnreachs)
        subprocess.run(["ip", "netns", "exec", name, "ping", "-c", "3", "-i", "0.2", "127.0.0.1"],
                       capture_output=True, check=True)
        script = ("import socket\ns=socket.socket(); s.settimeout(1)\ntry: s.connect(('127.0.0.1', 1))\n"
                  "except OSError: pass\nu=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                  "u.sendto(b'x', ('127.0.0.1', 9))\n")
        subprocess.run(["ip", "netns", "exec", name, "python3", "-c", script], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_counters_equal_nstat(tmp_path, quiet_netns):
    out = tmp_path / "c.tar.zst"
    proc = netbundle("collect", "--netns", quiet_netns, "--slice", "counters", "--passive", "-o", str(out),
                     timeout=60)
    assert proc.returncode == 0, proc.stderr
    nstat = _nstat(quiet_netns)
    b = read_bundle(out)
    [vantage] = b.manifest.vantages
    doc = b.counters(vantage.id)
    assert doc is not None and not doc.unreadable
    assert len(nstat) > 200
    missing = sorted(set(nstat) - set(doc.end))
    assert missing == []
    differ = {k: (doc.end[k], v) for k, v in nstat.items() if doc.end[k] != v}
    assert differ == {}
    # the traffic made before shows, and the gauges nstat leaves out are kept beside the counters
    assert doc.end["IcmpInEchos"] >= 3 and doc.end["TcpOutRsts"] >= 1 and doc.end["UdpNoPorts"] >= 1
    assert "TcpCurrEstab" in doc.end and "TcpCurrEstab" not in nstat
    # alone, the slice reads twice about an interval apart (not until the collect's deadline)
    assert len(doc.samples) == 2 and doc.window_s < 5
    assert set(doc.samples[0].values) == set(WATCHED) & set(doc.end)
    assert doc.delta == {k: v - doc.start[k] for k, v in doc.end.items() if v != doc.start.get(k, v)}


def test_parse_the_three_formats():
    snmp = "Ip: Forwarding DefaultTTL InReceives\nIp: 1 64 12\nTcp: RtoMin InSegs\nTcp: 200 -1\n"
    assert parse(snmp) == {"IpForwarding": 1, "IpDefaultTTL": 64, "IpInReceives": 12, "TcpRtoMin": 200, "TcpInSegs": -1}
    netstat = "TcpExt: SyncookiesSent IPReversePathFilter\nTcpExt: 0 7\nIpExt: InNoRoutes\nIpExt: 3\n"
    assert parse(netstat) == {"TcpExtSyncookiesSent": 0, "TcpExtIPReversePathFilter": 7, "IpExtInNoRoutes": 3}
    assert parse("Ip6InReceives                   \t5\nIcmp6InMsgs 0\n") == {"Ip6InReceives": 5, "Icmp6InMsgs": 0}
    # a header without its value line, or a value that is not a number, is skipped, never mis-paired
    assert parse("Udp: InDatagrams NoPorts\nTcp: InSegs\nTcp: x\n") == {}
