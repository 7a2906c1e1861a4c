"""Findings of the transport layer: listeners, handshakes and socket-state trends, across vantages."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

from bundle.analyze._common import about, in_vantage
from bundle.models import (
    BindScope,
    ConnectOutcome,
    Evidence,
    Finding,
    FindingTarget,
    Layer,
    RouteSlice,
    ServiceEntry,
    Severity,
    SocketsSlice,
    Target,
    Vantage,
    endpoint_spec,
)

CLOSE_WAIT_THRESHOLD = 16
SYN_SENT_RISING_MIN = 3


@dataclass(frozen=True)
class VantageEvidence:
    vantage: Vantage
    route: RouteSlice | None
    sockets: SocketsSlice | None
    frontends: tuple[ServiceEntry, ...] = ()  # what this vantage's dataplane translates (its NAT slice)

    def translates(self, address: str | None, port: int) -> ServiceEntry | None:
        """The Service frontend this vantage's kernel rewrites address:port to (a ClusterIP on IPVS's kube-ipvs0,
        a node port on any of its addresses): no socket is meant to listen there."""
        return next((s for s in self.frontends if s.port == port and s.protocol.lower() == "tcp"
                     and (_same_ip(s.address, address) if s.address else self.owns(address))), None)

    def address_of(self, target: Target) -> str | None:
        """An IP target's address, or what this vantage's resolver answered for a name target."""
        if target.address is not None:
            return target.address
        answers = self.vantage.resolved.get(target.name or "", [])
        return answers[0] if answers else None

    def owns(self, address: str | None) -> bool:
        if address is None:
            return False
        if self.route is not None:
            return any(a.address == address for a in self.route.addresses)
        return False


def _name(spec: str) -> str | None:
    """The name of a probe's 'name:port' target, None for an address target."""
    host = spec.rsplit(":", 1)[0] if not spec.startswith("[") else ""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        return host or None


def transport_findings(evidence: list[VantageEvidence], targets: list[Target]) -> list[Finding]:
    out: list[Finding] = []

    def add(fid: str, severity: Severity, v: Vantage, target: FindingTarget | None, summary: str, pointer: str,
            command: str) -> None:
        out.append(Finding(id=fid, severity=severity, layer=Layer.TRANSPORT, vantage=v.id, target=target,
                           summary=summary,
                           evidence=[Evidence(member=f"vantages/{v.id}/sockets.json", pointer=pointer)],
                           next_command=in_vantage(v, command)))

    # What each connect probe saw.
    for ev in evidence:
        if ev.sockets is None:
            continue
        v = ev.vantage
        for i, p in enumerate(ev.sockets.probes):
            if p.target.startswith("loopback "):
                continue
            if p.outcome is ConnectOutcome.REFUSED:
                add("transport.refused", Severity.CRITICAL, v, about(p.address, p.port, _name(p.target)),
                    f"From {v.id}, a TCP connect to {p.target} was refused (RST): nothing accepts on port "
                    f"{p.port} at {p.address}.", f"probes[{i}]", f"ss -tan dst {endpoint_spec(p.address, p.port)}")
            elif p.outcome is ConnectOutcome.TIMEOUT:
                add("transport.connect_timeout", Severity.CRITICAL, v, about(p.address, p.port, _name(p.target)),
                    f"From {v.id}, TCP connects to {p.target} got no answer within {p.timeout_s:g} s "
                    f"({len(p.attempts)} attempts): the SYN is dropped before any application sees it.",
                    f"probes[{i}]", f"ss -tan state syn-sent dst {p.address}")
            elif p.outcome in (ConnectOutcome.UNREACHABLE, ConnectOutcome.PROHIBITED):
                detail = next((a.detail for a in p.attempts if a.outcome is p.outcome and a.detail), p.outcome.value)
                add("transport.unreachable", Severity.CRITICAL, v, about(p.address, p.port, _name(p.target)),
                    f"From {v.id}, TCP connects to {p.target} fail at once: {detail}.", f"probes[{i}]",
                    f"ip route get {p.address}")

    # Listeners where the target lives.
    for t in targets:
        if t.port is None:
            continue
        for ev in evidence:
            if ev.sockets is None:
                continue
            on_port = [(i, l) for i, l in enumerate(ev.sockets.listeners) if l.protocol == "tcp" and l.lport == t.port]
            # a name target: the address the clients dial, as any vantage's resolver answered it
            answers = [a for e in evidence for a in e.vantage.resolved.get(t.name or "", [])]
            address = next((a for a in answers if ev.owns(a)), ev.address_of(t))
            if ev.translates(address, t.port):
                continue
            # a target that is itself the loopback address (a sidecar, a local proxy) is served by its listener
            reachable = [l for _, l in on_port if l.scope is not BindScope.LOOPBACK or _same_ip(l.local, address)]
            loopback = [(i, l) for i, l in on_port if l.scope is BindScope.LOOPBACK and not _same_ip(l.local, address)]
            owner = ev.owns(address)
            if loopback and not reachable and (owner or not any(e.owns(e.address_of(t)) for e in evidence)):
                i, lst = loopback[0]
                check = next((p for p in ev.sockets.probes if p.target.startswith("loopback ")
                              and p.port == t.port), None)
                inside = (f" An in-netns connect to {lst.local}:{t.port} {check.outcome.value}." if check else "")
                add("transport.loopback_only", Severity.CRITICAL, ev.vantage, about(address, t.port, t.name),
                    f"In {ev.vantage.id} the listener on port {t.port} is bound to {lst.local} only: it is reachable "
                    f"from inside that network namespace alone (the sidecar case), not at {address}.{inside}",
                    f"listeners[{i}]", f"ss -tlnp sport = :{t.port}")
            elif owner and not on_port:
                add("transport.no_listener", Severity.CRITICAL, ev.vantage, about(address, t.port, t.name),
                    f"{ev.vantage.id} holds {address} but has no TCP socket listening on port {t.port}.",
                    "listeners", f"ss -tlnp sport = :{t.port}")

    # Trends.
    for ev in evidence:
        s = ev.sockets
        if s is None or not s.samples:
            continue
        v = ev.vantage
        first, last = s.samples[0], s.samples[-1]
        for t in targets:
            per = [smp.to_targets.get(t.spec, {}) for smp in s.samples]
            syn = [c.get("SYN-SENT", 0) for c in per]
            estab = [c.get("ESTAB", 0) for c in per]
            if all(n > 0 for n in syn) and not any(estab):
                rising = syn[-1] > syn[0]
                add("transport.syn_sent_stuck", Severity.CRITICAL, v, about(ev.address_of(t), t.port, t.name),
                    f"In {v.id}, connections to {t.spec} sit in SYN-SENT ({' -> '.join(map(str, syn))} over "
                    f"{last.at_s:g} s{', rising' if rising else ''}) and none is ESTABLISHED: handshakes do not "
                    f"complete (drops or no answer before the application).",
                    "samples", f"ss -tan state syn-sent dst {ev.address_of(t) or t.spec}")
        syn_all = (first.tcp.get("SYN-SENT", 0), last.tcp.get("SYN-SENT", 0))
        if syn_all[1] - syn_all[0] >= SYN_SENT_RISING_MIN and not any(f.id == "transport.syn_sent_stuck"
                                                                       and f.vantage == v.id for f in out):
            add("transport.syn_sent_rising", Severity.WARNING, v, None,
                f"In {v.id}, SYN-SENT sockets rose from {syn_all[0]} to {syn_all[1]} in {last.at_s:g} s.",
                "samples", "ss -tan state syn-sent")
        cw = last.tcp.get("CLOSE-WAIT", 0)
        if cw >= CLOSE_WAIT_THRESHOLD:
            owners = Counter(s.close_wait_owners) if s.close_wait_owners is not None else Counter(  # 1.0: rows
                o.command for sock in s.sockets if sock.state == "CLOSE-WAIT" for o in sock.owners)
            who = ", ".join(f"{c} ({n})" for c, n in owners.most_common(3)) or "owners unknown"
            trend = f"{first.tcp.get('CLOSE-WAIT', 0)} -> {cw}"
            add("transport.close_wait", Severity.WARNING, v, None,
                f"In {v.id}, {cw} TCP sockets are in CLOSE-WAIT ({trend}): the peer closed and the application "
                f"has not. Held by: {who}.", "samples", "ss -tanp state close-wait")
        hidden = s.owners_hidden if s.owners_hidden is not None else sum(  # a 1.0 bundle: count its rows
            1 for sock in s.sockets if sock.owner_unknown and sock.owner_unknown.unavailable.value == "not_permitted")
        if hidden:
            add("transport.owners_hidden", Severity.INFO, v, None,
                f"In {v.id}, the owners of {hidden} sockets are hidden: {s.owner_scan.denied} of "
                f"{s.owner_scan.processes} processes could not be read as uid {s.owner_scan.uid}. An empty owner "
                f"is not 'no process'.", "owner_scan",
                # as root already, hidden owners live in another PID namespace: their inode and uid still show
                "ss -tanpe" if s.owner_scan.uid == 0 else "sudo ss -tanp")
    return out


def _same_ip(a: str, b: str | None) -> bool:
    try:
        return b is not None and ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return False
