"""Findings of the ICMP/route layer, from one vantage's route slice."""

from __future__ import annotations

import shlex

from bundle.analyze._common import FindingList
from bundle.models import Finding, NeighborState, RouteSlice, Severity, SweepStatus, Vantage

_BAD_NEIGHBOR = {NeighborState.FAILED, NeighborState.INCOMPLETE}


def route_findings(vantage: Vantage, doc: RouteSlice) -> list[Finding]:
    found = FindingList("route", vantage, f"vantages/{vantage.id}/route.json")
    add = found.add

    for i, lk in enumerate(doc.lookups):
        if not lk.ok:
            add("route.no_route", Severity.CRITICAL, lk.target,
                f"The kernel in {vantage.id} has no usable route to {lk.target}: {lk.error}.",
                f"lookups[{i}]", f"ip route get {lk.target}")
    for i, sw in enumerate(doc.mtu_sweeps):
        if not (sw.status is SweepStatus.FOUND and sw.path_mtu and sw.egress_mtu and sw.path_mtu < sw.egress_mtu):
            continue
        if sw.frag_needed is None:
            add("mtu.blackhole", Severity.CRITICAL, sw.target,
                f"From {vantage.id}, packets to {sw.target} larger than {sw.path_mtu} bytes vanish (DF echo of "
                f"{sw.largest_pass} bytes passes, {sw.smallest_fail} gets no answer) while the egress link "
                f"{sw.egress_dev} has MTU {sw.egress_mtu}, and no ICMP 'fragmentation needed' arrives: "
                f"a path-MTU blackhole.",
                f"mtu_sweeps[{i}]", f"ping -c 2 -M do -s {sw.smallest_fail} {sw.target}")
        else:
            add("mtu.reduced", Severity.INFO, sw.target,
                f"The path from {vantage.id} to {sw.target} carries at most {sw.path_mtu} bytes; "
                f"{sw.frag_needed.source} says so with 'fragmentation needed' (PMTU discovery works).",
                f"mtu_sweeps[{i}]", f"tracepath -n {sw.target}")
    for i, ping in enumerate(doc.pings):
        if ping.unavailable is None and ping.sent and not ping.received:
            why = "; ".join(f"{e.description} from {e.source}" for e in ping.errors) or "no reply"
            add("icmp.no_reply", Severity.WARNING, ping.target,
                f"ICMP echo from {vantage.id} to {ping.target} failed ({why}); ICMP may be filtered, "
                f"so this alone does not prove the path is down.",
                f"pings[{i}]", f"ping -c 2 {ping.target}")
    for i, n in enumerate(doc.neighbors):
        if _BAD_NEIGHBOR & set(n.states):
            add("neighbor.failed", Severity.WARNING, n.dst,
                f"Neighbor {n.dst} on {n.dev} in {vantage.id} is {'/'.join(s.value for s in n.states)}: "
                f"frames to it are not delivered.",
                f"neighbors[{i}]", f"ip neigh show dev {shlex.quote(n.dev)}")
    egress = {lk.dev for lk in doc.lookups if lk.ok and lk.dev}
    for i, s in enumerate(doc.sysctls.interfaces):
        if s.name in egress and s.rp_filter_effective == 1:
            add("rp_filter.strict", Severity.INFO, None,
                f"Strict reverse-path filtering is in force on {s.name} in {vantage.id}: replies arriving "
                f"on another interface (asymmetric routing) are dropped silently.",
                f"sysctls.interfaces[{i}]", "nstat -az TcpExtIPReversePathFilter")
    return found.items
