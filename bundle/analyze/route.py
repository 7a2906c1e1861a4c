"""Findings of the ICMP/route layer, from one vantage's route slice."""

from __future__ import annotations

import shlex

from bundle.analyze._common import FindingList, about, in_vantage
from bundle.models import (
    STATIC_NEIGHBOR_STATES,
    UNRESOLVED_NEIGHBOR_STATES,
    Evidence,
    Finding,
    Layer,
    Link,
    NeighborState,
    RouteSlice,
    Severity,
    SweepStatus,
    Vantage,
)


def route_findings(vantage: Vantage, doc: RouteSlice, endpoints: frozenset[str] = frozenset()) -> list[Finding]:
    """`endpoints`: the addresses the targets' Service frontends are translated to (a flow's next hop may be
    one of them, not the frontend's gateway)."""
    found = FindingList(Layer.ROUTE, vantage, f"vantages/{vantage.id}/route.json")
    add = found.add

    for i, lk in enumerate(doc.lookups):
        if not lk.ok:
            add("route.no_route", Severity.CRITICAL, about(lk.target),
                f"The kernel in {vantage.id} has no usable route to {lk.target}: {lk.error}.",
                f"lookups[{i}]", f"ip route get {lk.target}")
    for i, sw in enumerate(doc.mtu_sweeps):
        if not (sw.status is SweepStatus.FOUND and sw.path_mtu and sw.egress_mtu and sw.path_mtu < sw.egress_mtu):
            continue
        if sw.frag_needed is None:
            add("mtu.blackhole", Severity.CRITICAL, about(sw.target),
                f"From {vantage.id}, packets to {sw.target} larger than {sw.path_mtu} bytes vanish (DF echo of "
                f"{sw.largest_pass} bytes passes, {sw.smallest_fail} gets no answer) while the egress link "
                f"{sw.egress_dev} has MTU {sw.egress_mtu}, and no ICMP 'fragmentation needed' arrives: "
                f"a path-MTU blackhole.",
                f"mtu_sweeps[{i}]", f"ping -c 2 -M do -s {sw.smallest_fail} {sw.target}")
        else:
            add("mtu.reduced", Severity.INFO, about(sw.target),
                f"The path from {vantage.id} to {sw.target} carries at most {sw.path_mtu} bytes; "
                f"{sw.frag_needed.source} says so with 'fragmentation needed' (PMTU discovery works).",
                f"mtu_sweeps[{i}]", f"tracepath -n {sw.target}")
    for i, ping in enumerate(doc.pings):
        if ping.unavailable is None and ping.sent and not ping.received:
            why = "; ".join(f"{e.description} from {e.source}" for e in ping.errors) or "no reply"
            add("icmp.no_reply", Severity.WARNING, about(ping.target),
                f"ICMP echo from {vantage.id} to {ping.target} failed ({why}); ICMP may be filtered, "
                f"so this alone does not prove the path is down.",
                f"pings[{i}]", f"ping -c 2 {ping.target}")
    # a target's next hop (its gateway, or the target itself on a connected route), as this vantage routes it
    hops = {(lk.gateway or lk.target, lk.dev) for lk in doc.lookups if lk.ok and lk.dev}
    for i, n in enumerate(doc.neighbors):
        if UNRESOLVED_NEIGHBOR_STATES & set(n.states):
            on_path = (n.dst, n.dev) in hops or n.dst in endpoints
            # elsewhere an unresolved entry is everyday residue (a deleted pod's address, a probe to a gone host)
            add("neighbor.failed", Severity.WARNING if on_path else Severity.INFO, about(n.dst),
                f"Neighbor {n.dst} on {n.dev} in {vantage.id} is {'/'.join(s.value for s in n.states)}: "
                f"frames to it are not delivered" + (f" — it is a target's next hop." if on_path else
                                                     " (no target's next hop)."),
                f"neighbors[{i}]", f"ip neigh show dev {shlex.quote(n.dev)}")
    egress = {lk.dev for lk in doc.lookups if lk.ok and lk.dev}
    for i, s in enumerate(doc.sysctls.interfaces):
        if s.name in egress and s.rp_filter_effective == 1:
            add("rp_filter.strict", Severity.INFO, None,
                f"Strict reverse-path filtering is in force on {s.name} in {vantage.id}: replies arriving "
                f"on another interface (asymmetric routing) are dropped silently.",
                f"sysctls.interfaces[{i}]", "nstat -az TcpExtIPReversePathFilter")
    return found.items


# States in which the kernel sends to the cached MAC without asking again: static entries, and one just
# confirmed (which, for a MAC that is not the owner's, means another host answered for the address).
_TRUSTED = STATIC_NEIGHBOR_STATES | {NeighborState.REACHABLE}


def neighbor_findings(routes: list[tuple[Vantage, RouteSlice]]) -> list[Finding]:
    """Neighbor entries whose MAC is not that of the interface holding the address, where both ends were
    collected: frames for that address go to a MAC nobody on the link has (a static entry left from before
    the peer's NIC or pod changed, or another host answering for it). Across vantages, so not per slice.
    Proxy ARP is ruled out: an entry whose MAC is any collected interface's is not reported."""
    owners: dict[str, list[tuple[Vantage, Link, int]]] = {}
    macs: set[str] = set()
    for v, doc in routes:
        by_index = {lk.index: (i, lk) for i, lk in enumerate(doc.links)}
        macs |= {lk.address.lower() for lk in doc.links if lk.address}
        for a in doc.addresses:
            i, lk = by_index.get(a.ifindex, (-1, None))
            if lk is not None and lk.address and lk.address.strip("0:"):
                owners.setdefault(a.address, []).append((v, lk, i))
    out: list[Finding] = []
    for v, doc in routes:
        for i, n in enumerate(doc.neighbors):
            held = owners.get(n.dst, [])
            if not n.lladdr or len(held) != 1:  # unknown or ambiguous owner (an anycast or duplicated address)
                continue
            ov, olink, li = held[0]
            mac = n.lladdr.lower()
            if ov.id == v.id or mac == (olink.address or "").lower() or mac in macs:
                continue
            states = set(n.states)
            trusted = bool(_TRUSTED & states)
            why = ("a static entry the kernel never re-resolves" if states & STATIC_NEIGHBOR_STATES
                   else "confirmed recently, so another host answers for this address (an address conflict?)"
                   if NeighborState.REACHABLE in states
                   else "a cached entry the kernel re-checks on its next use")
            users = [lk.target for lk in doc.lookups
                     if lk.ok and lk.dev == n.dev and (lk.gateway or lk.target) == n.dst]  # its next hop
            for target in users or [n.dst]:
                via = f" (the next hop to {target})" if target != n.dst else ""
                out.append(Finding(
                    id="neighbor.stale_mac", severity=Severity.CRITICAL if trusted and users else Severity.WARNING,
                    layer=Layer.ROUTE, vantage=v.id, target=about(target),
                    summary=f"In {v.id}, neighbor {n.dst}{via} on {n.dev} is {'/'.join(s.value for s in n.states)} "
                            f"at {n.lladdr}, but {n.dst} is on {olink.name} in {ov.id}, whose MAC is "
                            f"{olink.address}: frames for it go to a MAC nobody there has — {why}.",
                    evidence=[Evidence(member=f"vantages/{v.id}/route.json", pointer=f"neighbors[{i}]"),
                              Evidence(member=f"vantages/{ov.id}/route.json", pointer=f"links[{li}]")],
                    next_command=in_vantage(v, f"ip neigh show {shlex.quote(n.dst)} dev {shlex.quote(n.dev)}")))
    return out
