"""Across the nodes of an incident set: a handshake the client's capture shows unanswered, followed to the node
that holds the server's address. The seed's method, comparing ends: the SYN left here — did it arrive there?
Lost between them (underlay, overlay, a firewall on the way); reached the server's interface and nothing came
back (the server's own stack or firewall); or the server answered and the answer never reached the client.
A node whose capture did not cover that moment, or that peer, proves nothing and is said so."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from bundle.analyze._common import VantageDocs, about, split_endpoint
from bundle.models import CaptureRun, Evidence, Finding, Handshake, Layer, Severity, TcpFlow

# Two nodes' clocks (NTP keeps them within milliseconds): the server node's capture must have started this long
# before the client's first SYN and run this long after its last one for "never reached" to be said.
START_SLACK = timedelta(seconds=0.2)
END_SLACK = timedelta(seconds=1)


@dataclass(frozen=True)
class NodeEvidence:
    """One node of the set: its name, the member holding its bundle, its vantages' documents."""

    node: str
    member: str
    docs: tuple[VantageDocs, ...]

    def holds(self, address: str | None) -> bool:
        return any(d.holds(address) for d in self.docs)

    def captures(self) -> list[tuple[str, CaptureRun]]:
        return [(d.vantage, d.capture) for d in self.docs
                if d.capture is not None and d.capture.analysis is not None]


@dataclass(frozen=True)
class ClockOffset:
    """B's clock minus A's, as a SYN seen at both ends says it (one-way delay included: an upper bound)."""

    a: str
    b: str
    offset_s: float
    flow: str


def _covers(run: CaptureRun, first_ns: int, last_ns: int, offset_s: float = 0.0) -> bool:
    """Whether the capture ran through the whole moment, with room for two clocks: every SYN of the flow fell
    well inside its window (an edge proves nothing: the other node may have stopped or not yet started).
    offset_s: the server node's clock minus the client node's, where other flows seen at both ends tell it."""
    if run.started is None or run.finished is None:
        return False
    first = datetime.fromtimestamp(first_ns / 1e9 + offset_s, run.started.tzinfo)
    last = datetime.fromtimestamp(last_ns / 1e9 + offset_s, run.started.tzinfo)
    return run.started + START_SLACK <= first and last <= run.finished - END_SLACK


def _where(node: NodeEvidence, vantage: str, i: int) -> Evidence:
    return Evidence(member=node.member, pointer=f"vantages/{vantage}/capture.json#analysis.flows[{i}]")


@dataclass(frozen=True)
class _Pair:
    """One flow of a client node's capture, with the node holding its server and that node's view of it."""

    a: NodeEvidence
    va: str
    i: int
    f: TcpFlow
    b: NodeEvidence
    at_b: tuple[tuple[str, int, TcpFlow], ...]  # (vantage, index, flow) of the same 4-tuple in b's captures


def _pairs(nodes: list[NodeEvidence]) -> list[_Pair]:
    out: list[_Pair] = []
    for a in nodes:
        for va, run_a in a.captures():
            for i, f in enumerate(run_a.analysis.flows if run_a.analysis is not None else []):
                server, _ = split_endpoint(f.server)
                b = next((n for n in nodes if n is not a and n.holds(server)), None)
                if b is not None:
                    out.append(_Pair(a, va, i, f, b, tuple(
                        (vb, j, g) for vb, run_b in b.captures() if run_b.analysis is not None
                        for j, g in enumerate(run_b.analysis.flows) if (g.client, g.server) == (f.client, f.server))))
    return out


def cross_node(nodes: list[NodeEvidence]) -> tuple[list[Finding], list[ClockOffset]]:
    findings: list[Finding] = []
    pairs = _pairs(nodes)
    # B's clock minus A's from every SYN both ends captured (the one-way delay included)
    offsets = [ClockOffset(p.a.node, p.b.node, round((p.at_b[0][2].first_ns - p.f.first_ns) / 1e9, 6),
                           f"{p.f.client} > {p.f.server}") for p in pairs if p.at_b]
    by_pair: dict[tuple[str, str], list[float]] = {}
    for o in offsets:
        by_pair.setdefault((o.a, o.b), []).append(o.offset_s)
    done: set[tuple[str, str]] = set()
    for p in pairs:
        f = p.f
        if f.handshake is not Handshake.SYN_UNANSWERED or (f.client, f.server) in done:
            continue
        done.add((f.client, f.server))
        seen = sorted(by_pair.get((p.a.node, p.b.node), []))
        offset = seen[len(seen) // 2] if seen else 0.0  # the median; none known: the clocks agree
        server, port = split_endpoint(f.server)
        found = _verdict(p.a, p.va, p.i, f, p.b, list(p.at_b), server, port, offset)
        if found is None:
            continue
        same = next((x for x in findings if (x.id, x.vantage, x.target) == (found.id, found.vantage, found.target)),
                    None)
        if same is None:
            findings.append(found)
        else:  # another connection of the same client to the same server, the same fate: one finding
            same.count += 1
            same.evidence += [e for e in found.evidence if e not in same.evidence][:1]
    return findings, offsets


def _verdict(a: NodeEvidence, va: str, i: int, f: TcpFlow, b: NodeEvidence,
             at_b: list[tuple[str, int, TcpFlow]], server: str | None, port: int | None,
             offset_s: float = 0.0) -> Finding | None:
    here = f"{a.node}/{va}"
    sent = f"{f.syn_sent} SYN(s) from {f.client}"
    if at_b:
        vb, j, g = at_b[0]
        if g.handshake is Handshake.SYN_ACK_ONLY:
            return Finding(
                id="fleet.reply_lost", severity=Severity.CRITICAL, layer=Layer.ROUTE, vantage=here,
                target=about(server, port),
                summary=f"{sent} to {f.server} left {a.node} and reached {b.node}, which answered (SYN-ACK in its "
                        f"capture); {a.node}'s capture never saw the answer: it is lost on the way back "
                        f"(the return path, asymmetric routing, a stateful firewall that missed the SYN).",
                evidence=[_where(a, va, i), _where(b, vb, j)],
                next_command=f"ip route get {split_endpoint(f.client)[0]}  # on {b.node}: the way back")
        return Finding(
            id="fleet.dropped_at_server", severity=Severity.CRITICAL, layer=Layer.TRANSPORT, vantage=here,
            target=about(server, port),
            summary=f"{sent} to {f.server} left {a.node} and reached {b.node}'s interface (its capture holds "
                    f"them), and {b.node} sent nothing back: they are dropped in {b.node}'s own stack — its "
                    f"firewall, or a listener that cannot take them.",
            evidence=[_where(a, va, i), _where(b, vb, j)],
            next_command=f"nft list ruleset; ss -tlnp sport = :{port}  # on {b.node}")
    covering = [(vb, run) for vb, run in b.captures() if _covers(run, f.first_ns, f.last_ns, offset_s)]
    if not covering:
        return Finding(
            id="fleet.not_covered", severity=Severity.INFO, layer=Layer.ROUTE, vantage=here,
            target=about(server, port),
            summary=f"{sent} to {f.server} went unanswered; {b.node} holds {server} but its capture did not run "
                    f"at that moment: whether they arrived is not known.",
            evidence=[_where(a, va, i)], next_command=f"netbundle show {a.member}")
    vb, run = covering[0]
    heard = run.hosts_seen.get(split_endpoint(f.client)[0] or "", 0)
    return Finding(
        id="fleet.lost_between", severity=Severity.CRITICAL, layer=Layer.ROUTE, vantage=here,
        target=about(server, port),
        summary=f"{sent} to {f.server} left {a.node} (its capture holds them) and never reached {b.node}: "
                f"{b.node}'s capture on {', '.join(run.interfaces) or 'its interfaces'}, running at that moment, "
                f"holds none of them ({heard} other packet(s) from that address). They are lost between the two "
                f"nodes: the network in between (underlay, overlay, a firewall or security group).",
        evidence=[_where(a, va, i), Evidence(member=b.member, pointer=f"vantages/{vb}/capture.json#hosts_seen")],
        next_command=f"traceroute -T -p {port} {server}  # from {a.node}")
