"""Service-plane findings as pure functions of the NAT slice's model: each rule on a document that shows it,
and on the same document without it. The labs (tests/collect/test_nat.py) show them from real collects; these
cover the cases no lab builds (a REJECT with endpoints, a conntrack entry to a removed endpoint, two
datapaths, a proxy that says another mode) and the /proc/net/ip_vs reader."""

from __future__ import annotations

from pathlib import Path

from bundle.analyze.nat import nat_findings
from bundle.collect.kubeproxy import endpoint_slices, services_from_ipvsadm, services_from_proc_ip_vs
from bundle.models import (
    ConntrackEntry,
    ConntrackSample,
    ConntrackSettings,
    ConntrackTable,
    ConntrackTuple,
    Datapath,
    DatapathCheck,
    DataplaneEndpoint,
    NatSlice,
    ProxyMode,
    ServiceEntry,
    Vantage,
    VantageKind,
)
from tests.conftest import corpus_file

V = Vantage(id="netns-node", kind=VantageKind.NETNS_NAME, ref="node", entered=True)


def _slice(ready: list[str], not_ready: list[str] = ()) -> list:
    eps = [{"addresses": [a], "conditions": {"ready": True}} for a in ready]
    eps += [{"addresses": [a], "conditions": {"ready": False}} for a in not_ready]
    return endpoint_slices([{"kind": "EndpointSlice", "metadata": {"name": "pay-x", "namespace": "default",
                                                                   "labels": {"kubernetes.io/service-name": "payments"}},
                             "ports": [{"name": "https", "port": 8080}], "endpoints": eps}])


def _doc(services=(), slices=None, entries=(), checks=None, reported="iptables", samples=None) -> NatSlice:
    checks = checks or [DatapathCheck(datapath=Datapath.IPTABLES_NFT, command="iptables-nft-save", programmed=True)]
    programmed = [c for c in checks if c.programmed]
    mode = "ambiguous" if len(programmed) > 1 else "iptables"
    table = ConntrackTable(total=len(entries), by_protocol={}, by_tcp_state={}, watched=[], matched=len(entries),
                           entries=list(entries), truncated=False)
    return NatSlice(settings=ConntrackSettings(max=1000, buckets=256), table=table,
                    samples=samples or [ConntrackSample(monotonic_ns=0, count=10)],
                    proxy=ProxyMode(mode=mode, checks=checks, reported=reported), services=list(services),
                    endpoint_slices=slices)


def _svc(endpoints: list[str], reject: bool = False) -> ServiceEntry:
    return ServiceEntry(service="default/payments:https", kind="cluster IP", protocol="tcp", address="10.96.0.20",
                        port=443, reject=reject, source="iptables-nft nat KUBE-SERVICES",
                        endpoints=[DataplaneEndpoint(address=a, port=8080, share=1 / len(endpoints), chain="KUBE-SEP-X")
                                   for a in endpoints])


def _ids(doc: NatSlice) -> list[str]:
    return sorted(f.id for f in nat_findings(V, doc))


def test_service_map_against_endpoint_slices():
    assert _ids(_doc([_svc(["10.244.1.3"])], _slice(["10.244.1.3"]))) == []
    assert _ids(_doc([_svc(["10.244.1.3"])], None)) == []  # no slices given: agreement not judged
    assert _ids(_doc([_svc(["10.244.2.9"])], _slice(["10.244.1.3"]))) == ["service.endpoint_not_programmed",
                                                                           "service.stale_dnat"]
    # an endpoint that is in the slice but not ready is stale in the dataplane too
    assert _ids(_doc([_svc(["10.244.1.3", "10.244.1.4"])], _slice(["10.244.1.3"], ["10.244.1.4"]))) == \
        ["service.stale_dnat"]
    assert _ids(_doc([_svc([], reject=True)], _slice(["10.244.1.3"]))) == ["service.reject_with_endpoints"]
    assert _ids(_doc([_svc([], reject=True)], _slice([], ["10.244.1.3"]))) == []


def test_conntrack_entry_to_a_removed_endpoint():
    def entry(backend: str) -> ConntrackEntry:
        return ConntrackEntry(original=ConntrackTuple(proto="tcp", src="10.244.1.2", dst="10.96.0.20", sport=40000,
                                                      dport=443),
                              reply=ConntrackTuple(proto="tcp", src=backend, dst="10.244.1.2", sport=8080,
                                                   dport=40000), tcp_state="ESTABLISHED", timeout_s=400, dnat=True)
    ok = _doc([_svc(["10.244.1.3"])], _slice(["10.244.1.3"]), [entry("10.244.1.3")])
    assert _ids(ok) == []
    gone = _doc([_svc(["10.244.1.3"])], _slice(["10.244.1.3"]), [entry("10.244.1.7")])
    [f] = nat_findings(V, gone)
    assert f.id == "service.conntrack_stale_endpoint" and f.evidence[0].pointer == "table.entries[0]"
    assert "10.244.1.7" in f.summary and f.next_command == "ip netns exec node conntrack -L -d 10.96.0.20 -p tcp"


def test_conntrack_usage_and_drops():
    s0 = ConntrackSample(monotonic_ns=0, count=950, totals={"drop": 5, "insert_failed": 0, "early_drop": 0})
    s1 = ConntrackSample(monotonic_ns=2_000_000_000, count=990, totals={"drop": 9, "insert_failed": 2, "early_drop": 0})
    ids = _ids(_doc(samples=[s0, s1]))
    assert ids == ["service.conntrack_dropping", "service.conntrack_near_max"]
    [drop] = [f for f in nat_findings(V, _doc(samples=[s0, s1])) if f.id == "service.conntrack_dropping"]
    assert "drop +4" in drop.summary and "insert_failed +2" in drop.summary
    assert drop.next_command == "ip netns exec node sh -c 'conntrack -S; cat /proc/net/stat/nf_conntrack'"
    calm = ConntrackSample(monotonic_ns=2_000_000_000, count=100, totals={"drop": 5, "insert_failed": 0})
    assert _ids(_doc(samples=[s0.model_copy(update={"count": 100}), calm])) == []


def test_proxy_mode_checks():
    both = [DatapathCheck(datapath=Datapath.IPTABLES_NFT, command="iptables-nft-save", programmed=True, detail="3 KUBE-SVC"),
            DatapathCheck(datapath=Datapath.NFTABLES, command="nft -j list table ip kube-proxy", programmed=True)]
    assert _ids(_doc(checks=both)) == ["service.proxy_ambiguous"]
    assert _ids(_doc(reported="ipvs")) == ["service.proxy_mode_mismatch"]
    assert _ids(_doc(reported="iptables")) == []


def test_proxy_mode_against_the_configmap():
    """kube-proxy's ConfigMap (from the Kubernetes slice) against the rules programmed: "" means iptables."""
    doc = _doc()
    assert [f.id for f in nat_findings(V, doc, "ipvs")] == ["service.proxy_mode_configmap_mismatch"]
    assert nat_findings(V, doc, "") == nat_findings(V, doc, "iptables") == nat_findings(V, doc, None) == []


def test_proc_ip_vs_reads_as_ipvsadm():
    """The kernel's /proc/net/ip_vs (hex addresses and ports) for the corpus's `ipvsadm -Ln` sample reads as
    the same service map."""
    proc = ("IP Virtual Server version 1.2.1 (size=4096)\n"
            "Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
            "TCP  0A000001:01BB rr persistent 10800\n"
            "  -> C0A80001:192B      Masq    1      1          0\n"
            "TCP  0A00000A:0035 rr \n"
            "  -> AC110002:0035      Masq    1      0          0\n"
            "UDP  0A00000A:0035 rr \n"
            "  -> AC110002:0035      Masq    1      0          0\n")
    text = corpus_file("kubeproxy/ipvs/k8s_ipvs_README_ipvsadm-ln_debug.txt").read_text()

    def shape(entries):
        return [(e.protocol, e.address, e.port, [(x.address, x.port, x.weight) for x in e.endpoints]) for e in entries]

    assert shape(services_from_proc_ip_vs(proc)) == shape(services_from_ipvsadm(text))


def test_proc_ip_vs_with_ipv6_services_reads_as_ipvsadm():
    """A dual-stack IPVS node: the kernel prints IPv6 services and real servers as [%pI6]:PORT (ip_vs_ctl.c,
    every group of four hex digits); `ipvsadm -Ln` prints them compressed. Both read as the same map (the
    NAT slice failed on the first IPv6 line: int("[fd00", 16))."""
    proc = ("IP Virtual Server version 1.2.1 (size=4096)\n"
            "Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
            "TCP  0A600014:01BB rr \n"
            "  -> 0AF40103:1F90      Masq    1      0          0\n"
            "TCP  [fd00:0010:0096:0000:0000:0000:0000:0014]:01BB rr \n"
            "  -> [fd00:0010:0244:0001:0000:0000:0000:0003]:1F90      Masq    1      0          0\n"
            "  -> [fd00:0010:0244:0002:0000:0000:0000:0009]:1F90      Masq    2      0          0\n")
    ipvsadm = ("IP Virtual Server version 1.2.1 (size=4096)\n"
               "Prot LocalAddress:Port Scheduler Flags\n"
               "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
               "TCP  10.96.0.20:443 rr\n"
               "  -> 10.244.1.3:8080              Masq    1      0          0\n"
               "TCP  [fd00:10:96::14]:443 rr\n"
               "  -> [fd00:10:244:1::3]:8080      Masq    1      0          0\n"
               "  -> [fd00:10:244:2::9]:8080      Masq    2      0          0\n")

    def shape(entries):
        return [(e.protocol, e.address, e.port, [(x.address, x.port, x.weight, x.share) for x in e.endpoints])
                for e in entries]

    got = shape(services_from_proc_ip_vs(proc))
    assert got == shape(services_from_ipvsadm(ipvsadm))
    assert got[1] == ("tcp", "fd00:10:96::14", 443, [("fd00:10:244:1::3", 8080, 1, 0.333333),
                                                      ("fd00:10:244:2::9", 8080, 2, 0.666667)])


# prometheus/procfs ipvs_test.go, expectedIPVSBackendStatuses (commit 3c943fd), for its fixture /proc/net/ip_vs:
# (local address, local port, remote address, remote port, proto, weight). Its two FWM rows have no local
# address or port, so they are not frontends a flow could be matched to.
_PROCFS_EXPECTED = [
    ("192.168.0.22", 3306, "192.168.82.22", 3306, "TCP", 100), ("192.168.0.22", 3306, "192.168.83.24", 3306, "TCP", 100),
    ("192.168.0.22", 3306, "192.168.83.21", 3306, "TCP", 100), ("192.168.0.57", 3306, "192.168.84.22", 3306, "TCP", 0),
    ("192.168.0.57", 3306, "192.168.82.21", 3306, "TCP", 100), ("192.168.0.57", 3306, "192.168.50.21", 3306, "TCP", 100),
    ("192.168.0.55", 3306, "192.168.50.26", 3306, "TCP", 0), ("192.168.0.55", 3306, "192.168.49.32", 3306, "TCP", 100),
    ("2620::1", 80, "2620::2", 80, "TCP", 1), ("2620::1", 80, "2620::3", 80, "TCP", 1),
    ("2620::1", 80, "2620::4", 80, "TCP", 1),
]


def test_a_third_party_proc_ip_vs_with_ipv6_and_fwmark_services():
    """prometheus/procfs's /proc/net/ip_vs fixture (IPv4 in hex, an IPv6 service as [%pI6]:PORT, a firewall-mark
    service last) reads to exactly the backends procfs's own test expects, and to the same map as the table's
    `ipvsadm -Ln` form (tests/data/ipvs/SOURCES.md). The FWM service's real servers were appended to the IPv6
    service before it."""
    data = Path(__file__).parent.parent / "data" / "ipvs"
    proc = services_from_proc_ip_vs((data / "procfs_proc_net_ip_vs.txt").read_text())
    rows = [(s.address, s.port, e.address, e.port, s.protocol.upper(), e.weight) for s in proc for e in s.endpoints]
    assert rows == _PROCFS_EXPECTED

    def shape(entries):
        return [(e.protocol, e.address, e.port, [(x.address, x.port, x.weight, x.share) for x in e.endpoints])
                for e in entries]

    assert shape(proc) == shape(services_from_ipvsadm((data / "procfs_ipvsadm-Ln.txt").read_text()))
    assert shape(proc)[3] == ("tcp", "2620::1", 80, [("2620::2", 80, 1, 0.333333), ("2620::3", 80, 1, 0.333333),
                                                     ("2620::4", 80, 1, 0.333333)])


def test_a_dual_stack_service_is_judged_per_family():
    """A dual-stack Service has one EndpointSlice per address family; each family's ClusterIP is programmed with
    its own family's endpoints. The IPv6 pods are not 'missing' from the IPv4 frontend (they were, for every
    dual-stack Service), and a stale IPv6 endpoint is still caught on the IPv6 frontend."""
    def family_slice(kind: str, ready: list[str]) -> dict:
        return {"kind": "EndpointSlice", "addressType": kind,
                "metadata": {"name": f"pay-{kind.lower()}", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "payments"}},
                "ports": [{"name": "https", "port": 8080}],
                "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in ready]}

    pair = endpoint_slices([family_slice("IPv4", ["10.244.1.3"]), family_slice("IPv6", ["fd00:10:244:1::3"])])
    assert [s.address_type for s in pair] == ["IPv4", "IPv6"]
    v6 = ServiceEntry(service="default/payments:https", kind="cluster IP", protocol="tcp", address="fd00:10:96::14",
                      port=443, source="ip6tables-nft nat KUBE-SERVICES",
                      endpoints=[DataplaneEndpoint(address="fd00:10:244:1::3", port=8080, share=1.0, chain="KUBE-SEP-Y")])
    assert _ids(_doc([_svc(["10.244.1.3"]), v6], pair)) == []
    stale = v6.model_copy(update={"endpoints": [DataplaneEndpoint(address="fd00:10:244:2::9", port=8080, share=1.0)]})
    assert _ids(_doc([_svc(["10.244.1.3"]), stale], pair)) == ["service.endpoint_not_programmed",
                                                               "service.stale_dnat"]


def _raw_slice(*eps: dict) -> list:
    """An EndpointSlice as the API serves it (conditions, nodeName, hints), read by the collector's own reader."""
    return endpoint_slices([{"kind": "EndpointSlice", "addressType": "IPv4",
                             "metadata": {"name": "pay-x", "namespace": "default",
                                          "labels": {"kubernetes.io/service-name": "payments"}},
                             "ports": [{"name": "https", "port": 8080}], "endpoints": list(eps)}])


def _ep(address: str, node: str = "node-a", ready: bool = True, serving: bool | None = None,
        terminating: bool | None = None, zones: list[str] | None = None) -> dict:
    cond = {"ready": ready, **({"serving": serving} if serving is not None else {}),
            **({"terminating": terminating} if terminating is not None else {})}
    return {"addresses": [address], "conditions": cond, "nodeName": node,
            **({"hints": {"forZones": [{"name": z} for z in zones]}} if zones is not None else {})}


def _service(itp: str | None = None, etp: str | None = None):
    from bundle.models.kube import ServiceView
    return ServiceView(namespace="default", name="payments", internal_traffic_policy=itp, external_traffic_policy=etp)


def _svc_kind(endpoints: list[str], kind: str) -> ServiceEntry:
    return _svc(endpoints).model_copy(update={"kind": kind, "address": None if kind == "nodeport" else "10.96.0.20"})


def test_terminating_endpoints_still_serving_are_not_stale():
    """kube-proxy sends a Service's traffic to terminating endpoints that still serve when none is ready (KEP-1669,
    pkg/proxy/topology.go): that is not stale DNAT. A terminating endpoint that no longer serves is."""
    draining = _raw_slice(_ep("10.244.1.3", ready=False, serving=True, terminating=True))
    assert _ids(_doc([_svc(["10.244.1.3"])], draining)) == []
    gone = _raw_slice(_ep("10.244.1.3", ready=False, serving=False, terminating=True))
    assert _ids(_doc([_svc(["10.244.1.3"])], gone)) == ["service.stale_dnat"]


def test_local_traffic_policy_programs_this_nodes_endpoints_only():
    """internalTrafficPolicy: Local (the ClusterIP) and externalTrafficPolicy: Local (node ports, external IPs):
    this node's endpoints only, by design. An endpoint of the same node left out is still missing; without the
    Service object (no Kubernetes slice) the policy is unknown and the finding stands."""
    two_nodes = _raw_slice(_ep("10.244.1.3", "node-a"), _ep("10.244.2.3", "node-b"))
    assert _ids(_doc([_svc(["10.244.1.3"])], two_nodes)) == ["service.endpoint_not_programmed"]
    assert nat_findings(V, _doc([_svc(["10.244.1.3"])], two_nodes), None, [_service(itp="Local")]) == []
    assert nat_findings(V, _doc([_svc_kind(["10.244.1.3"], "nodeport")], two_nodes), None,
                        [_service(etp="Local")]) == []
    # externalTrafficPolicy does not apply to the ClusterIP
    assert [f.id for f in nat_findings(V, _doc([_svc(["10.244.1.3"])], two_nodes), None,
                                       [_service(etp="Local")])] == ["service.endpoint_not_programmed"]
    same_node = _raw_slice(_ep("10.244.1.3", "node-a"), _ep("10.244.1.4", "node-a"), _ep("10.244.2.3", "node-b"))
    assert [f.id for f in nat_findings(V, _doc([_svc(["10.244.1.3"])], same_node), None,
                                       [_service(itp="Local")])] == ["service.endpoint_not_programmed"]


def test_topology_hints_program_one_zones_endpoints():
    """Topology-aware routing: with every endpoint hinted, a node programs those hinted for its zone. The
    programmed set must be exactly one zone's: part of a zone's share is still endpoints missing."""
    hinted = _raw_slice(_ep("10.244.1.3", zones=["zone-a"]), _ep("10.244.1.4", zones=["zone-a"]),
                        _ep("10.244.2.3", "node-b", zones=["zone-b"]))
    assert _ids(_doc([_svc(["10.244.1.3", "10.244.1.4"])], hinted)) == []
    assert _ids(_doc([_svc(["10.244.2.3"])], hinted)) == []
    assert _ids(_doc([_svc(["10.244.1.3"])], hinted)) == ["service.endpoint_not_programmed"]
    # one endpoint without a hint: kube-proxy ignores hints altogether and programs every endpoint
    unhinted = _raw_slice(_ep("10.244.1.3", zones=["zone-a"]), _ep("10.244.2.3", "node-b"))
    assert _ids(_doc([_svc(["10.244.1.3"])], unhinted)) == ["service.endpoint_not_programmed"]


def test_conntrack_leftovers_of_closed_or_draining_connections_are_not_stale():
    def entry(backend: str, state: str) -> ConntrackEntry:
        return ConntrackEntry(original=ConntrackTuple(proto="tcp", src="10.244.1.2", dst="10.96.0.20", sport=40000,
                                                      dport=443),
                              reply=ConntrackTuple(proto="tcp", src=backend, dst="10.244.1.2", sport=8080,
                                                   dport=40000), tcp_state=state, timeout_s=100, dnat=True)
    slices = _raw_slice(_ep("10.244.1.3"), _ep("10.244.1.5", ready=False, serving=True, terminating=True))
    svc = [_svc(["10.244.1.3"])]
    assert _ids(_doc(svc, slices, [entry("10.244.1.7", "TIME_WAIT")])) == []  # closed: a leftover, no traffic
    assert _ids(_doc(svc, slices, [entry("10.244.1.5", "ESTABLISHED")])) == []  # a pod draining its connections
    assert _ids(_doc(svc, slices, [entry("10.244.1.7", "ESTABLISHED")])) == ["service.conntrack_stale_endpoint"]


def test_endpoint_slice_hints_are_read():
    [view] = _raw_slice(_ep("10.244.1.3", zones=["zone-a", "zone-b"]), _ep("10.244.1.4"))
    assert [e.for_zones for e in view.endpoints] == [["zone-a", "zone-b"], None]
    assert [e.for_nodes for e in view.endpoints] == [None, None]
