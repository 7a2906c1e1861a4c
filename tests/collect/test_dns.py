"""The DNS slice against glibc and a real DNS server (dnsmasq, query log on) in lab namespaces."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bundle.archive import read_bundle
from bundle.models import DnsSlice, Outcome
from bundle.render.view import build_view
from tests.conftest import fresh, netbundle

pytestmark = pytest.mark.privileged

_QUERY = re.compile(r"query\[(A|AAAA)\] (\S+) from (\S+)")
VARIANTS = {
    "kubernetes": None,  # the lab's own pod resolv.conf (ndots:5, three search domains)
    # glibc reads '#' mid-line as a search domain and ignores the indented nameserver line
    "odd": "search a.example b.example   # note\nnameserver 10.96.0.10        ; comment\n"
           "    nameserver 10.9.9.9\noptions ndots:2 timeout:1\n",
}
NAMES = ["payments", "doesnotexist", "payments.default.svc.cluster.local",
         "payments.default.svc.cluster.local.", "a.b.c.d.e.f", "kubernetes.default"]


def _log_queries(log: Path, source: str) -> list[tuple[str, str]]:
    return [(m.group(2), m.group(1)) for m in map(_QUERY.search, log.read_text().splitlines())
            if m and m.group(3) == source]


def _collect(tmp_path, info, *names: str, vantages=("pod",), only_dns=False) -> dict[str, DnsSlice]:
    out = tmp_path / f"b{len(list(tmp_path.glob('b*.tar.zst')))}.tar.zst"  # a bundle is never overwritten
    argv = ["collect", "-o", str(out)] + (["--slice", "dns"] if only_dns else [])
    for n in names:
        argv += ["--name", n]
    for role in vantages:
        argv += ["--netns", info.namespaces[role]]
    proc = netbundle(*argv)
    assert proc.returncode in (0, 5), proc.stderr
    b = read_bundle(out)
    return {role: b.dns(f"netns-{info.namespaces[role]}") for role in vantages}, b


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_query_sequence_equals_glibc(tmp_path, lab, variant):
    """For each name: the queries the slice sent, in order, equal those glibc sends for `getent ahosts`."""
    info = lab("dns-ndots")
    pod = info.namespaces["pod"]
    conf = Path(info.files["pod_resolv_conf"])
    log = Path(info.files["dns_log"])
    original = conf.read_text()
    if VARIANTS[variant]:
        conf.write_text(VARIANTS[variant])
    try:
        for name in NAMES:
            log.write_text("")
            subprocess.run(["ip", "netns", "exec", pod, "getent", "ahosts", name], capture_output=True, timeout=30)
            time.sleep(0.2)
            glibc = _log_queries(log, "10.244.1.2")
            slices, _ = _collect(tmp_path, info, name, only_dns=True)
            ours = [(q.qname, q.qtype) for q in slices["pod"].names[0].resolution.queries]
            assert ours == glibc, (variant, name)
            assert glibc, name  # not vacuous: glibc asked something
    finally:
        conf.write_text(original)


def test_ndots_amplification_and_fqdn(tmp_path, lab):
    info = lab("dns-ndots")
    slices, b = _collect(tmp_path, info, "doesnotexist", "payments", "payments.default.svc.cluster.local.")
    by = {r.name: r for r in slices["pod"].names}
    miss = by["doesnotexist"].resolution
    assert miss.outcome is Outcome.NXDOMAIN and len(miss.queries) == 8 and miss.expected_queries == 8
    assert len({q.qname for q in miss.queries}) == 4
    hit = by["payments"].resolution
    assert hit.outcome is Outcome.ANSWERED and hit.addresses == ["10.96.0.20"] and len(hit.queries) == 2
    fq = by["payments.default.svc.cluster.local."].resolution
    assert len(fq.candidates) == 1 and fq.outcome is Outcome.ANSWERED
    findings = build_view(b).findings
    amp = [f for f in findings if f.id == "dns.search_amplification" and f.target.name == "doesnotexist"]
    assert amp and "8 queries over 4 candidates" in amp[0].summary and "directly costs 2 queries" in amp[0].summary
    assert amp[0].severity.value == "info"  # ndots:5 answered fast: what every healthy pod pays
    assert not [f for f in findings if f.id == "dns.timeout"]
    assert any(m.path.endswith("/resolv.conf") for m in b.manifest.members)


def test_dropped_dns_is_a_timeout_not_nxdomain(tmp_path, lab):
    info = lab("dns-drop")
    slices, b = _collect(tmp_path, info, "payments")
    res = slices["pod"].names[0].resolution
    assert res.outcome is Outcome.TIMEOUT and all(q.timeout for q in res.queries)
    assert {q.qname for q in res.queries} == {"payments.default.svc.cluster.local"}  # glibc stops at the timeout
    ids = {f.id for f in build_view(b).findings}
    assert "dns.timeout" in ids and "dns.nxdomain" not in ids
    runs = {(s.vantage, s.slice): s for s in b.manifest.slices}
    pod = f"netns-{info.namespaces['pod']}"
    assert runs[(pod, "dns")].status.value == "partial" and "no nameserver answered" in runs[(pod, "dns")].reason
    assert runs[(pod, "route")].status.value == "complete" and runs[(pod, "sockets")].status.value == "complete"


def test_unreadable_resolv_conf_is_partial_and_costs_nothing_else(tmp_path, lab):
    info = lab("healthy")
    etc = Path("/etc/netns") / info.namespaces["server"]
    (etc / "resolv.conf").mkdir(parents=True)  # a folder where the file should be: unreadable
    try:
        slices, b = _collect(tmp_path, info, "payments", vantages=("server",))
    finally:
        (etc / "resolv.conf").rmdir()
        etc.rmdir()
    doc = slices["server"]
    assert doc.resolv_conf is None and doc.resolv_conf_unavailable is not None
    runs = {s.slice: s for s in b.manifest.slices}
    assert runs["dns"].status.value == "partial" and "resolv.conf unreadable" in runs["dns"].reason
    assert runs["route"].status.value == "complete" and runs["sockets"].status.value == "complete"
    assert "dns.resolv_conf_unreadable" in {f.id for f in build_view(b).findings}


def test_name_target_is_resolved_by_each_vantage_first(tmp_path, lab):
    """`--target payments:53`: each vantage resolves the name with its own resolver, and route, sockets and
    probes look at what that vantage would dial; the name's queries are recorded once, in dns.json."""
    info = lab("dns-ndots")
    out = fresh(tmp_path)
    proc = netbundle("collect", "--target", "payments:53", "--netns", info.namespaces["pod"], "--netns",
                     info.namespaces["node"], "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    b = read_bundle(out)
    [target] = b.manifest.targets
    assert (target.name, target.address, target.port) == ("payments", None, 53)
    pod, node = (f"netns-{info.namespaces[r]}" for r in ("pod", "node"))
    resolved = {v.id: v.resolved for v in b.manifest.vantages}
    assert resolved[pod] == {"payments": ["10.96.0.20"]}
    assert resolved[node] == {"payments": []}  # the node's resolv.conf has no search list: a different answer
    assert [lk.target for lk in b.route(pod).lookups] == ["10.96.0.20"]
    assert b.route(node).lookups == []
    assert [p.address for p in b.sockets(pod).probes] == ["10.96.0.20"]
    [report] = b.dns(pod).names
    assert report.name == "payments" and report.resolution.addresses == ["10.96.0.20"]
    passive = tmp_path / "p.tar.zst"
    assert netbundle("collect", "--passive", "--target", "payments:53", "--netns", info.namespaces["pod"],
                     "-o", str(passive)).returncode == 0
    pb = read_bundle(passive)
    [pr] = pb.dns(pod).names
    assert pr.resolution.queries == [] and pr.resolution.expected_queries == 8  # the plan, nothing sent
    assert pb.manifest.vantages[0].resolved == {"payments": []}


def test_an_ipv6_only_pod_equals_glibc(tmp_path):
    """A pod with only IPv6 configured and an IPv6 nameserver (an IPv6-only cluster's kube-dns). AI_ADDRCONFIG
    narrows getaddrinfo to AAAA; with AI_V4MAPPED (getent, Go's cgo resolver) glibc walks the search list again
    for A when no AAAA came back. For a name with both records, one with only an A record, and a missing one:
    the queries the slice sends equal glibc's (the server's log, source address included), and the addresses
    equal getent's (an A answer shows there as ::ffff:a.b.c.d)."""
    import ipaddress
    import os

    from bundle.lab.topology import Topology

    with Topology(f"nbt-dns6-{os.getpid() % 100000}") as t:
        pod, _ = t.add_netns("pod"), t.add_netns("dns")
        t.veth("pod", "eth0", "dns", "eth0")
        for role, cidr in (("pod", "fd00:10:244:1::2/64"), ("dns", "fd00:10:96::a/48")):
            t.sysctl(role, "net.ipv6.conf.eth0.accept_dad", "0")
            t.address(role, "eth0", cidr)
        t.route("pod", "fd00:10:96::/48", dev="eth0")
        t.route("dns", "fd00:10:244:1::/64", dev="eth0")
        t.netns_file("pod", "resolv.conf", "search default.svc.cluster.local svc.cluster.local\n"
                                           "nameserver fd00:10:96::a\noptions ndots:3 timeout:1 attempts:1\n")
        log = t.run_dir() / "dnsmasq.log"
        t.spawn("dns", ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                        "--listen-address=fd00:10:96::a", "--bind-interfaces", "--port=53", "--log-queries",
                        f"--log-facility={log}", "--local=/#/", f"--pid-file={t.run_dir() / 'dnsmasq.pid'}",
                        "--user=root", "--group=root",
                        "--host-record=payments.default.svc.cluster.local,10.96.0.20,fd00:10:96::14",
                        "--host-record=legacy.default.svc.cluster.local,10.96.0.30"])
        t.wait_listening("dns", 53)
        seen = {}
        for name in ("payments", "legacy", "missing.example"):
            log.write_text("")
            getent = subprocess.run(["ip", "netns", "exec", pod, "getent", "ahosts", name], capture_output=True,
                                    text=True, timeout=30)
            time.sleep(0.2)
            glibc = _log_queries(log, "fd00:10:244:1::2")
            out = fresh(tmp_path)
            proc = netbundle("collect", "--slice", "dns", "--name", name, "--netns", pod, "-o", str(out))
            assert proc.returncode in (0, 5), proc.stderr
            doc = read_bundle(out).dns(f"netns-{pod}")
            res = doc.names[0].resolution
            assert [(q.qname, q.qtype) for q in res.queries] == glibc and glibc, name
            assert {q.server for q in res.queries} == {"fd00:10:96::a"}

            def mapped(a: str) -> str:
                ip = ipaddress.ip_address(a)
                return str(ip.ipv4_mapped) if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else a

            assert set(res.addresses) == {mapped(line.split()[0]) for line in getent.stdout.splitlines()}, name
            seen[name] = res
        assert doc.query_families == ["AAAA"] and doc.resolv_conf.nameservers == ["fd00:10:96::a"]
        assert seen["payments"].addresses == ["fd00:10:96::14"] and len(seen["payments"].queries) == 1
        # AAAA: NODATA for the record's own name, NXDOMAIN for the others; then A answers on the first candidate
        assert seen["legacy"].addresses == ["10.96.0.30"] and [q.qtype for q in seen["legacy"].queries] == \
            ["AAAA", "AAAA", "AAAA", "A"]
        assert seen["missing.example"].outcome is Outcome.NXDOMAIN and seen["missing.example"].expected_queries == 6


def test_nodelocal_dns_cache_is_recognised_in_both_families(tmp_path):
    """NodeLocal DNSCache puts its listen addresses on a dummy link named `nodelocaldns`; an IPv6 cluster picks a
    unique-local address, so the prefix alone cannot tell (169.254.20.10 could). Each way the slice names it:
    the nameserver is on that link, a DNS listener sits on the link's IPv6 address, and the link with nothing
    listening (the cache's pod gone, its link left behind)."""
    import os

    from bundle.lab.topology import Topology

    def note(ns: str) -> str | None:
        out = fresh(tmp_path)
        proc = netbundle("collect", "--passive", "--slice", "dns", "--netns", ns, "-o", str(out))
        assert proc.returncode in (0, 5), proc.stderr
        return read_bundle(out).dns(f"netns-{ns}").nodelocal

    with Topology(f"nbt-nld-{os.getpid() % 100000}") as t:
        ns = t.add_netns("node")
        # the real link is a dummy; this kernel has no dummy module to load, so a veth pair plays it (only the
        # link's name and addresses matter)
        for argv in (["link", "add", "nodelocaldns", "type", "veth", "peer", "name", "nld-peer"],
                     ["link", "set", "nodelocaldns", "up"], ["link", "set", "nld-peer", "up"],
                     ["-6", "addr", "add", "fd00:10:96::53/128", "dev", "nodelocaldns", "nodad"]):
            subprocess.run(["ip", "-n", ns, *argv], check=True)
        t.netns_file("node", "resolv.conf", "nameserver 10.96.0.10\n")
        assert "nothing listens on port 53" in note(ns) and "fd00:10:96::53" in note(ns)
        t.netns_file("node", "resolv.conf", "nameserver fd00:10:96::53\n")
        assert "nameserver fd00:10:96::53 is on this netns's nodelocaldns link" in note(ns)
        t.netns_file("node", "resolv.conf", "nameserver 10.96.0.10\n")
        listener = ("import socket, time\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
                    "s.bind(('fd00:10:96::53', 53))\ntime.sleep(60)\n")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", listener])
        try:
            for _ in range(50):
                if "fd00:10:96::53" in subprocess.run(["ip", "netns", "exec", ns, "ss", "-uanH"], capture_output=True,
                                                      text=True).stdout:
                    break
                time.sleep(0.1)
            assert "a DNS cache listens on [fd00:10:96::53]:53" in note(ns)
        finally:
            proc.kill()
            proc.wait()
    # and a plain node (no such link, a routable nameserver) is not suspected
    with Topology(f"nbt-nld0-{os.getpid() % 100000}") as t:
        ns = t.add_netns("node")
        t.netns_file("node", "resolv.conf", "nameserver fd00:10:96::a\n")
        assert note(ns) is None
