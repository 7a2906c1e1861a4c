"""Across the nodes of an incident set: a handshake the client's capture shows unanswered, followed to the node
that holds the server's address. The seed's method, comparing ends: the SYN left here — did it arrive there?
Lost between them (underlay, overlay, a firewall on the way); reached the server's interface and nothing came
back (the server's own stack or firewall); or the server answered and the answer never reached the client.
A node whose capture did not cover that moment, or that peer, proves nothing and is said so."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from bundle.analyze._common import VantageDocs, about, split_endpoint
from bundle.analyze.capture import answer_may_follow, capture_end_ns
from bundle.analyze.diff import Difference, diff
from bundle.models import (CaptureRun, Evidence, Finding, FindingsReport, Handshake, Layer, Severity, TcpFlow,
                           Verdict)
from bundle.models.manifest import VantageKind

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
    started: datetime | None = None  # the node's collect began (its manifest's created)

    def holds(self, address: str | None) -> bool:
        """Whether the address is this node's own (an IPVS node's ClusterIPs are everyone's frontends, not its)."""
        return any(d.holds(address) and not d.translates(address) for d in self.docs)

    def dummies(self, vantage: str) -> frozenset[str]:
        """The vantage's dummy interfaces (by its route slice): they hold addresses, no packet arrives on them."""
        d = next((d for d in self.docs if d.vantage == vantage), None)
        return frozenset(lk.name for lk in d.route.links if lk.kind == "dummy") if d and d.route else frozenset()

    def captures(self) -> list[tuple[str, CaptureRun]]:
        """The vantages' captures, the node's own (host) first: what left the node is seen there."""
        runs = [(d.vantage, d.capture) for d in self.docs if d.capture is not None and d.capture.analysis is not None]
        return sorted(runs, key=lambda r: not self.is_host(r[0]))

    def is_host(self, vantage: str) -> bool:
        d = next((d for d in self.docs if d.vantage == vantage), None)
        return d is not None and d.vantage_model is not None and d.vantage_model.kind is VantageKind.HOST


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


def _sees_arrivals(run: CaptureRun, deaf: frozenset[str] = frozenset()) -> bool:
    """Whether packets from another machine could be in this capture: it ran on some interface besides the
    loopback and `deaf` ones (dummies: kube-ipvs0 holds addresses no packet arrives on); "any" included. A node's
    own address routes to lo, which no packet from the network crosses (a collect now also captures the interface
    holding the address; older bundles have lo alone) — absence there proves nothing."""
    names = run.interfaces or ([run.interface] if run.interface else [])
    return any(name != "lo" and name not in deaf for name in names)


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
    sent = f"{f.syn_sent} SYN(s) from {f.client}"

    def add(fid: str, severity: Severity, layer: Layer, summary: str, evidence: list[Evidence],
             command: str) -> Finding:
        return Finding(id=fid, severity=severity, layer=layer, vantage=f"{a.node}/{va}", target=about(server, port),
                       summary=summary, evidence=evidence, next_command=command)

    if at_b:
        vb, j, g = at_b[0]
        if g.handshake is Handshake.SYN_ACK_ONLY:
            return add(
                "fleet.reply_lost", Severity.CRITICAL, Layer.ROUTE,
                f"{sent} to {f.server} left {a.node} and reached {b.node}, which answered (SYN-ACK in its "
                f"capture); {a.node}'s capture never saw the answer: it is lost on the way back "
                f"(the return path, asymmetric routing, a stateful firewall that missed the SYN).",
                [_where(a, va, i), _where(b, vb, j)],
                f"ip route get {split_endpoint(f.client)[0]}  # on {b.node}: the way back")
        return add(
            "fleet.dropped_at_server", Severity.CRITICAL, Layer.TRANSPORT,
            f"{sent} to {f.server} left {a.node} and reached {b.node}'s interface (its capture holds "
            f"them), and {b.node} sent nothing back: they are dropped in {b.node}'s own stack — its "
            f"firewall, or a listener that cannot take them.",
            [_where(a, va, i), _where(b, vb, j)],
            f"nft list ruleset; ss -tlnp sport = :{port}  # on {b.node}")
    running = [(vb, run) for vb, run in b.captures() if _covers(run, f.first_ns, f.last_ns, offset_s)]
    covering = [(vb, run) for vb, run in running if _sees_arrivals(run, b.dummies(vb))]
    if running and not covering:  # a node collected about its own address captures on lo: deaf to the network
        vb, run = running[0]
        return add(
            "fleet.not_covered", Severity.INFO, Layer.ROUTE,
            f"{sent} to {f.server} went unanswered; {b.node}'s capture ran then but only on "
            f"{', '.join(run.interfaces) or 'loopback'}, where packets from another node never pass: "
            f"whether they arrived is not known (give {b.node} a target it reaches over the network, or "
            f"--capture-iface).",
            [_where(a, va, i), Evidence(member=b.member, pointer=f"vantages/{vb}/capture.json#interfaces")],
            f"netbundle show {a.member}")
    if not covering:
        return add(
            "fleet.not_covered", Severity.INFO, Layer.ROUTE,
            f"{sent} to {f.server} went unanswered; {b.node} holds {server} but its capture did not run "
            f"at that moment: whether they arrived is not known.",
            [_where(a, va, i)], f"netbundle show {a.member}")
    if not a.is_host(va):  # seen in a pod's netns: whether it left the node is a's own host capture's to say
        own = [(vh, run) for vh, run in a.captures() if a.is_host(vh) and _covers(run, f.first_ns, f.last_ns)]
        if not own:
            return add(
                "fleet.not_covered", Severity.INFO, Layer.ROUTE,
                f"{sent} to {f.server} left {va} on {a.node} and never reached {b.node}; {a.node}'s own "
                f"interfaces were not captured, so whether they left {a.node} is not known (collect the "
                f"nodes with --host).", [_where(a, va, i)], f"netbundle show {a.member}")
        return add(
            "fleet.stayed_on_client_node", Severity.WARNING, Layer.ROUTE,
            f"{sent} to {f.server} left {va} on {a.node} but {a.node}'s own capture, running then, holds "
            f"none of them: they were dropped on {a.node} itself (its firewall, policy or routing), not "
            f"between the nodes; {a.node}'s own ladder names the layer.",
            [_where(a, va, i), Evidence(member=a.member, pointer=f"vantages/{own[0][0]}/capture.json")],
            f"netbundle show {a.member}")
    vb, run = covering[0]
    heard = run.hosts_seen.get(split_endpoint(f.client)[0] or "", 0)
    return add(
        "fleet.lost_between", Severity.CRITICAL, Layer.ROUTE,
        f"{sent} to {f.server} left {a.node} (its capture holds them) and never reached {b.node}: "
        f"{b.node}'s capture on {', '.join(run.interfaces) or 'its interfaces'}, running at that moment, "
        f"holds none of them ({heard} other packet(s) from that address). They are lost between the two "
        f"nodes: the network in between (underlay, overlay, a firewall or security group).",
        [_where(a, va, i), Evidence(member=b.member, pointer=f"vantages/{vb}/capture.json#hosts_seen")],
        f"traceroute -T -p {port} {server}  # from {a.node}")


# --- the set's own verdicts: one ladder per target across the nodes, and working vs failing endpoint nodes ------

# Cross-node findings that prove where the packets went: they own a target's failure over the client node's own
# ladder (whose transport verdict only says "unanswered"). not_covered and stayed_on_client_node prove no such
# thing: the node's own ladder keeps the verdict.
_PROVEN = {"fleet.lost_between", "fleet.dropped_at_server", "fleet.reply_lost"}


@dataclass(frozen=True)
class SetLadderRow:
    node: str
    role: str  # client (its ladder decides for the target), server (holds the target), other
    vantage: str | None
    owner: Layer | None
    cause: str  # the node's owning finding, "id: summary", or ""
    layers: tuple[tuple[Layer, Verdict], ...]


@dataclass(frozen=True)
class SetLadder:
    target: str
    owner: Layer | None
    cause: Finding | None
    decided_by: str  # "across the nodes" or "node X's own ladder"
    rows: tuple[SetLadderRow, ...]


@dataclass(frozen=True)
class EndpointSplit:
    """One client node's connections to the same port on several nodes: some answered, some not. The nodes
    differ in what makes the difference: the set diffs a failing one against a working one."""

    client_node: str
    port: int
    failing: dict[str, list[str]]  # node -> the server addresses it holds that never answered
    working: dict[str, list[str]]
    pair: tuple[str, str]  # (failing node, working node) diffed
    leads: tuple[Difference, ...]


@dataclass(frozen=True)
class SetReport:
    findings: list[Finding]
    offsets: list[ClockOffset]
    ladders: list[SetLadder]
    splits: list[EndpointSplit]


def set_ladders(nodes: list[NodeEvidence], reports: dict[str, FindingsReport],
                findings: list[Finding]) -> list[SetLadder]:
    """Each target any node's ladder is about, across the nodes: every node's verdict side by side, and one owner —
    a cross-node finding that proves where the packets went, else the ladder of the node that decides for the
    client (the first whose ladder has an owner)."""
    targets: list[str] = []
    for n in nodes:
        for known in reports[n.node].ladders if n.node in reports else []:
            if known.target not in targets:
                targets.append(known.target)
    out: list[SetLadder] = []
    for t in targets:
        address, port = split_endpoint(t)
        rows: list[SetLadderRow] = []
        for n in nodes:
            rep = reports.get(n.node)
            lad = next((x for x in rep.ladders if x.target == t), None) if rep else None
            holds = n.holds(address)
            if lad is None and not holds:
                continue
            cause = ""
            if lad is not None and lad.cause is not None and rep is not None and lad.cause < len(rep.findings):
                c = rep.findings[lad.cause]
                cause = f"{c.id}: {c.summary}"
            role = "server" if holds else "client" if lad is not None else "other"
            rows.append(SetLadderRow(n.node, role, lad.client if lad else None, lad.owner if lad else None, cause,
                                     tuple((lv.layer, lv.verdict) for lv in lad.layers) if lad else ()))
        proven = next((f for f in findings if f.id in _PROVEN and f.target is not None
                       and f.target.address == address and (port is None or f.target.port == port)), None)
        if proven is not None:
            out.append(SetLadder(t, proven.layer, proven, "across the nodes", tuple(rows)))
            continue
        decider = next((r for r in rows if r.owner is not None), None)
        out.append(SetLadder(t, decider.owner if decider else None, None,
                             f"node {decider.node}'s own ladder" if decider else "no node's ladder has an owner",
                             tuple(rows)))
    return out


def endpoint_splits(nodes: list[NodeEvidence]) -> list[EndpointSplit]:
    """A client node's flows to one port, grouped by the node holding each server address: nodes where every
    handshake completed, and nodes where none did. Where both exist, the first failing node is diffed with
    the first working one (their vantages paired by role)."""
    out: list[EndpointSplit] = []
    for a in nodes:
        by_port: dict[int, dict[str, dict[str, set[bool]]]] = {}
        for _va, run in a.captures():
            end_ns = capture_end_ns(run.analysis, run) if run.analysis is not None else None
            for f in run.analysis.flows if run.analysis is not None else []:
                if f.handshake not in (Handshake.COMPLETED, Handshake.SYN_UNANSWERED) or answer_may_follow(f, end_ns):
                    continue
                server, port = split_endpoint(f.server)
                b = next((n for n in nodes if n is not a and n.holds(server)), None)
                if b is None or port is None or server is None:
                    continue
                by_port.setdefault(port, {}).setdefault(b.node, {}).setdefault(server, set()).add(
                    f.handshake is Handshake.COMPLETED)
        for port, per_node in sorted(by_port.items()):
            failing = {nd: sorted(ip for ip, ok in ips.items() if ok == {False}) for nd, ips in per_node.items()
                       if all(ok == {False} for ok in ips.values())}
            working = {nd: sorted(ips) for nd, ips in per_node.items() if all(ok == {True} for ok in ips.values())}
            if not failing or not working:
                continue
            fn, wn = next(iter(failing)), next(iter(working))
            f_docs = next(n.docs for n in nodes if n.node == fn)
            w_docs = next(n.docs for n in nodes if n.node == wn)
            report = diff(list(f_docs), list(w_docs))
            out.append(EndpointSplit(a.node, port, failing, working, (fn, wn), tuple(report.leads[:15])))
    return out


LATE_START = timedelta(seconds=1)


def late_starts(nodes: list[NodeEvidence], start_at: datetime | None) -> list[Finding]:
    """A node whose collect began well after the shared start (its collect arrived late: a slow ssh session, an
    image still pulling): the windows overlap less, which the set must say before any 'never reached'."""
    out: list[Finding] = []
    for n in nodes:
        if start_at is None or n.started is None or n.started - start_at <= LATE_START:
            continue
        late = (n.started - start_at).total_seconds()
        out.append(Finding(
            id="fleet.late_start", severity=Severity.INFO, layer=Layer.ROUTE, vantage=n.node, target=None,
            summary=f"{n.node} began collecting {late:.1f} s after the shared start: its captures cover the others' "
                    f"window from then on only (packets before that are not in them; the cross-node checks "
                    f"compare only moments both captures ran).",
            evidence=[Evidence(member=n.member, pointer="manifest.json#created")],
            next_command=f"netbundle show {n.member}"))
    return out


def set_report(nodes: list[NodeEvidence], reports: dict[str, FindingsReport],
               start_at: datetime | None = None) -> SetReport:
    findings, offsets = cross_node(nodes)
    findings = late_starts(nodes, start_at) + findings
    return SetReport(findings, offsets, set_ladders(nodes, reports, findings), endpoint_splits(nodes))
