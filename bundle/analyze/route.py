"""Findings of the ICMP/route layer, from one vantage's route slice."""

from __future__ import annotations

import shlex

from bundle.models import Evidence, Finding, NeighborState, RouteSlice, Severity, SweepStatus, Vantage, VantageKind

_BAD_NEIGHBOR = {NeighborState.FAILED, NeighborState.INCOMPLETE}


def _in(vantage: Vantage, command: str) -> str:
    """The command as the operator would run it in that vantage (read-only)."""
    if vantage.kind is VantageKind.NETNS_NAME and vantage.ref:
        return f"ip netns exec {shlex.quote(vantage.ref)} {command}"
    if vantage.kind is VantageKind.NETNS_PID and vantage.ref:
        return f"nsenter -t {shlex.quote(vantage.ref)} -n {command}"
    return command


def route_findings(vantage: Vantage, doc: RouteSlice) -> list[Finding]:
    member = f"vantages/{vantage.id}/route.json"
    out: list[Finding] = []
    for i, lk in enumerate(doc.lookups):
        if not lk.ok:
            out.append(Finding(
                id="route.no_route", severity=Severity.CRITICAL, layer="route", vantage=vantage.id, target=lk.target,
                summary=f"The kernel in {vantage.id} has no usable route to {lk.target}: {lk.error}.",
                evidence=[Evidence(member=member, pointer=f"lookups[{i}]")],
                next_command=_in(vantage, f"ip route get {lk.target}"),
            ))
    for i, sw in enumerate(doc.mtu_sweeps):
        if sw.status is SweepStatus.FOUND and sw.path_mtu and sw.egress_mtu and sw.path_mtu < sw.egress_mtu:
            if sw.frag_needed is None:
                out.append(Finding(
                    id="mtu.blackhole", severity=Severity.CRITICAL, layer="route", vantage=vantage.id, target=sw.target,
                    summary=(f"From {vantage.id}, packets to {sw.target} larger than {sw.path_mtu} bytes vanish "
                             f"(DF echo of {sw.largest_pass} bytes passes, {sw.smallest_fail} gets no answer) while "
                             f"the egress link {sw.egress_dev} has MTU {sw.egress_mtu}, and no ICMP "
                             f"'fragmentation needed' arrives: a path-MTU blackhole."),
                    evidence=[Evidence(member=member, pointer=f"mtu_sweeps[{i}]")],
                    next_command=_in(vantage, f"ping -c 2 -M do -s {sw.smallest_fail} {sw.target}"),
                ))
            else:
                out.append(Finding(
                    id="mtu.reduced", severity=Severity.INFO, layer="route", vantage=vantage.id, target=sw.target,
                    summary=(f"The path from {vantage.id} to {sw.target} carries at most {sw.path_mtu} bytes; "
                             f"{sw.frag_needed.source} says so with 'fragmentation needed' (PMTU discovery works)."),
                    evidence=[Evidence(member=member, pointer=f"mtu_sweeps[{i}]")],
                    next_command=_in(vantage, f"tracepath -n {sw.target}"),
                ))
    for i, ping in enumerate(doc.pings):
        if ping.unavailable is None and ping.sent and not ping.received:
            why = "; ".join(f"{e.description} from {e.source}" for e in ping.errors) or "no reply"
            out.append(Finding(
                id="icmp.no_reply", severity=Severity.WARNING, layer="route", vantage=vantage.id, target=ping.target,
                summary=(f"ICMP echo from {vantage.id} to {ping.target} failed ({why}); ICMP may be filtered, "
                         f"so this alone does not prove the path is down."),
                evidence=[Evidence(member=member, pointer=f"pings[{i}]")],
                next_command=_in(vantage, f"ping -c 2 {ping.target}"),
            ))
    for i, n in enumerate(doc.neighbors):
        if _BAD_NEIGHBOR & set(n.states):
            out.append(Finding(
                id="neighbor.failed", severity=Severity.WARNING, layer="route", vantage=vantage.id, target=n.dst,
                summary=f"Neighbor {n.dst} on {n.dev} in {vantage.id} is {'/'.join(s.value for s in n.states)}: "
                        f"frames to it are not delivered.",
                evidence=[Evidence(member=member, pointer=f"neighbors[{i}]")],
                next_command=_in(vantage, f"ip neigh show dev {n.dev}"),
            ))
    egress = {lk.dev for lk in doc.lookups if lk.ok and lk.dev}
    for i, s in enumerate(doc.sysctls.interfaces):
        if s.name in egress and s.rp_filter_effective == 1:
            out.append(Finding(
                id="rp_filter.strict", severity=Severity.INFO, layer="route", vantage=vantage.id,
                summary=f"Strict reverse-path filtering is in force on {s.name} in {vantage.id}: replies arriving "
                        f"on another interface (asymmetric routing) are dropped silently.",
                evidence=[Evidence(member=member, pointer=f"sysctls.interfaces[{i}]")],
                next_command=_in(vantage, "nstat -az TcpExtIPReversePathFilter"),
            ))
    return out
