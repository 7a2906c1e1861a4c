"""Findings from captures: what the packets themselves prove, per vantage (or per operator-supplied file)."""

from __future__ import annotations

from dataclasses import dataclass

from bundle.analyze._common import about, split_endpoint
from bundle.models import (CaptureAnalysis, CaptureRun, Evidence, Finding, FindingTarget, Handshake, Layer, Severity,
                           TcpFlow)

MAX_PER_KIND = 5
# Linux's first SYN retransmission comes a second after the SYN (TCP_TIMEOUT_INIT)
FIRST_RTO_NS = 1_000_000_000


def _at(endpoint: str | None) -> FindingTarget | None:
    address, port = split_endpoint(endpoint)
    return about(address, port) if address else None


def _quoted_target(quoted: str | None) -> FindingTarget | None:
    """The destination of the flow an ICMP error quotes ("tcp A:p > B:q"); only TCP and UDP carry ports there
    (a quoted ICMP echo's 'ports' are its type, code and checksum)."""
    if not quoted or " > " not in quoted:
        return None
    target = _at(quoted.rsplit(" > ", 1)[-1].split()[0])
    if target is not None and quoted.split(" ", 1)[0] not in ("tcp", "udp"):
        target.port = None
    return target


@dataclass(frozen=True)
class OwnProbes:
    """The path walk's own packets (TTL-limited SYNs and echoes, and the 'time exceeded' they draw): never
    evidence about the network, so the capture's findings leave them out."""

    icmp_ids: frozenset[int] = frozenset()
    tcp_sports: frozenset[int] = frozenset()

    def sent(self, client: str) -> bool:
        return split_endpoint(client)[1] in self.tcp_sports

    def quoted(self, quoted: str | None) -> bool:
        if not quoted:
            return False
        parts = quoted.split()
        if parts[0] == "icmp" and "id" in parts:
            return int(parts[parts.index("id") + 1]) in self.icmp_ids
        return parts[0] == "tcp" and len(parts) > 1 and self.sent(parts[1])


def capture_end_ns(analysis: CaptureAnalysis, run: CaptureRun | None) -> int | None:
    """Where the capture stopped: its run's end, else (an operator's file) the last packet of any flow it kept."""
    if run is not None and run.finished is not None:
        return int(run.finished.timestamp() * 1e9)
    return max((f.last_ns for f in analysis.flows), default=None)


def answer_may_follow(f: TcpFlow, end_ns: int | None) -> bool:
    """An unanswered SYN sent once in the capture's last second, before any retransmission: its SYN-ACK may
    simply have come after the capture stopped (a packet limit, the window's end), so it proves nothing."""
    return (f.handshake is Handshake.SYN_UNANSWERED and f.syn_sent <= 1 and end_ns is not None
            and end_ns - f.last_ns < FIRST_RTO_NS)


def capture_findings(where: str, member: str, analysis: CaptureAnalysis, run: CaptureRun | None = None,
                     pcap: str | None = None, own: OwnProbes = OwnProbes()) -> list[Finding]:
    """`where` is a vantage id (or "operator"), `member` the JSON document, `pcap` the file to open next; `own`
    the path walk's packets in that vantage."""
    out: list[Finding] = []
    file = pcap or analysis.file

    def add(fid: str, severity: Severity, layer: Layer, target: FindingTarget | None, summary: str, pointer: str,
            command: str) -> None:
        """Repeated symptoms of one kind and target are one finding with a count (the first one's words)."""
        same = next((f for f in out if f.id == fid and f.target == target), None)
        if same is not None:
            same.count += 1
            if len(same.evidence) < MAX_PER_KIND:
                same.evidence.append(Evidence(member=member, pointer=pointer))
            return
        out.append(Finding(id=fid, severity=severity, layer=layer, vantage=where, target=target, summary=summary,
                           evidence=[Evidence(member=member, pointer=pointer)], next_command=command))

    prefix = "analysis." if run is not None else ""
    end_ns = capture_end_ns(analysis, run)
    for i, f in enumerate(analysis.flows):
        if own.sent(f.client):
            continue
        ptr = f"{prefix}flows[{i}]"
        if f.blackhole:
            add("capture.blackhole", Severity.CRITICAL, Layer.ROUTE, _at(f.server),
                f"In the capture from {where}, {f.largest_unacked_retransmitted}-byte segments of {f.client} <-> "
                f"{f.server} were sent again and again and never acknowledged while small ones were: the PMTU "
                f"blackhole signature.", ptr, f"tcpdump -nn -r {file} 'tcp and greater 1000'")
        if f.handshake is Handshake.SYN_RST:
            add("capture.syn_rst", Severity.CRITICAL, Layer.TRANSPORT, _at(f.server),
                f"In the capture from {where}, {f.client}'s SYN to {f.server} was answered with RST: nothing "
                f"listens there.", ptr, f"tcpdump -nn -r {file} 'tcp[tcpflags] & (tcp-syn|tcp-rst) != 0'")
        elif f.handshake is Handshake.SYN_UNANSWERED:
            if answer_may_follow(f, end_ns):
                continue
            add("capture.syn_unanswered", Severity.CRITICAL, Layer.TRANSPORT, _at(f.server),
                f"In the capture from {where}, {f.client}'s SYN to {f.server} was never answered "
                f"({f.syn_sent} sent): dropped on the way or at the server.", ptr,
                f"tcpdump -nn -r {file} 'tcp[tcpflags] & tcp-syn != 0'")
    for i, ev in enumerate(analysis.icmp):
        if own.quoted(ev.quoted):
            continue
        about = f" about {ev.quoted}" if ev.quoted else ""
        quoted_dst = _quoted_target(ev.quoted)
        if ev.mtu is not None:
            add("capture.frag_needed", Severity.WARNING, Layer.ROUTE, quoted_dst,
                f"In the capture from {where}, {ev.source} said '{ev.description}' (next-hop MTU {ev.mtu}){about}.",
                f"{prefix}icmp[{i}]", f"tcpdump -nn -v -r {file} icmp or icmp6")
        else:
            add("capture.icmp_error", Severity.WARNING, Layer.ROUTE, quoted_dst,
                f"In the capture from {where}, {ev.source} answered '{ev.description}'{about}.",
                f"{prefix}icmp[{i}]", f"tcpdump -nn -v -r {file} icmp or icmp6")
    if analysis.dns_unanswered:
        add("capture.dns_unanswered", Severity.WARNING, Layer.DNS, None,
            f"In the capture from {where}, {analysis.dns_unanswered} DNS queries got no response.",
            f"{prefix}dns", f"tcpdump -nn -r {file} port 53")
    if run is not None and run.kernel_dropped:
        add("capture.kernel_drops", Severity.WARNING, Layer.ROUTE, None,
            f"The kernel dropped {run.kernel_dropped} packets while capturing in {where}: the capture is incomplete.",
            "kernel_dropped", f"tcpdump -nn -r {file} | tail")
    if analysis.problems or analysis.malformed:
        what = "; ".join(p.message for p in analysis.problems[:2]) or f"{analysis.malformed} malformed packets"
        add("capture.unreadable_parts", Severity.INFO, Layer.ROUTE, None,
            f"Parts of the capture {analysis.file} from {where} could not be read: {what}.", f"{prefix}problems",
            f"capinfos {file}")
    return out
