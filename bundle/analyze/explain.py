"""Explanation rules: a finding (the cause) explains others (the client's symptoms) when named evidence ties
them. The owner of a target is the layer of the cause that explains the client's first failure, not the layer
where the failure first shows. Each rule says what it needs; docs/findings.md lists them with the scenario that
shows each.

Causes must sit on the client's side of the flow (the client itself or a vantage on its path, or the server for
the server's own facts): a fault on a vantage the client's traffic never crosses explains nothing of it."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from bundle.analyze._common import VantageDocs
from bundle.analyze.nat import conntrack_rises
from bundle.analyze.roles import Flow
from bundle.models import Explanation, Finding, Layer, Severity
from bundle.models.counters import PolicyChain

# The client's symptoms a rule may explain, by kind.
NEW_FLOW_LOST = frozenset({"transport.connect_timeout", "transport.syn_sent_stuck", "capture.syn_unanswered",
                           "icmp.no_reply", "dns.timeout", "capture.dns_unanswered"})
CONNECT_FAILED = NEW_FLOW_LOST | {"transport.refused", "transport.unreachable", "capture.syn_rst",
                                  "capture.icmp_error", "route.no_route", "capture.blackhole"}
REFUSED = frozenset({"transport.refused", "capture.syn_rst"})


@dataclass(frozen=True)
class Case:
    """What a rule reads: the flow, every finding (indexed as in the report) and the vantages' documents."""

    flow: Flow
    findings: list[Finding]
    docs: dict[str, VantageDocs]

    def at(self, fids: frozenset[str] | set[str], vantages: set[str], addresses: set[str] | None = None,
           port: int | None = None) -> list[int]:
        """Indexes of findings with these ids, from these vantages, about the flow's addresses (or the given)."""
        want = addresses if addresses is not None else set(self.flow.addresses)
        out = []
        for i, f in enumerate(self.findings):
            if f.id not in fids or f.vantage not in vantages or f.target is None:
                continue
            if f.target.address in want or (f.target.name is not None and f.target.name in self.flow.names
                                             and f.target.address is None):
                if port is None or f.target.port in (None, port):
                    out.append(i)
        return out

    def causes(self, fid: str, vantages: set[str]) -> list[int]:
        return [i for i, f in enumerate(self.findings) if f.id == fid and f.vantage in vantages
                and f.severity is not Severity.INFO]

    def client(self) -> set[str]:
        return {self.flow.client} if self.flow.client else set()


Rule = Callable[[Case], list[Explanation]]


def _addr(f: Finding) -> str | None:
    return f.target.address if f.target is not None else None


def _explain(rule: str, cause: int, effects: list[int], because: str) -> list[Explanation]:
    effects = [e for e in dict.fromkeys(effects) if e != cause]
    return [Explanation(rule=rule, cause=cause, effects=effects, because=because)] if effects else []


def stale_dnat(case: Case) -> list[Explanation]:
    """service.stale_dnat (or reject_with_endpoints) for a frontend the client dials, on the client or its path,
    explains the client's failures toward the frontend and any vantage's failures toward the stale endpoints."""
    out: list[Explanation] = []
    for fid in ("service.stale_dnat", "service.reject_with_endpoints"):
        for c in case.causes(fid, case.flow.upstream()):
            cause = case.findings[c]
            front = _addr(cause)
            if front not in case.flow.addresses:
                continue
            gone = _stale_endpoints(case.docs.get(cause.vantage), front, cause.target.port if cause.target else None)
            effects = case.at(CONNECT_FAILED, case.client(), {front}) + case.at(
                frozenset({"route.no_route", "capture.icmp_error", "icmp.no_reply"}), set(case.docs), gone)
            out += _explain("stale_dnat" if fid == "service.stale_dnat" else "reject_with_endpoints", c, effects,
                            f"{cause.vantage} translates {front} to {', '.join(sorted(gone)) or 'a REJECT'}, which "
                            f"is not a ready endpoint")
    return out


def _stale_endpoints(doc: VantageDocs | None, front: str | None, port: int | None) -> set[str]:
    if doc is None or doc.nat is None:
        return set()
    return {e.address for s in doc.nat.services if s.address == front and (port is None or s.port == port)
            for e in s.endpoints}


DNS_LOST = frozenset({"dns.timeout", "capture.dns_unanswered"})


def policy_denied(case: Case) -> list[Explanation]:
    """policy.denied_egress / policy.denied_ingress, decided for the client pod's own flow, explain its lost new
    flows toward that Service's frontend or endpoints (or, for the cluster DNS, its unanswered lookups): most
    CNIs drop what a NetworkPolicy denies. Refusals are not explained: a REJECT-ing CNI is the rare one and a
    refusal has likelier causes."""
    out: list[Explanation] = []
    for fid in ("policy.denied_egress", "policy.denied_ingress"):
        for c in [i for i, f in enumerate(case.findings) if f.id == fid]:
            cause = case.findings[c]
            if cause.layer is Layer.DNS:
                effects = case.at(DNS_LOST, case.client())
            else:
                front = _addr(cause)
                if not case.flow.covers(front):
                    continue
                port = cause.target.port if cause.target else None
                effects = case.at(NEW_FLOW_LOST - DNS_LOST, case.client(), {front} if front else None, port)
            side = "the client's egress" if fid.endswith("egress") else "the endpoints' ingress"
            out += _explain("policy_denied_egress" if fid == "policy.denied_egress" else "policy_denied_ingress", c, effects,
                            f"the NetworkPolicies isolating {side} allow none of this flow")
    return out


def cni_policy_drops(case: Case) -> list[Explanation]:
    """policy.dataplane_drops on the client or its path, in a chain naming the interface that vantage routes the
    flow's address (or its endpoint) out of, explains the client's lost new flows to it: the CNI's policy
    enforcement dropped them there, whatever the API objects say (read without them too)."""
    out: list[Explanation] = []
    for c in case.causes("policy.dataplane_drops", case.flow.upstream()):
        doc = case.docs.get(case.findings[c].vantage)
        chain = _chain(doc, case.findings[c])
        if doc is None or doc.route is None or chain is None:
            continue
        toward = {a for a in set(case.flow.addresses) | set(case.flow.endpoints) if _out_dev(doc, a) in chain.interfaces}
        if not toward:
            continue
        effects = case.at(NEW_FLOW_LOST - DNS_LOST, case.client())
        out += _explain("cni_policy_drops", c, effects,
                        f"{case.findings[c].vantage}'s {chain.engine} policy chain {chain.chain} dropped packets out "
                        f"of {', '.join(sorted({str(_out_dev(doc, a)) for a in toward}))}, toward "
                        f"{', '.join(sorted(toward))}")
    return out


def _chain(doc: VantageDocs | None, f: Finding) -> PolicyChain | None:
    if doc is None or doc.counters is None:
        return None
    pointer = next((e.pointer for e in f.evidence if e.pointer.startswith("policy_chains[")), None)
    if pointer is None:
        return None
    w = doc.counters.policy_chains[int(pointer[len("policy_chains["):-1])]
    return w.end


def _out_dev(doc: VantageDocs, address: str) -> str | None:
    """The device the vantage's main table sends the address out of (longest prefix), or its lookup's."""
    if doc.route is None:
        return None
    for lk in doc.route.lookups:
        if lk.target == address and lk.source is None and lk.iif is None and lk.ok:
            return lk.dev
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    best: tuple[int, str | None] | None = None
    for r in doc.route.routes:
        try:
            net = ipaddress.ip_network(r.dst, strict=False)
        except ValueError:
            continue
        if r.table == 254 and net.version == ip.version and ip in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, r.dev)
    return best[1] if best else None


def conntrack_exhaustion(case: Case) -> list[Explanation]:
    """A conntrack table full or dropping new flows on the client or its path explains the client's new flows
    that get no answer (SYNs, pings and DNS queries alike), never refusals: those got through."""
    out: list[Explanation] = []
    for fid in ("service.conntrack_dropping", "service.conntrack_near_max"):
        for c in case.causes(fid, case.flow.upstream()):
            if case.findings[c].severity is not Severity.CRITICAL:
                continue
            if fid == "service.conntrack_dropping" and not _table_refused(case.docs.get(case.findings[c].vantage)):
                # insert_failed alone is the clash race of two packets of one flow (UDP DNS's A and AAAA): it
                # loses a query now and then, never every SYN of a connect (TCP retransmits through it)
                out += _explain("conntrack_exhaustion", c, case.at(DNS_LOST, case.client()),
                                f"{case.findings[c].vantage}'s conntrack lost insert races (insert_failed): the "
                                f"UDP DNS queries of one lookup clash")
                continue
            effects = case.at(NEW_FLOW_LOST, case.client())
            out += _explain("conntrack_exhaustion", c, effects,
                            f"every new flow through {case.findings[c].vantage} needs a conntrack entry, and its "
                            f"table refuses new ones")
    return out


def _table_refused(doc: VantageDocs | None) -> bool:
    """Whether the vantage's conntrack refused new entries for want of room (drop, early_drop rose)."""
    if doc is None or doc.nat is None or len(doc.nat.samples) < 2:
        return True  # nothing to tell the race from a full table: as before
    return bool({"drop", "early_drop"} & set(conntrack_rises(doc.nat)))


def rp_filter(case: Case) -> list[Explanation]:
    """Reverse-path-filter drops counted (rising) on the client or its path, where strict rp_filter is in force,
    explain the client's unanswered handshakes and queries: the replies come back on another interface."""
    out: list[Explanation] = []
    for c in case.causes("counters.rp_filter_drops", case.flow.upstream()):
        doc = case.docs.get(case.findings[c].vantage)
        if doc is None or doc.route is None:
            continue
        # the replies are dropped where they arrive on a strict interface that is not the route back to their
        # source: strict rp_filter on the flow's own egress alone drops none of them
        flow_to = set(case.flow.addresses) | set(case.flow.endpoints)
        egress = {lk.dev for lk in doc.route.lookups if lk.ok and lk.dev and lk.target in flow_to}
        strict = [s.name for s in doc.route.sysctls.interfaces
                  if s.rp_filter_effective == 1 and s.name != "lo" and s.name not in egress]
        if not strict:
            continue
        effects = case.at(NEW_FLOW_LOST, case.client())
        out += _explain("rp_filter_asymmetric", c, effects,
                        f"{case.findings[c].vantage} filters strictly on {', '.join(strict)} and counted reverse-path "
                        f"drops during the window")
    return out


def mtu_blackhole(case: Case) -> list[Explanation]:
    """A path-MTU blackhole toward an address explains stalled full-size transfers to it (or to a frontend
    translated to it) and their retransmissions."""
    out: list[Explanation] = []
    for c in case.causes("mtu.blackhole", case.flow.upstream()):
        dst = _addr(case.findings[c])
        if not case.flow.covers(dst):
            continue
        effects = case.at(frozenset({"capture.blackhole", "transport.connect_timeout"}), case.client(),
                          set(case.flow.addresses) | {dst} if dst else None)
        out += _explain("mtu_blackhole", c, effects, f"packets larger than the path MTU to {dst} vanish")
    return out


def stale_neighbor(case: Case) -> list[Explanation]:
    """A neighbor entry with a MAC nobody has, for the flow's next hop on the client or its path, explains the
    client's unanswered packets to the target."""
    out: list[Explanation] = []
    for c in case.causes("neighbor.stale_mac", case.flow.upstream()):
        if case.findings[c].severity is not Severity.CRITICAL:
            continue
        dst = _addr(case.findings[c])
        if not case.flow.covers(dst):
            continue
        out += _explain("stale_neighbor", c, case.at(NEW_FLOW_LOST, case.client(), {dst} if dst else None),
                        f"{case.findings[c].vantage} sends the frames for {dst} to a MAC nobody has")
    return out


def no_route(case: Case) -> list[Explanation]:
    """A missing (or refusing) route on the client or a vantage on its path explains everything behind it toward
    that address (forwarded packets meet the same table, policy rules aside)."""
    out: list[Explanation] = []
    for c in case.at(frozenset({"route.no_route"}), case.flow.upstream()):
        dst = _addr(case.findings[c])
        doc = case.docs.get(case.findings[c].vantage)
        if doc is not None and doc.nat is not None and any(s.address == dst for s in doc.nat.services):
            continue  # a frontend this vantage translates: forwarded packets are DNAT-ed before any route
        effects = case.at(CONNECT_FAILED - {"route.no_route"}, case.client(), {dst} if dst else None)
        out += _explain("no_route", c, effects, f"{case.findings[c].vantage} has no usable route to {dst}")
    return out


def listener(case: Case) -> list[Explanation]:
    """The server's own fact — nothing listens on the port, or only on loopback — explains the client's refusals."""
    out: list[Explanation] = []
    servers = set(case.flow.servers) | {v for v in case.client() if v in case.docs and any(
        case.docs[v].holds(a) for a in case.flow.addresses)}  # a client that holds the target is its server too
    for fid in ("transport.no_listener", "transport.loopback_only"):
        for c in case.causes(fid, servers):
            f = case.findings[c]
            port = f.target.port if f.target else None
            effects = case.at(REFUSED, case.client(), set(case.flow.addresses) | set(case.flow.endpoints), port)
            out += _explain("no_listener" if fid == "transport.no_listener" else "loopback_only", c, effects,
                            f"the server {f.vantage} does not accept on port {port}")
    return out


def dead_answer(case: Case) -> list[Explanation]:
    """dns.dead_answer (the client's resolver answered an address nothing holds, and a route on the client's
    side refuses it) explains the connect and route failures toward that address."""
    out: list[Explanation] = []
    for c in case.causes("dns.dead_answer", case.client()):
        dst = _addr(case.findings[c])
        effects = case.at(CONNECT_FAILED, case.flow.upstream(), {dst} if dst else None)
        out += _explain("dead_answer", c, effects, f"the name answers {dst}, which nothing holds any more")
    return out


# In order of precedence: where two rules explain one symptom, the earlier one's cause owns it.
RULES: tuple[Rule, ...] = (dead_answer, stale_dnat, policy_denied, cni_policy_drops, conntrack_exhaustion, rp_filter,
                           mtu_blackhole, stale_neighbor, listener, no_route)


def explanations(case: Case) -> list[Explanation]:
    out: list[Explanation] = []
    for rule in RULES:
        out += rule(case)
    return out
