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


@pytest.mark.privileged
def test_policy_chains_equal_iptables_counters(tmp_path):
    """The CNI policy chains (Calico-shaped, from the policy-ingress lab) as the counters slice reads them equal
    `iptables -L CHAIN -v -x -n` in the same netns: per chain the rule count, the packets summed over its rules
    and those of its DROP rules (three forwarded SYNs dropped before the collect). The interface a chain guards
    comes from its Calico name or the dispatch rule into it. (That drops rising during the window are counted
    is tests/collect/test_policy.py's, on the lab.)"""
    import os
    import sys

    from bundle.lab.scenarios import _CALICO_INGRESS
    from bundle.lab.topology import Topology

    def listing(ns: str, chain: str) -> tuple[int, int, int]:
        out = subprocess.run(["ip", "netns", "exec", ns, "iptables", "-t", "filter", "-L", chain, "-v", "-x", "-n"],
                             capture_output=True, text=True, check=True).stdout.splitlines()[2:]
        rows = [line.split() for line in out if line.strip()]
        return len(rows), sum(int(r[0]) for r in rows), sum(int(r[0]) for r in rows if r[2] in ("DROP", "REJECT"))

    with Topology(f"nbt-cali-{os.getpid() % 100000}") as t:
        ns = t.add_netns("node")
        for role, ifname, net in (("peer", "cbr0", 1), ("client", "eth1", 2)):
            t.add_netns(role)
            t.veth("node", ifname, role, "eth0")
            t.address("node", ifname, f"10.244.{net}.1/24")
            t.address(role, "eth0", f"10.244.{net}.{net + 1}/24")
            t.route(role, "0.0.0.0/0", gateway=f"10.244.{net}.1")
        t.sysctl("node", "net.ipv4.ip_forward", "1")
        t.iptables_restore("node", _CALICO_INGRESS)
        syn = ("import socket,time\nheld=[]\nfor i in range(3):\n    s=socket.socket(); s.setblocking(False)\n"
               "    s.connect_ex(('10.244.1.2', 8080)); held.append(s)\ntime.sleep(0.3)\n")
        subprocess.run(["ip", "netns", "exec", t.namespaces["client"], sys.executable, "-c", syn], check=True)
        out = tmp_path / "b.tar.zst"
        proc = netbundle("collect", "--passive", "--slice", "counters", "--netns", ns, "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        doc = read_bundle(out).counters(f"netns-{ns}")
        by_chain = {w.start.chain: w for w in doc.policy_chains}
        assert set(by_chain) == {"cali-FORWARD", "cali-to-wl-dispatch", "cali-tw-cbr0", "cali-pi-_NBLAB0payments"}
        for name, w in by_chain.items():
            assert w.end is not None and (w.end.rules, w.end.packets, w.end.drop_packets) == listing(ns, name), name
        tw = by_chain["cali-tw-cbr0"]
        assert tw.end.drop_packets >= 3 and tw.end.engine == "calico" and tw.end.backend == "iptables-nft"
        assert tw.end.interfaces == ["cbr0"] and by_chain["cali-to-wl-dispatch"].end.interfaces == ["cbr0"]
