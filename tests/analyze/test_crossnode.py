"""The cross-node window check on its own: "never reached" is said only when every SYN fell well inside the
server node's capture window, in the server's clock (the offset other flows seen at both ends give)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bundle.analyze.crossnode import _covers, _sees_arrivals
from bundle.models import CaptureRun
from bundle.models.capture import CaptureLimits

T = datetime(2026, 12, 2, 3, 40, tzinfo=UTC)


def _run() -> CaptureRun:
    return CaptureRun(interface="eth0", interfaces=["eth0"], filter="tcp", filter_source="default",
                      limits=CaptureLimits(packets=10, bytes=4096, seconds=10.0, snaplen=128),
                      started=T, finished=T + timedelta(seconds=10))


def _ns(seconds: float) -> int:
    return int((T + timedelta(seconds=seconds)).timestamp() * 1e9)


def test_edges_prove_nothing_and_the_offset_moves_the_moment():
    run = _run()
    assert _covers(run, _ns(3), _ns(4))
    assert not _covers(run, _ns(0.1), _ns(1))  # the server's capture had barely started
    assert _covers(run, _ns(0.1), _ns(1), offset_s=0.5)  # its clock runs 0.5 s ahead: it was capturing
    assert not _covers(run, _ns(5), _ns(9.5))  # the last SYN too close to the end
    assert _covers(run, _ns(5), _ns(9.5), offset_s=-1.0)
    assert not _covers(run.model_copy(update={"started": None}), _ns(3), _ns(4))


def test_a_loopback_capture_cannot_say_never_reached():
    """The server node collected about its own address: its capture ran on lo (where `route get` to a local
    address leads), which no packet from another node crosses. Its silence proves nothing; eth0 or any can."""
    run = _run()
    assert _sees_arrivals(run)
    assert not _sees_arrivals(run.model_copy(update={"interface": "lo", "interfaces": ["lo"]}))
    assert _sees_arrivals(run.model_copy(update={"interface": "lo", "interfaces": ["lo", "eth0"]}))
    assert _sees_arrivals(run.model_copy(update={"interface": "any", "interfaces": ["any"]}))
    # the holder of an IPVS ClusterIP: a dummy no packet arrives on
    ipvs = run.model_copy(update={"interface": "lo", "interfaces": ["lo", "kube-ipvs0"]})
    assert _sees_arrivals(ipvs) and not _sees_arrivals(ipvs, frozenset({"kube-ipvs0"}))


def test_one_symptom_seen_by_two_captures_of_one_vantage_is_one_finding():
    """A watch's bundle analyses two captures of the watched vantage (its own and the ring): the same unanswered
    handshake symptom from both is one finding, counted twice, citing both (the flaky scenario hit it at random)."""
    from bundle.analyze.report import _one_fact_once
    from bundle.models import Evidence, Finding, FindingTarget, Layer, Severity

    def f(member: str, target: str = "10.244.1.3") -> Finding:
        return Finding(id="capture.syn_unanswered", severity=Severity.CRITICAL, layer=Layer.TRANSPORT,
                       vantage="netns-pod", target=FindingTarget(address=target, port=8080), summary="s",
                       evidence=[Evidence(member=member, pointer="analysis.flows[0]")])

    out = _one_fact_once([f("vantages/netns-pod/capture.json"), f("captures/0-watch-ring.pcapng/analysis.json"),
                          f("vantages/netns-pod/capture.json", target="10.244.1.4")])
    assert [(x.target.address, x.count, len(x.evidence)) for x in out] == [("10.244.1.3", 2, 2), ("10.244.1.4", 1, 1)]


def test_an_ipvs_node_does_not_own_the_clusterips_it_holds():
    """IPVS puts every ClusterIP on every node's kube-ipvs0: a flow to a ClusterIP is not 'arriving at' whichever
    node of the set holds it first. The node's own address stays its own; without the NAT slice's frontends (no
    IPVS service read) the held address counts as before."""
    from bundle.analyze._common import VantageDocs
    from bundle.analyze.crossnode import NodeEvidence
    from bundle.models import (Address, ConntrackSample, ConntrackSettings, ConntrackTable, NatSlice, ProxyMode,
                               RouteSlice, ServiceEntry, Sysctls)

    route = RouteSlice(links=[], rules=[], routes=[], neighbors=[], lookups=[], active_probes=False,
                       addresses=[Address(ifindex=2, ifname="eth0", family=4, address="10.244.0.2", prefixlen=24,
                                          scope="global"),
                              Address(ifindex=7, ifname="kube-ipvs0", family=4, address="10.96.0.20", prefixlen=32,
                                      scope="global")],
                       sysctls=Sysctls(ip_forward=1, rp_filter_all=0, rp_filter_default=0, interfaces=[]))
    nat = NatSlice(settings=ConntrackSettings(max=1000, buckets=256), samples=[ConntrackSample(monotonic_ns=0, count=1)],
                   table=ConntrackTable(total=0, by_protocol={}, by_tcp_state={}, watched=[], matched=0, entries=[],
                                        truncated=False),
                   proxy=ProxyMode(mode="ipvs", checks=[], reported="ipvs"),
                   services=[ServiceEntry(service="default/payments:https", kind="cluster IP", protocol="tcp",
                                          address="10.96.0.20", port=443, source="IPVS")])
    ipvs = NodeEvidence("node-a", "nodes/node-a.tar.zst", (VantageDocs("host", route=route, nat=nat),))
    assert ipvs.holds("10.244.0.2") and not ipvs.holds("10.96.0.20")
    plain = NodeEvidence("node-a", "nodes/node-a.tar.zst", (VantageDocs("host", route=route),))
    assert plain.holds("10.96.0.20")


def test_a_syn_at_the_captures_end_does_not_split_the_endpoints():
    """A client node's handshakes to one port: every one completed toward node b; toward node c a single SYN
    sent in the capture's last second, never retransmitted. That proves nothing about c (its SYN-ACK may follow
    the capture's end), so no 'answered on b, never on c' split; the same SYN sent mid-window does split."""
    from bundle.analyze._common import VantageDocs
    from bundle.analyze.crossnode import NodeEvidence, endpoint_splits
    from bundle.models import Address, CaptureAnalysis, Handshake, RouteSlice, Sysctls, TcpFlow

    def route(address: str) -> RouteSlice:
        return RouteSlice(links=[], rules=[], routes=[], neighbors=[], lookups=[], active_probes=False,
                          addresses=[Address(ifindex=2, ifname="eth0", family=4, address=address, prefixlen=24,
                                             scope="global")],
                          sysctls=Sysctls(ip_forward=1, rp_filter_all=0, rp_filter_default=0, interfaces=[]))

    def flow(server: str, at: float, hs: Handshake) -> TcpFlow:
        return TcpFlow(client="10.244.0.2:40000", server=f"{server}:8080", first_ns=_ns(at), last_ns=_ns(at),
                       packets=1, bytes=0, handshake=hs, syn_sent=1, syn_retransmits=0, retransmits=0,
                       resets_from_client=0, resets_from_server=0, zero_windows=0, blackhole=False)

    def split(c_at: float) -> list:
        analysis = CaptureAnalysis(file="capture.pcapng", format="pcapng", linktypes={"1": 2}, packets=2,
                                   ip_packets=2, non_ip=0, unsupported_linktype=0, malformed=0, complete=True,
                                   flows=[flow("10.244.1.2", 2, Handshake.COMPLETED),
                                          flow("10.244.2.2", c_at, Handshake.SYN_UNANSWERED)],
                                   flows_total=2, dns=[], dns_unanswered=0, icmp=[])
        a = NodeEvidence("a", "nodes/a.tar.zst", (VantageDocs("host", route=route("10.244.0.2"),
                                                              capture=_run().model_copy(update={"analysis": analysis})),))
        b = NodeEvidence("b", "nodes/b.tar.zst", (VantageDocs("host", route=route("10.244.1.2")),))
        c = NodeEvidence("c", "nodes/c.tar.zst", (VantageDocs("host", route=route("10.244.2.2")),))
        return [(s.working, s.failing) for s in endpoint_splits([a, b, c])]

    assert split(9.5) == []  # 0.5 s before the capture's end
    assert split(4.0) == [({"b": ["10.244.1.2"]}, {"c": ["10.244.2.2"]})]


def test_a_node_that_started_late_is_said():
    """The set's shared start against each node's collect start (its manifest): a second late is noise, more is
    a node whose captures cover less of the window (40 ssh sessions on a busy coordinator, an image pulling)."""
    from bundle.analyze.crossnode import NodeEvidence, late_starts

    nodes = [NodeEvidence("a", "nodes/a.tar.zst", (), T + timedelta(seconds=0.4)),
             NodeEvidence("b", "nodes/b.tar.zst", (), T + timedelta(seconds=3.5)),
             NodeEvidence("c", "nodes/c.tar.zst", (), None)]
    [late] = late_starts(nodes, T)
    assert late.id == "fleet.late_start" and late.vantage == "b" and "3.5 s after" in late.summary
    assert late.severity.value == "info" and late.evidence[0].member == "nodes/b.tar.zst"
    assert late_starts(nodes, None) == []
