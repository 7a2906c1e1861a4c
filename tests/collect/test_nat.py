"""The NAT/conntrack slice: kube-proxy's rules from the corpus loaded into a lab netns and read back, the
ctnetlink dump against `conntrack -L`, and the stale-dnat / conntrack-full labs yielding their findings."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.archive import read_bundle
from bundle.collect.kubeproxy import load_endpoint_slices, services_from_iptables, services_from_ipvsadm
from bundle.lab import scenarios
from bundle.lab.topology import Topology
from bundle.models import NatSlice, Unavailable
from bundle.netlink import ctnetlink
from bundle.render import render_html
from bundle.render.view import build_view
from tests.conftest import corpus_file, fresh, netbundle

RULE_SETS = ["k8s_TestOverallIPTablesRulesWithMultipleServices_2023.txt", "k8s_TestOverallIPTablesRules_recent.txt",
             "k8s_TestSyncProxyRulesRepeated_1_full.txt"]
NFACCT = ["ct_state_invalid_dropped_pkts", "localhost_nps_accepted_pkts"]  # named by the recent rule set

# Read off the rule files by hand: (service, kind, frontend address, port, reject) -> [(endpoint, port, share)]
_SVC1 = [("10.180.0.1", 80, 1.0)]
_SVC2 = [("10.180.0.2", 80, 1.0)]
_SVC3 = [("10.180.0.3", 80, 1.0)]
_SVC4 = [("10.180.0.4", 80, 0.5), ("10.180.0.5", 80, 0.5)]
EXPECTED = {
    "k8s_TestOverallIPTablesRulesWithMultipleServices_2023.txt": {
        ("ns1/svc1:p80", "cluster IP", "172.30.0.41", 80, False): _SVC1,
        ("ns2/svc2:p80", "cluster IP", "172.30.0.42", 80, False): _SVC2,
        ("ns2/svc2:p80", "external IP", "192.168.99.22", 80, False): _SVC2,
        ("ns2/svc2:p80", "loadbalancer IP", "1.2.3.4", 80, False): _SVC2,
        ("ns3/svc3:p80", "cluster IP", "172.30.0.43", 80, False): _SVC3,
        ("ns4/svc4:p80", "cluster IP", "172.30.0.44", 80, False): _SVC4,
        ("ns4/svc4:p80", "external IP", "192.168.99.33", 80, False): _SVC4,
        ("ns5/svc5:p80", "cluster IP", "172.30.0.45", 80, False): _SVC3,  # svc5's endpoint is 10.180.0.3 too
        ("ns5/svc5:p80", "loadbalancer IP", "5.6.7.8", 80, False): _SVC3,
        ("ns2/svc2:p80", "nodeport", None, 3001, False): _SVC2,
        ("ns3/svc3:p80", "nodeport", None, 3003, False): _SVC3,
        ("ns5/svc5:p80", "nodeport", None, 3002, False): _SVC3,
        ("ns6/svc6:p80", "cluster IP", "172.30.0.46", 80, True): [],  # "has no endpoints" REJECT (filter)
    },
    "k8s_TestSyncProxyRulesRepeated_1_full.txt": {
        ("ns1/svc1:p80", "cluster IP", "172.30.0.41", 80, False): [("10.0.1.1", 80, 1.0)],
        ("ns2/svc2:p8080", "cluster IP", "172.30.0.42", 8080, False): [("10.0.2.1", 8080, 1.0)],
    },
}


def _map(entries) -> dict[tuple, list[tuple]]:
    out = {}
    for e in entries:
        key = (e.service, e.kind, e.address, e.port, e.reject)
        assert key not in out, key
        out[key] = [(p.address, p.port, p.share) for p in e.endpoints]
    return out


def test_rule_sets_parse_as_written():
    for name, want in EXPECTED.items():
        assert _map(services_from_iptables(corpus_file(f"kubeproxy/{name}").read_text(), "corpus")) == want, name


def _in_netns(ns: str, *argv: str, stdin: str | None = None) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.privileged
@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("name", RULE_SETS)
def test_rule_sets_load_and_read_back(name, backend, tmp_path):
    """iptables-restore the rules into a lab netns, read them back with iptables-save (its own order and
    spelling: /32 suffixes, -m after -p, probabilities to 11 digits), and collect the slice there: the
    service map is the one the rules describe, and the slice names the backend that holds them."""
    text = corpus_file(f"kubeproxy/{name}").read_text()
    with Topology(f"nbt-kp{backend[0]}-{os.getpid() % 100000}") as t:
        ns = t.add_netns("node")
        for obj in NFACCT:
            _in_netns(ns, "nfacct", "add", obj)
        t.iptables_restore("node", text, legacy=backend == "legacy")
        saved = _in_netns(ns, f"iptables-{backend}-save")
        assert _map(services_from_iptables(saved, "saved")) == _map(services_from_iptables(text, "written"))
        if name in EXPECTED:
            assert _map(services_from_iptables(saved, "saved")) == EXPECTED[name]
        out = fresh(tmp_path)
        netbundle("collect", "--netns", ns, "--slice", "nat", "--target", "172.30.0.44:80", "-o", str(out), check=True)
        doc = read_bundle(out).nat(f"netns-{ns}")
        assert doc is not None
        assert doc.proxy.mode == "iptables" and doc.proxy.backend.value == f"iptables-{backend}"
        checks = {c.datapath.value: c.programmed for c in doc.proxy.checks}
        assert checks == {"iptables-legacy": backend == "legacy", "iptables-nft": backend == "nft",
                          "nftables": False, "ipvs": False}
        got = _map(s for s in doc.services)
        assert got == _map(services_from_iptables(text, "written"))


_CONNECT = """
import errno, socket, sys, time
host, port, tries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for _ in range(tries):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if len(sys.argv) > 4:
        s.bind((sys.argv[4], 0))
    s.setblocking(False)
    code = s.connect_ex((host, port))
    held.append(s)
    if code == errno.EINPROGRESS:
        time.sleep(0.02)
        code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    print(errno.errorcode.get(code, code) if code not in (0, errno.EINPROGRESS) else "sent")
"""


@pytest.mark.privileged
@pytest.mark.parametrize("name", RULE_SETS)
def test_rule_sets_translate_as_the_kernel_does(name, tmp_path):
    """The kernel as the oracle for the iptables reader: with the rule set loaded in a lab netns, a connect to
    each frontend we read (cluster, external and load-balancer IPs; node ports on the node's own address) is
    DNAT-ed by netfilter itself, and the conntrack entry's reply source is one of the endpoints we read; every
    endpoint we list is hit within a few tries (random-probability rules); a frontend we read as REJECT is
    refused. The SYNs go to a sink netns made here and stop there."""
    text = corpus_file(f"kubeproxy/{name}").read_text()
    services = [s for s in services_from_iptables(text, "corpus")]
    node_ip = "10.244.99.1"
    with Topology(f"nbt-kpk-{os.getpid() % 100000}") as t:
        ns = t.add_netns("node")
        t.add_netns("sink")
        t.veth("node", "eth0", "sink", "eth0")
        t.address("node", "eth0", f"{node_ip}/24")
        t.address("sink", "eth0", "10.244.99.2/24")
        t.route("node", "0.0.0.0/0", gateway="10.244.99.2")
        for obj in NFACCT:
            _in_netns(ns, "nfacct", "add", obj)
        t.iptables_restore("node", text)
        # kube-proxy adds the jumps from the built-in chains itself (iptablesJumpChains in its proxier), outside
        # the restore payload its tests hold: the ones locally generated traffic meets
        for table, chain, builtin, extra in (("nat", "KUBE-SERVICES", "OUTPUT", []),
                                             ("nat", "KUBE-POSTROUTING", "POSTROUTING", []),
                                             ("filter", "KUBE-SERVICES", "OUTPUT", ["-m", "conntrack", "--ctstate", "NEW"]),
                                             ("filter", "KUBE-PROXY-FIREWALL", "OUTPUT",
                                              ["-m", "conntrack", "--ctstate", "NEW"])):
            if subprocess.run(["ip", "netns", "exec", ns, "iptables", "-t", table, "-S", chain],
                              capture_output=True).returncode == 0:
                _in_netns(ns, "iptables", "-t", table, "-A", builtin, *extra, "-j", chain)
        checked = 0
        for svc in services:
            host = svc.address or node_ip
            want = {(e.address, e.port) for e in svc.endpoints}
            tries = 1 if len(want) <= 1 else 12 * len(want)
            results = _in_netns(ns, sys.executable, "-c", _CONNECT, host, str(svc.port), str(tries)).split()
            if svc.reject:
                assert set(results) == {"ECONNREFUSED"}, (svc.service, svc.kind, results)
                checked += 1
                continue
            def translated() -> set[tuple[str, int | None]]:
                listing = ctnetlink.parse_listing(_in_netns(ns, "conntrack", "-L", "-p", "tcp", "-d", host,
                                                            "--dport", str(svc.port)))
                subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-D", "-p", "tcp", "-d", host, "--dport",
                                str(svc.port)], capture_output=True)
                return {(e.reply.src, e.reply.sport) for e in listing}

            if svc.source_ranges:
                # loadBalancerSourceRanges: the node's own address is not listed, so nothing is translated (the
                # firewall drops the SYN before conntrack confirms it); from a listed source, the endpoints
                assert translated() == set(), (svc.service, svc.kind)
                allowed = str(next(ipaddress.ip_network(svc.source_ranges[0]).hosts()))
                t.address("node", "eth0", f"{allowed}/32")
                _in_netns(ns, sys.executable, "-c", _CONNECT, host, str(svc.port), str(tries), allowed)
            seen = translated()
            assert seen == want, (svc.service, svc.kind, host, seen, want)
            checked += 1
        # not vacuous: a source-ranged load-balancer IP was among them where the rule set has one
        assert any(s.source_ranges == ["203.0.113.0/25"] for s in services) == ("KUBE-FW-" in text)
    assert checked == len(services) and checked >= 2


def test_ipvsadm_and_conntrack_listings_in_the_corpus_parse():
    ipvs = services_from_ipvsadm(corpus_file("kubeproxy/ipvs/k8s_ipvs_README_ipvsadm-ln_debug.txt").read_text())
    assert [(s.protocol, s.address, s.port, [(e.address, e.port, e.weight, e.share) for e in s.endpoints])
            for s in ipvs] == [("tcp", "10.0.0.1", 443, [("192.168.0.1", 6443, 1, 1.0)]),
                               ("tcp", "10.0.0.10", 53, [("172.17.0.2", 53, 1, 1.0)]),
                               ("udp", "10.0.0.10", 53, [("172.17.0.2", 53, 1, 1.0)])]
    counts = {}
    for name in ("jc_conntrack--list.out", "jc_conntrack--list-extended.out", "jc_conntrack--list-counters.out"):
        text = corpus_file(f"linux-text/conntrack/{name}").read_text()
        entries = ctnetlink.parse_listing(text)
        shown = int(text.rsplit("(conntrack-tools): ", 1)[1].split()[0])
        assert len(entries) == shown, name
        counts[name] = entries
    dns = [e for e in counts["jc_conntrack--list.out"] if e.original.dport == 53][0]
    # the k3s node's DNS ClusterIP translated to the CoreDNS pod: DNAT visible from the two tuples
    assert (dns.original.dst, dns.reply.src) == ("10.43.0.10", "10.42.0.188")
    syn = [e for e in counts["jc_conntrack--list.out"] if e.tcp_state == "SYN_SENT"][0]
    assert ctnetlink.status_names(syn.status) == ["CONFIRMED"]  # [UNREPLIED]: no SEEN_REPLY, no ASSURED


def test_endpointslice_files_from_the_corpus_load():
    views = load_endpoint_slices(corpus_file("k8s-text/endpointslice/k8s_api_testdata_HEAD_discovery.k8s.io.v1.EndpointSlice.json"))
    assert views and all(v.service.count("/") == 1 for v in views)
    yaml_views = load_endpoint_slices(corpus_file("k8s-text/endpointslice/k8sdocs_topology-aware-routing_example-hints.v1.yaml"))
    assert yaml_views[0].endpoints and yaml_views[0].endpoints[0].addresses


@pytest.mark.privileged
def test_dump_equals_conntrack_tool(tmp_path):
    """Our ctnetlink walk and `conntrack -L` read the same table: entries inserted with `conntrack -I` in a
    lab netns (TCP in several states, UDP, DNAT-ed), totals by protocol and state, and every tuple."""
    with Topology(f"nbt-ct-{os.getpid() % 100000}") as t:
        ns = t.add_netns("node")
        states = ["ESTABLISHED", "SYN_SENT", "TIME_WAIT", "CLOSE_WAIT"]
        for i in range(40):
            state = states[i % 4]
            _in_netns(ns, "conntrack", "-I", "-p", "tcp", "-s", f"10.244.1.{i + 2}", "-d", "10.96.0.20",
                      "--sport", str(40000 + i), "--dport", "443", "-r", f"10.244.2.{i % 3 + 2}", "-q", f"10.244.1.{i + 2}",
                      "--reply-port-src", "8080", "--reply-port-dst", str(40000 + i), "--state", state, "-t", "300",
                      "-u", "SEEN_REPLY,ASSURED" if state == "ESTABLISHED" else "SEEN_REPLY")
        for i in range(10):
            _in_netns(ns, "conntrack", "-I", "-p", "udp", "-s", "10.244.1.2", "-d", "10.96.0.10", "--sport",
                      str(50000 + i), "--dport", "53", "-r", "10.244.0.2", "-q", "10.244.1.2", "--reply-port-src", "53",
                      "--reply-port-dst", str(50000 + i), "-t", "300")
        reference = ctnetlink.parse_listing(_in_netns(ns, "conntrack", "-L"))
        script = ("from bundle.netlink import ctnetlink; import json, socket\n"
                  "t = ctnetlink.dump(lambda a: socket.inet_aton('10.96.0.20') in a, 1000)\n"
                  "print(json.dumps([t.total, dict(t.by_protocol), dict(t.by_tcp_state), t.matched,"
                  " [[e.original.src, e.original.sport, e.original.dst, e.original.dport, e.reply.src, e.reply.sport,"
                  " e.tcp_state] for e in t.entries]]))")
        import json
        import sys
        total, by_proto, by_state, matched, entries = json.loads(_in_netns(ns, sys.executable, "-c", script))
        assert total == len(reference) == 50
        assert by_proto == {"tcp": 40, "udp": 10}
        assert by_state == {s: 10 for s in states}
        want = sorted([e.original.src, e.original.sport, e.original.dst, e.original.dport, e.reply.src, e.reply.sport,
                       e.tcp_state] for e in reference if e.original.dst == "10.96.0.20")
        assert matched == 40 and sorted(entries) == want


@pytest.mark.privileged
def test_ipv6_dump_equals_conntrack_tool(tmp_path):
    """IPv6 entries beside IPv4 ones (TCP to an IPv6 ClusterIP DNAT-ed to pods, UDP DNS): our walk's IPv6
    entries equal `conntrack -L -f ipv6 -o extended` (the tool filters the family itself), the IPv4 ones
    `-f ipv4`, and a target given as an IPv6 address matches its entries."""
    import json
    import sys

    with Topology(f"nbt-ct6-{os.getpid() % 100000}") as t:
        ns = t.add_netns("node")
        states = ["ESTABLISHED", "SYN_SENT", "TIME_WAIT"]
        for i in range(24):
            _in_netns(ns, "conntrack", "-I", "-p", "tcp", "-s", f"fd00:10:244:1::{i + 2:x}",
                      "-d", "fd00:10:96::14", "--sport", str(41000 + i), "--dport", "443",
                      "-r", f"fd00:10:244:2::{i % 3 + 2:x}", "-q", f"fd00:10:244:1::{i + 2:x}",
                      "--reply-port-src", "8080", "--reply-port-dst", str(41000 + i), "--state", states[i % 3],
                      "-t", "300", "-u", "SEEN_REPLY,ASSURED" if i % 3 == 0 else "SEEN_REPLY")
        for i in range(6):
            _in_netns(ns, "conntrack", "-I", "-p", "udp", "-s", "fd00:10:244:1::2",
                      "-d", "fd00:10:96::a", "--sport", str(51000 + i), "--dport", "53", "-r", "fd00:10:244::53",
                      "-q", "fd00:10:244:1::2", "--reply-port-src", "53", "--reply-port-dst", str(51000 + i),
                      "-t", "300")
        for i in range(5):
            _in_netns(ns, "conntrack", "-I", "-p", "tcp", "-s", f"10.244.1.{i + 2}", "-d", "10.96.0.20",
                      "--sport", str(42000 + i), "--dport", "443", "-r", "10.244.2.2", "-q", f"10.244.1.{i + 2}",
                      "--reply-port-src", "8080", "--reply-port-dst", str(42000 + i), "--state", "ESTABLISHED",
                      "-t", "300")
        six = ctnetlink.parse_listing(_in_netns(ns, "conntrack", "-L", "-f", "ipv6", "-o", "extended"))
        four = ctnetlink.parse_listing(_in_netns(ns, "conntrack", "-L", "-f", "ipv4", "-o", "extended"))
        script = ("from bundle.netlink import ctnetlink; import json, socket\n"
                  "t = ctnetlink.dump(lambda a: socket.inet_pton(socket.AF_INET6, 'fd00:10:96::14') in a, 1000)\n"
                  "print(json.dumps([t.total, t.matched, [[e.original.family, e.original.proto, e.original.src,"
                  " e.original.sport, e.original.dst, e.original.dport, e.reply.src, e.reply.sport, e.tcp_state]"
                  " for e in t.entries]]))")
        total, matched, entries = json.loads(_in_netns(ns, sys.executable, "-c", script))

    def rows(listing):
        return sorted([e.original.family, e.original.proto, e.original.src, e.original.sport, e.original.dst,
                       e.original.dport, e.reply.src, e.reply.sport, e.tcp_state] for e in listing)

    assert (len(six), len(four), total) == (30, 5, 35)
    assert {e.original.family for e in six} == {socket.AF_INET6} and {e.original.family for e in four} == {socket.AF_INET}
    assert matched == 24
    want = [r for r in rows(six) if r[4] == "fd00:10:96::14"]
    assert sorted(entries) == want and len(want) == 24
    assert any(r[6] == "fd00:10:244:2::2" and r[7] == 8080 for r in want)  # the DNAT is in the reply tuple


@pytest.mark.privileged
def test_a_conntrack_table_changing_during_the_dump_is_counted_or_marked(tmp_path):
    """Entries inserted and deleted while we dump (a busy node's conntrack churns all the time): each dump's
    total is exact up to the entry that flaps, or the dump says it was interrupted — never silently short."""
    import json

    with Topology(f"nbt-ctc-{os.getpid() % 100000}") as t:
        ns = t.add_netns("node")
        for i in range(300):  # enough entries that a dump spans several netlink messages
            _in_netns(ns, "conntrack", "-I", "-p", "udp", "-s", f"10.244.{1 + i // 250}.{i % 250 + 2}",
                      "-d", "10.96.0.10", "--sport", "5353", "--dport", "53", "-t", "600")
        one = ["-p", "tcp", "-s", "10.244.9.9", "-d", "10.96.0.20", "--sport", "40000", "--dport", "443"]
        flap = subprocess.Popen(["sh", "-c", f"while true; do ip netns exec {ns} conntrack -I {' '.join(one)} "
                                             f"--state ESTABLISHED -t 600 -q 10.244.9.9 -r 10.244.1.3 "
                                             f"--reply-port-src 8080 --reply-port-dst 40000; "
                                             f"ip netns exec {ns} conntrack -D {' '.join(one)}; done"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        code = ("import json; from bundle.netlink import ctnetlink\n"
                "print(json.dumps([[t.total, t.interrupted] for t in (ctnetlink.dump(lambda a: False, 0) "
                "for _ in range(30))]))")
        try:
            runs = json.loads(_in_netns(ns, sys.executable, "-c", code))
        finally:
            flap.kill()
            flap.wait()
        subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-D", *one], capture_output=True)
        [[baseline, _]] = json.loads(_in_netns(ns, sys.executable, "-c", code.replace("range(30)", "range(1)")))
    assert baseline == 300
    for total, interrupted in runs:
        assert interrupted or total in (baseline, baseline + 1), (total, baseline)


@pytest.mark.privileged
def test_status_bits_are_the_kernels(tmp_path):
    """Every bit of enum ip_conntrack_status decodes to its uapi name (the names from bit 7 up were shifted):
    entries made with `conntrack -I` carrying the bits the tool can set (ASSURED, SEEN_REPLY, FIXED_TIMEOUT and
    a DNAT, which the kernel marks DST_NAT and, once set up, *_NAT_DONE); `conntrack -L -o extended` shows
    the same entry [ASSURED]; a live entry is never DYING."""
    import json
    import sys

    assert ctnetlink.STATUS_BITS == {0: "EXPECTED", 1: "SEEN_REPLY", 2: "ASSURED", 3: "CONFIRMED", 4: "SRC_NAT",
                                     5: "DST_NAT", 6: "SEQ_ADJUST", 7: "SRC_NAT_DONE", 8: "DST_NAT_DONE",
                                     9: "DYING", 10: "FIXED_TIMEOUT", 11: "TEMPLATE", 12: "UNTRACKED", 13: "HELPER",
                                     14: "OFFLOAD", 15: "HW_OFFLOAD"}
    with Topology(f"nbt-cts-{os.getpid() % 100000}") as t:
        ns = t.add_netns("node")
        _in_netns(ns, "conntrack", "-I", "-p", "tcp", "-s", "10.244.1.2", "-d", "10.96.0.20", "--sport", "40000",
                  "--dport", "443", "--state", "ESTABLISHED", "-t", "100", "-u", "ASSURED,SEEN_REPLY,FIXED_TIMEOUT",
                  "--dst-nat", "10.244.1.3")
        shown = _in_netns(ns, "conntrack", "-L", "-o", "extended")
        assert "[ASSURED]" in shown and "src=10.244.1.3" in shown
        script = ("from bundle.netlink import ctnetlink; import json, socket\n"
                  "t = ctnetlink.dump(lambda a: True, 10)\n"
                  "print(json.dumps([[e.status, ctnetlink.status_names(e.status)] for e in t.entries]))")
        [[status, names]] = json.loads(_in_netns(ns, sys.executable, "-c", script))
    assert {"ASSURED", "SEEN_REPLY", "CONFIRMED", "FIXED_TIMEOUT", "DST_NAT"} <= set(names), names
    assert "DYING" not in names and status >> 9 & 1 == 0
    assert status >> 10 & 1 == 1  # FIXED_TIMEOUT is bit 10 in the kernel's own value


def _nat_docs(path: Path) -> dict[str, NatSlice]:
    b = read_bundle(path)
    return {v.id: doc for v in b.manifest.vantages if (doc := b.nat(v.id)) is not None}


@pytest.mark.privileged
def test_stale_dnat_lab_yields_its_finding(lab, tmp_path):
    """(That this collect changes nothing in the lab is tests/collect/test_readonly.py's, for every scenario.)"""
    info = lab("stale-dnat")
    out = fresh(tmp_path)
    netbundle(*info.collect_argv()[1:], "-o", str(out), check=True)
    docs = _nat_docs(out)
    node = docs[f"netns-{info.namespaces['node']}"]
    assert node.proxy.mode == "iptables" and node.endpoint_slices is not None
    [svc] = [s for s in node.services if s.address == scenarios.SERVICE_IP]
    assert [(e.address, e.port) for e in svc.endpoints] == [(scenarios.GONE_POD, scenarios.LISTEN_PORT)]
    assert not isinstance(node.table, Unavailable) and node.table.matched >= 1
    tcp = [e for e in node.table.entries if e.original.dst == scenarios.SERVICE_IP and e.original.proto == "tcp"]
    assert tcp and all(e.dnat and e.reply.src == scenarios.GONE_POD for e in tcp)  # ICMP echo is not translated
    view = build_view(read_bundle(out))
    stale = [f for f in view.findings if f.id == "service.stale_dnat"]
    assert len(stale) == 1 and stale[0].target.address == scenarios.SERVICE_IP
    i = node.services.index(svc)
    assert stale[0].evidence[0].member == f"vantages/netns-{info.namespaces['node']}/nat.json"
    assert stale[0].evidence[0].pointer == f"services[{i}].endpoints"
    assert scenarios.GONE_POD in stale[0].summary and "10.244.1.3" in stale[0].summary
    assert stale[0].next_command.startswith(f"ip netns exec {info.namespaces['node']} sh -c ")
    assert not [f for f in view.findings if f.id.startswith("service.conntrack")]
    html = render_html(read_bundle(out))
    section = html[html.index(f'id="nat-netns-{info.namespaces["node"]}"'):]
    assert f"{scenarios.GONE_POD}:{scenarios.LISTEN_PORT} (100%) — not in the EndpointSlices" in section
    assert "Proxy datapath: iptables (iptables-nft)" in section and "(DNAT)" in section


@pytest.mark.privileged
def test_healthy_lab_has_no_service_plane_finding(healthy_lab, tmp_path):
    out = fresh(tmp_path)
    netbundle(*healthy_lab.collect_argv()[1:], "--slice", "nat", "-o", str(out), check=True)
    docs = _nat_docs(out)
    assert docs and all(d.proxy.mode == "none" and not d.services for d in docs.values())
    assert not [f for f in build_view(read_bundle(out)).findings if f.layer == "service"]


@pytest.mark.privileged
def test_conntrack_full_lab(tmp_path):
    """Its own lab (not the session's): it lowers the machine-wide nf_conntrack_max, put back on teardown."""
    path = Path("/proc/sys/net/netfilter/nf_conntrack_max")
    original = path.read_text()
    try:
        with scenarios.running("conntrack-full", f"nbt-ctfull-{os.getpid() % 100000}") as info:
            assert path.read_text().strip() == str(scenarios.CONNTRACK_MAX)
            node = info.namespaces["node"]
            deadline = 15.0
            import time
            while deadline > 0 and int(_in_netns(node, "conntrack", "-C").strip() or 0) < scenarios.CONNTRACK_MAX:
                time.sleep(0.5)
                deadline -= 0.5
            out = fresh(tmp_path)
            netbundle(*info.collect_argv()[1:], "-o", str(out), check=True)
            established = _in_netns(info.namespaces["pod"], "ss", "-Htan", "state", "established").count("\n")
        assert path.read_text() == original
        docs = _nat_docs(out)
        doc = docs[f"netns-{node}"]
        first, last = doc.samples[0], doc.samples[-1]
        assert last.count == doc.settings.max == scenarios.CONNTRACK_MAX
        assert last.totals["drop"] > first.totals["drop"]
        view = build_view(read_bundle(out))
        ids = {f.id: f for f in view.findings if f.vantage == f"netns-{node}"}
        assert "service.conntrack_near_max" in ids and "service.conntrack_dropping" in ids
        assert ids["service.conntrack_dropping"].evidence[0].pointer == f"samples[{len(doc.samples) - 1}].totals"
        assert established >= scenarios.CONNTRACK_MAX - 10  # the pool's long-lived flows survive
    finally:
        if path.read_text() != original:
            path.write_text(original)


@pytest.mark.privileged
def test_nftables_mode_lab(lab, tmp_path):
    """kube-proxy's nftables proxier's table: detected as the live datapath, parsed into the service map it
    programs (shares from numgen, the reject of a Service without endpoints), agreeing with the
    EndpointSlices: no service-plane finding, and the ClusterIP answers through the DNAT."""
    info = lab("service-nft")
    out = fresh(tmp_path)
    netbundle(*info.collect_argv()[1:], "-o", str(out), check=True)
    node = _nat_docs(out)[f"netns-{info.namespaces['node']}"]
    assert node.proxy.mode == "nftables" and node.proxy.backend.value == "nftables"
    assert node.raw["nftables"] == "nft-kube-proxy.json"
    assert _map(node.services) == {
        ("default/payments:https", "cluster IP", "10.96.0.20", 443, False): [("10.244.1.3", 8080, 1.0)],
        ("default/orders:http", "cluster IP", "10.96.0.21", 80, False): [("10.244.0.2", 8080, 0.5),
                                                                         ("10.244.1.3", 8080, 0.5)],
        ("default/legacy:http", "cluster IP", "10.96.0.22", 80, True): [],
    }
    b = read_bundle(out)
    view = build_view(b)
    assert not [f for f in view.findings if f.layer == "service"]
    pod = b.sockets(f"netns-{info.namespaces['pod']}")
    assert pod is not None and pod.probes[0].attempts[0].outcome.value == "connected"


_KUBE_PROXY_NFT_IP6 = """
add table ip6 kube-proxy { comment "rules for kube-proxy" ; }
add chain ip6 kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip6 kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip6 kube-proxy services
add chain ip6 kube-proxy mark-for-masquerade
add chain ip6 kube-proxy service-NBPAY6SV-default/payments/tcp/https
add chain ip6 kube-proxy endpoint-NBPAY6EP-default/payments/tcp/https__fd00.10.244.1..3/8080
add map ip6 kube-proxy service-ips { type ipv6_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add rule ip6 kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip6 kube-proxy nat-output jump services
add rule ip6 kube-proxy nat-prerouting jump services
add rule ip6 kube-proxy services ip6 daddr . meta l4proto . th dport vmap @service-ips
add rule ip6 kube-proxy service-NBPAY6SV-default/payments/tcp/https numgen random mod 1 vmap { 0 : goto endpoint-NBPAY6EP-default/payments/tcp/https__fd00.10.244.1..3/8080 }
add rule ip6 kube-proxy endpoint-NBPAY6EP-default/payments/tcp/https__fd00.10.244.1..3/8080 ip6 saddr fd00:10:244:1::3 jump mark-for-masquerade
add rule ip6 kube-proxy endpoint-NBPAY6EP-default/payments/tcp/https__fd00.10.244.1..3/8080 meta l4proto tcp dnat to [fd00:10:244:1::3]:8080
add element ip6 kube-proxy service-ips { fd00:10:96::14 . tcp . 443 : goto service-NBPAY6SV-default/payments/tcp/https }
"""


@pytest.mark.privileged
def test_a_dual_stack_nftables_node(tmp_path):
    """kube-proxy's nftables proxier on a dual-stack node writes `table ip kube-proxy` and `table ip6
    kube-proxy`: both are read (only the first was), the IPv6 ClusterIP maps to its IPv6 endpoint, the mode is
    nftables (not "ambiguous"), and with the Service's two EndpointSlices nothing is reported."""
    import json

    with Topology(f"nbt-ds-{os.getpid() % 100000}") as t:
        ns = t.add_netns("node")
        t.nft("node", scenarios._KUBE_PROXY_NFT)
        t.nft("node", _KUBE_PROXY_NFT_IP6)
        v4 = scenarios._endpoint_slice("10.244.1.3")
        v6 = scenarios._endpoint_slice("fd00:10:244:1::3", name="payments-v6x9", family="IPv6")
        slices = tmp_path / "slices.json"
        slices.write_text(json.dumps({"kind": "List", "items": [v4, v6]}))
        out = fresh(tmp_path)
        proc = netbundle("collect", "--passive", "--slice", "nat", "--netns", ns, "--endpointslices", str(slices),
                         "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        b = read_bundle(out)
        table6 = json.loads(_in_netns(ns, "nft", "-j", "list", "table", "ip6", "kube-proxy"))
        frontends6 = json.loads(_in_netns(ns, "nft", "-j", "list", "map", "ip6", "kube-proxy", "service-ips"))
        dnat6 = _in_netns(ns, "nft", "list", "chain", "ip6", "kube-proxy",
                          "endpoint-NBPAY6EP-default/payments/tcp/https__fd00.10.244.1..3/8080")
    doc = b.nat(f"netns-{ns}")
    # Differential: the member is what `nft -j list table ip6 kube-proxy` prints; the IPv6 frontends are the
    # service-ips map's elements as nft lists them, and the endpoint the chain's `dnat to` as nft prints it.
    member = f"{b.manifest.bundle_id}/vantages/netns-{ns}/nft-kube-proxy-ip6.json"
    raw = subprocess.run(["tar", "--zstd", "-xOf", str(out), member], capture_output=True, check=True).stdout
    assert [x for x in json.loads(raw)["nftables"] if "metainfo" not in x] == \
        [x for x in table6["nftables"] if "metainfo" not in x]
    [elements] = [x["map"]["elem"] for x in frontends6["nftables"] if "map" in x]
    assert sorted((s.address, s.protocol, s.port) for s in doc.services if ":" in (s.address or "")) == \
        sorted(tuple(key["concat"]) for key, _ in elements)
    assert "dnat to [fd00:10:244:1::3]:8080" in dnat6
    assert doc is not None and doc.proxy.mode == "nftables"
    six = [s for s in doc.services if s.address == "fd00:10:96::14"]
    assert [(s.port, [(e.address, e.port) for e in s.endpoints]) for s in six] == [(443, [("fd00:10:244:1::3", 8080)])]
    assert b.member(f"vantages/netns-{ns}/nft-kube-proxy-ip6.json") is not None
    from bundle.analyze.nat import nat_findings

    [v] = b.manifest.vantages
    assert [f.id for f in nat_findings(v, doc)] == []


# The CNI portmap plugin's rules for one hostPort (containernetworking/plugins, plugins/meta/portmap): node port
# 8080 on every local address to the pod's 10.244.0.2:80
_PORTMAP = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-DN-8a2b9c1d4e5f60718293a - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"cbr0\\" id: \\"4f1c2a\\"" -m multiport --dports 8080 -j CNI-DN-8a2b9c1d4e5f60718293a
-A CNI-DN-8a2b9c1d4e5f60718293a -s 10.244.0.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-8a2b9c1d4e5f60718293a -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-8a2b9c1d4e5f60718293a -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.244.0.2:80
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
COMMIT
"""


@pytest.mark.privileged
def test_a_cni_hostport_is_a_frontend_that_needs_no_listener(tmp_path):
    """A pod's hostPort: the node holds the address, nothing listens on the port, the CNI's DNAT takes the SYN to
    the pod. Loaded into a lab node with iptables-restore and read back by the NAT slice (from `iptables-save`,
    as the kernel prints it), it is a frontend of that node — and the node's connect to its own
    address:hostPort (through the DNAT) is no 'no listener' fault, which it was."""
    with Topology(f"nbt-hp-{os.getpid() % 100000}") as t:
        node, pod = t.add_netns("node"), t.add_netns("pod")
        t.veth("node", "veth-pod", "pod", "eth0")
        t.address("node", "veth-pod", "10.244.0.1/24")
        t.address("pod", "eth0", "10.244.0.2/24")
        t.python("pod", "bundle.lab.listener", "--port", "80")
        t.wait_listening("pod", 80)
        t.iptables_restore("node", _PORTMAP)
        dnat = [line for line in _in_netns(node, "iptables-save", "-t", "nat").splitlines() if "-j DNAT" in line]
        out = fresh(tmp_path)
        proc = netbundle("collect", "--netns", node, "--target", "10.244.0.1:8080", "--slice", "route",
                         "--slice", "sockets", "--slice", "nat", "-o", str(out))
        assert proc.returncode == 0, proc.stderr
    b = read_bundle(out)
    doc = b.nat(f"netns-{node}")
    [hp] = [s for s in doc.services if s.kind == "hostport"]
    assert [f"--dport {hp.port} -j DNAT --to-destination {e.address}:{e.port}" for e in hp.endpoints] == \
        [line.split("-m tcp ")[1] for line in dnat]
    assert hp.address is None and doc.proxy.mode == "none"  # no kube-proxy here: the CNI's rule all the same
    [probe] = [p for p in b.sockets(f"netns-{node}").probes if not p.target.startswith("loopback ")]
    assert probe.outcome.value == "connected"
    found = {f.id for f in build_view(b).findings}
    assert "transport.no_listener" not in found, found
