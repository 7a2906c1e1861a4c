"""Findings from the kernel's counters of one vantage: the drops it counts over the window and nobody sees.

A counter rising proves that the kernel dropped (or refused) something in this netns during the window; it does
not say whose packet. Our own probes raise some counters themselves (a probe to a closed port, a SYN that times
out), so those are at most info here; the explanation rules tie a rising counter to a client's failure only with
more evidence (rp_filter: strict on the vantage, and the vantage forwards the client's traffic)."""

from __future__ import annotations

from dataclasses import dataclass

from bundle.analyze._common import FindingList
from bundle.models import CountersSlice, Finding, Layer, Severity, Vantage


@dataclass(frozen=True)
class CounterRule:
    fid: str
    counters: tuple[str, ...]
    layer: Layer
    severity: Severity
    meaning: str
    command: str


RULES = (
    CounterRule("counters.rp_filter_drops", ("TcpExtIPReversePathFilter",), Layer.ROUTE, Severity.WARNING,
                "packets dropped by reverse-path filtering (a reply arriving on another interface than the route "
                "back to its sender: asymmetric routing under strict rp_filter)", "nstat -az TcpExtIPReversePathFilter"),
    CounterRule("counters.listen_overflows", ("TcpExtListenOverflows", "TcpExtListenDrops"), Layer.TRANSPORT,
                Severity.WARNING, "connection attempts dropped because a listener's accept queue was full (the "
                "application does not accept fast enough)", "ss -tlnp; nstat -az TcpExtListenOverflows"),
    CounterRule("counters.no_route", ("IpInNoRoutes", "Ip6InNoRoutes", "IpExtInNoRoutes"), Layer.ROUTE,
                Severity.WARNING, "received packets dropped for want of a route", "ip route; nstat -az IpInNoRoutes"),
    CounterRule("counters.udp_rcvbuf", ("UdpRcvbufErrors", "Udp6RcvbufErrors"), Layer.TRANSPORT, Severity.WARNING,
                "UDP datagrams dropped because a socket's receive buffer was full", "ss -uamn; nstat -az UdpRcvbufErrors"),
    CounterRule("counters.backlog_drops", ("TcpExtTCPBacklogDrop", "TcpExtTCPRcvQDrop"), Layer.TRANSPORT,
                Severity.WARNING, "TCP segments dropped at a full socket backlog or receive queue",
                "nstat -az TcpExtTCPBacklogDrop TcpExtTCPRcvQDrop"),
    # Our own probes raise these (a SYN to a dropped path times out; a refused UDP probe): info only.
    CounterRule("counters.tcp_timeouts", ("TcpExtTCPTimeouts", "TcpExtTCPSynRetrans"), Layer.TRANSPORT,
                Severity.INFO, "TCP retransmission timeouts and SYN retransmissions (the probes' own count too)",
                "nstat -az TcpExtTCPTimeouts TcpExtTCPSynRetrans"),
    CounterRule("counters.udp_no_port", ("UdpNoPorts", "Udp6NoPorts"), Layer.TRANSPORT, Severity.INFO,
                "UDP datagrams to a port nothing listens on", "nstat -az UdpNoPorts"),
    CounterRule("counters.unreachables_sent", ("IcmpOutDestUnreachs", "Icmp6OutDestUnreachs"), Layer.ROUTE,
                Severity.INFO, "ICMP destination-unreachable messages sent by this netns (rejects, no route, no "
                "port; kube-proxy's REJECT rules send them for Services without endpoints)",
                "nstat -az IcmpOutDestUnreachs"),
)


def rising(doc: CountersSlice, names: tuple[str, ...]) -> dict[str, int]:
    """The counters among `names` that rose over the window, with by how much."""
    return {n: doc.delta[n] for n in names if doc.delta.get(n, 0) > 0}


def counter_findings(vantage: Vantage, doc: CountersSlice) -> list[Finding]:
    out: list[Finding] = []
    for rule in RULES:
        up = rising(doc, rule.counters)
        if not up:
            continue
        found = FindingList(rule.layer, vantage, f"vantages/{vantage.id}/counters.json")
        what = ", ".join(f"{n} +{d}" for n, d in up.items())
        found.add(rule.fid, rule.severity, None,
                  f"In {vantage.id}, over the {doc.window_s:.1f} s window: {what} — {rule.meaning}.",
                  "delta." + next(iter(up)), rule.command)
        out += found.items
    return out
