"""Offline capture analysis: TCP handshakes and retransmissions, the PMTU-blackhole signature, DNS
transactions and ICMP errors. Streaming, with bounded tables: headers are walked with `struct`
(bundle.pcap.headers); only DNS payloads and ICMP errors go to dpkt."""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

from bundle.models import CaptureAnalysis, CaptureEvent, CaptureProblem, DnsTransaction, Handshake, IcmpEvent, TcpFlow
from bundle.pcap import open_capture
from bundle.pcap.headers import ACK, RST, SUPPORTED_LINKTYPES, SYN, Decoded, Malformed, decode, ntop, tcp, udp_ports

_IP4_LEN_FRAG = struct.Struct("!H2xH")
_TCP = struct.Struct("!HHIIBBH")
MAX_FLOWS = 50_000
MAX_EVENTS = 2_000
MAX_SEGMENTS = 4096  # per flow direction
MAX_DNS = 20_000
MAX_ICMP = 2_000
KEEP_FLOWS = 1_000
MIN_BIG_SEGMENT = 1000  # bytes of TCP payload: "full size" on any path with MTU >= 1040
_QTYPES = {1: "A", 28: "AAAA", 5: "CNAME", 33: "SRV", 12: "PTR", 16: "TXT", 15: "MX", 2: "NS", 6: "SOA"}
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_ICMP4 = {(3, 0): "net unreachable", (3, 1): "host unreachable", (3, 3): "port unreachable",
          (3, 4): "fragmentation needed", (3, 13): "administratively prohibited", (11, 0): "TTL exceeded"}
_ICMP6 = {(1, 0): "no route", (1, 1): "administratively prohibited", (1, 3): "address unreachable",
          (1, 4): "port unreachable", (2, 0): "packet too big", (3, 0): "hop limit exceeded"}


def _ahead(a: int, b: int) -> bool:
    """a is after b in 32-bit sequence space."""
    return 0 < (a - b) % (1 << 32) < (1 << 31)


@dataclass
class _Dir:
    max_end: int | None = None  # highest sequence number sent (seq + length)
    max_ack: int | None = None  # highest ACK this side sent
    retransmits: int = 0
    # retransmitted data by sequence number: (largest length resent, times resent). A TSO sender's first
    # transmission is one super-segment and its retransmissions are MSS-sized, so lengths differ: a segment
    # that ends at or below what was already sent is a retransmission.
    resent: dict[int, tuple[int, int]] = field(default_factory=dict)
    first_small_end: int | None = None  # end of the first small data segment: did that one get through?


@dataclass
class _Flow:
    client: tuple[bytes, int]
    server: tuple[bytes, int]
    first: int
    last: int
    packets: int = 0
    bytes: int = 0
    syn: int = 0
    synack: int = 0
    client_ack_after_synack: bool = False
    rst_client: int = 0
    rst_server: int = 0
    zero_windows: int = 0
    mss: set[int] = field(default_factory=set)
    dirs: tuple[_Dir, _Dir] = field(default_factory=lambda: (_Dir(), _Dir()))


def _ep(raw: bytes, port: int) -> str:
    addr = ntop(raw)
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class _Analysis:
    def __init__(self) -> None:
        self.flows: dict[tuple[bytes, int, bytes, int], _Flow] = {}
        self.flows_total = 0
        self.dns: dict[tuple[int, bytes, int, bytes, int], DnsTransaction] = {}
        self.dns_done: list[DnsTransaction] = []
        self.icmp: list[IcmpEvent] = []
        self.malformed = 0
        self.examples: list[str] = []
        self.events: list[CaptureEvent] = []

    def event(self, ts: int, kind: str, flow: _Flow) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(CaptureEvent(ts_ns=ts, kind=kind,
                                            flow=f"{_ep(*flow.client)} > {_ep(*flow.server)}"))

    def bad(self, why: str) -> None:
        self.malformed += 1
        if len(self.examples) < 20:
            self.examples.append(why)

    def packet(self, ts: int, d: Decoded) -> None:
        if d.fragment:
            return
        if d.proto == 6:
            self._tcp(ts, d)
        elif d.proto == 17:
            self._udp(ts, d)
        elif d.proto in (1, 58):
            self._icmp(ts, d)

    def _tcp(self, ts: int, d: Decoded) -> None:
        t = tcp(d.l4)
        self.segment(ts, d.src, d.dst, t.sport, t.dport, t.seq, t.ack, t.flags, t.window,
                     max(0, d.ip_payload_len - t.header_len), t.mss)

    def fast(self, ts: int, data: bytes) -> bool:
        """Ethernet + IPv4 + TCP without VLAN, fragments or SYN (nearly every packet of a busy capture), walked
        inline; anything else returns False and takes the general path."""
        if len(data) < 54 or data[12] != 8 or data[13] != 0 or data[14] >> 4 != 4 or data[23] != 6:
            return False
        ihl = (data[14] & 0x0F) * 4
        total, frag = _IP4_LEN_FRAG.unpack_from(data, 16)
        t = 14 + ihl
        if frag & 0x1FFF or ihl < 20 or len(data) < t + 20:
            return False
        sport, dport, seq, ack, off, flags, window = _TCP.unpack_from(data, t)
        hlen = (off >> 4) * 4
        if flags & SYN or hlen < 20:
            return False
        self.segment(ts, data[26:30], data[30:34], sport, dport, seq, ack, flags, window,
                     max(0, total - ihl - hlen), None)
        return True

    def segment(self, ts: int, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
                window: int, payload: int, mss: int | None) -> None:
        a, b = (src, sport), (dst, dport)
        key = (*a, *b) if a <= b else (*b, *a)
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= MAX_FLOWS:
                return
            self.flows_total += 1
            # the SYN's sender is the client; a SYN-ACK's receiver is; otherwise the first sender
            client, server = (b, a) if (flags & SYN and flags & ACK) else (a, b)
            flow = self.flows[key] = _Flow(client, server, ts, ts)
        from_client = a == flow.client
        me, peer = flow.dirs if from_client else flow.dirs[::-1]
        flow.packets += 1
        flow.last = ts
        flow.bytes += payload
        if mss:
            flow.mss.add(mss)
        if flags & SYN:
            if flags & ACK:
                flow.synack += 1
                self.event(ts, "synack", flow)
            elif from_client:
                flow.syn += 1
                self.event(ts, "syn", flow)
        elif flags & ACK and from_client and flow.synack:
            flow.client_ack_after_synack = True
        if flags & RST:
            self.event(ts, "rst", flow)
            if from_client:
                flow.rst_client += 1
            else:
                flow.rst_server += 1
        elif window == 0 and not flags & SYN:
            flow.zero_windows += 1
        if flags & ACK and (me.max_ack is None or _ahead(ack, me.max_ack)):
            me.max_ack = ack
        if payload:
            end = (seq + payload) % (1 << 32)
            if me.max_end is not None and not _ahead(end, me.max_end):
                me.retransmits += 1
                self.event(ts, "retransmit", flow)
                length, times = me.resent.get(seq, (0, 0))
                if seq in me.resent or len(me.resent) < MAX_SEGMENTS:
                    me.resent[seq] = (max(length, payload), times + 1)
            else:
                me.max_end = end
            if payload < MIN_BIG_SEGMENT and me.first_small_end is None:
                me.first_small_end = end

    def _udp(self, ts: int, d: Decoded) -> None:
        sport, dport = udp_ports(d.l4)
        if 53 not in (sport, dport):
            return
        body = d.l4[8:]
        if len(body) < 12:
            self.bad("DNS message shorter than its header")
            return
        # The fixed header (id, flags, counts) is enough to pair a response; dpkt reads the question only.
        qid, flags, _qd, ancount = struct.unpack_from("!HHHH", body)
        if not flags & 0x8000:
            if len(self.dns) < MAX_DNS:
                try:
                    q = dpkt.dns.DNS(body).qd[0]
                    qname, qtype = q.name, _QTYPES.get(q.type, str(q.type))
                except (dpkt.UnpackError, struct.error, IndexError, ValueError):
                    self.bad("undecodable DNS question")
                    qname, qtype = "?", "?"
                self.dns.setdefault((qid, d.src, sport, d.dst, dport), DnsTransaction(
                    client=_ep(d.src, sport), server=_ep(d.dst, dport), id=qid, qname=qname, qtype=qtype,
                    query_ns=ts))
            return
        tx = self.dns.pop((qid, d.dst, dport, d.src, sport), None)
        if tx is None:
            return
        tx.rcode = _RCODES.get(flags & 0x0F, str(flags & 0x0F))
        tx.latency_ms = round((ts - tx.query_ns) / 1e6, 3)
        tx.answers = ancount
        if len(self.dns_done) < MAX_DNS:
            self.dns_done.append(tx)

    def _icmp(self, ts: int, d: Decoded) -> None:
        if len(d.l4) < 8 or len(self.icmp) >= MAX_ICMP:
            return
        typ, code = d.l4[0], d.l4[1]
        table = _ICMP4 if d.proto == 1 else _ICMP6
        errors = (3, 11, 12) if d.proto == 1 else (1, 2, 3, 4)
        if typ not in errors:
            return
        mtu = None
        if d.proto == 1 and (typ, code) == (3, 4):
            mtu = struct.unpack_from("!H", d.l4, 6)[0]
        elif d.proto == 58 and typ == 2:
            mtu = struct.unpack_from("!I", d.l4, 4)[0]
        if len(self.events) < MAX_EVENTS:
            self.events.append(CaptureEvent(ts_ns=ts, kind="icmp", flow=f"{ntop(d.src)} > {ntop(d.dst)}"))
        self.icmp.append(IcmpEvent(ts_ns=ts, source=ntop(d.src), type=typ, code=code,
                                   description=table.get((typ, code), f"type {typ} code {code}"), mtu=mtu,
                                   quoted=_quoted(d.l4[8:], 4 if d.proto == 1 else 6)))

    def flows_out(self) -> list[TcpFlow]:
        out = []
        for f in self.flows.values():
            if f.syn:
                hs = (Handshake.COMPLETED if f.client_ack_after_synack else Handshake.SYN_ACK_ONLY) if f.synack \
                    else Handshake.SYN_RST if f.rst_server else Handshake.SYN_UNANSWERED
            else:
                hs = Handshake.MID_STREAM
            blackhole, largest = False, None
            for me, peer in (f.dirs, f.dirs[::-1]):
                unacked = [ln for seq, (ln, n) in me.resent.items()
                           if n >= 2 and ln >= MIN_BIG_SEGMENT
                           and not (peer.max_ack is not None and _ahead(peer.max_ack, seq))]
                small_passed = hs is Handshake.COMPLETED or (
                    me.first_small_end is not None and peer.max_ack is not None
                    and not _ahead(me.first_small_end, peer.max_ack))
                if unacked and small_passed:
                    blackhole, largest = True, max(unacked)
            out.append(TcpFlow(
                client=_ep(*f.client), server=_ep(*f.server), first_ns=f.first, last_ns=f.last, packets=f.packets,
                bytes=f.bytes, handshake=hs, syn_sent=f.syn, syn_retransmits=max(0, f.syn - 1),
                retransmits=f.dirs[0].retransmits + f.dirs[1].retransmits, resets_from_client=f.rst_client,
                resets_from_server=f.rst_server, zero_windows=f.zero_windows, mss=sorted(f.mss),
                blackhole=blackhole, largest_unacked_retransmitted=largest))
        interesting = {Handshake.SYN_RST: 0, Handshake.SYN_UNANSWERED: 1, Handshake.SYN_ACK_ONLY: 2}
        out.sort(key=lambda fl: (not fl.blackhole, interesting.get(fl.handshake, 3), -fl.retransmits, fl.first_ns))
        return out


def _quoted(inner: bytes, version: int) -> str | None:
    """The flow an ICMP error quotes (its original IP header and first 8 bytes)."""
    try:
        d = decode(228 if version == 4 else 229, inner)
    except Malformed:
        return None
    if d is None or len(d.l4) < 4:
        return None
    sport, dport = struct.unpack_from("!HH", d.l4)
    name = {6: "tcp", 17: "udp"}.get(d.proto, str(d.proto))
    return f"{name} {_ep(d.src, sport)} > {_ep(d.dst, dport)}"


def analyze_capture(path: Path, label: str | None = None) -> CaptureAnalysis:
    """Read a pcap or pcapng to its end (or to its first unreadable byte) and summarise it."""
    reader = open_capture(path)
    state = _Analysis()
    linktypes: Counter[str] = Counter()
    ip_packets = non_ip = unsupported = 0
    for pkt in reader:
        linktypes[str(pkt.linktype)] += 1
        if pkt.linktype not in SUPPORTED_LINKTYPES:
            unsupported += 1
            continue
        try:
            if pkt.linktype == 1 and state.fast(pkt.ts_ns, pkt.data):
                ip_packets += 1
                continue
            d = decode(pkt.linktype, pkt.data)
            if d is None:
                non_ip += 1
                continue
            ip_packets += 1
            state.packet(pkt.ts_ns, d)
        except (Malformed, struct.error, IndexError, ValueError) as exc:
            state.bad(str(exc) or type(exc).__name__)
    flows = state.flows_out()
    unanswered = len(state.dns)
    dns = sorted(state.dns_done + list(state.dns.values()), key=lambda t: t.query_ns)[:MAX_DNS]
    return CaptureAnalysis(
        file=label or path.name, format=reader.format, linktypes=dict(linktypes), packets=reader.packets,
        ip_packets=ip_packets, non_ip=non_ip, unsupported_linktype=unsupported, malformed=state.malformed,
        malformed_examples=state.examples,
        problems=[CaptureProblem(offset=p.offset, message=p.message) for p in reader.problems],
        complete=not reader.problems, flows=flows[:KEEP_FLOWS], flows_total=state.flows_total, dns=dns,
        dns_unanswered=unanswered, icmp=state.icmp, events=state.events,
    )


__all__ = ["analyze_capture"]
