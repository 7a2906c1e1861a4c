"""Offline capture analysis: TCP handshakes and retransmissions, the PMTU-blackhole signature, DNS
transactions and ICMP errors. Streaming, with bounded tables: headers are walked with `struct`
(bundle.pcap.headers) straight out of the reader's buffer; dpkt decoding every packet runs at tshark's rate,
so it is used to write captures and to check our decoders in tests, not here."""

from __future__ import annotations

import gc
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import TypeAdapter

from bundle.models import (
    CaptureAnalysis,
    CaptureEvent,
    CaptureProblem,
    DnsTransaction,
    Handshake,
    IcmpEvent,
    TcpFlow,
)
from bundle.pcap import open_capture
from bundle.pcap.headers import (
    ACK,
    RST,
    SUPPORTED_LINKTYPES,
    SYN,
    Decoded,
    Malformed,
    decode,
    dns_question,
    mss_option,
    ntop,
    tcp,
    udp_ports,
)
from bundle.pcap.reader import Record

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


# Ethernet type .. TCP window of an Ethernet frame, read as if it were untagged IPv4 without options and
# checked after: (ethertype, version/IHL, TOS), total length, (fragment field, TTL, protocol), both addresses
# as one 64-bit integer, both ports as one 32-bit integer, seq, ack, (data offset, flags), window. Fewer,
# wider fields make fewer objects per packet, and a direction's key is one int: addresses << 32 | ports.
_FAST = struct.Struct("!IH2xI2xQIIIHH")
_FAST_MIN = 54  # Ethernet 14 + IPv4 20 + TCP 20
_DNS_LIST = TypeAdapter(list[DnsTransaction])
_V6 = 1 << 320  # marks IPv6 keys (two 128-bit addresses) apart from IPv4 ones


def _key(src: bytes, sport: int, dst: bytes, dport: int) -> int:
    return (_V6 if len(src) == 16 else 0) | int.from_bytes(src + dst) << 32 | sport << 16 | dport


def _reverse(key: int) -> int:
    """The key of the other direction."""
    bits = 128 if key >> 320 else 32
    mask = (1 << bits) - 1
    addrs, ports = key >> 32 & ((1 << 2 * bits) - 1), key & 0xFFFFFFFF
    return (key & _V6) | ((addrs & mask) << bits | addrs >> bits) << 32 | (ports & 0xFFFF) << 16 | ports >> 16


def _endpoints(key: int) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
    """((source address, port), (destination address, port)) of a direction's key."""
    width = 16 if key >> 320 else 4
    addrs = (key >> 32) & ((1 << (16 * width)) - 1)
    src, dst = (addrs >> (8 * width)).to_bytes(width), (addrs & ((1 << (8 * width)) - 1)).to_bytes(width)
    return (src, (key >> 16) & 0xFFFF), (dst, key & 0xFFFF)


@dataclass(slots=True)
class _Flow:
    client: tuple[bytes, int]
    server: tuple[bytes, int]
    first: int
    dirs: tuple[_Dir, _Dir]  # (from the client, from the server)
    syn: int = 0
    synack: int = 0
    client_ack_after_synack: bool = False
    rst_client: int = 0
    rst_server: int = 0
    zero_windows: int = 0
    mss: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _Dir:
    """One direction of a flow: what its sender sent and acknowledged. Keyed by (src, sport, dst, dport), so a
    packet finds its direction with one lookup."""

    from_client: bool
    flow: _Flow | None = None
    packets: int = 0
    bytes: int = 0
    last: int = 0
    max_end: int | None = None  # highest sequence number sent (seq + length)
    max_ack: int | None = None  # highest ACK this side sent
    watch_ack: bool = False  # the client's side after a SYN-ACK: its next ACK completes the handshake
    retransmits: int = 0
    # retransmitted data by sequence number: (largest length resent, times resent). A TSO sender's first
    # transmission is one super-segment and its retransmissions are MSS-sized, so lengths differ: a segment
    # that ends at or below what was already sent is a retransmission.
    resent: dict[int, tuple[int, int]] = field(default_factory=dict)
    first_small_end: int | None = None  # end of the first small data segment: did that one get through?


def _ep(raw: bytes, port: int) -> str:
    addr = ntop(raw)
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class _Analysis:
    def __init__(self) -> None:
        self.dirs: dict[int, _Dir] = {}
        self.flows: list[_Flow] = []
        # queries waiting for their response, by (DNS id, key of the query's direction): (time, name, type)
        self.dns: dict[tuple[int, int], tuple[int, str, str]] = {}
        # answered: (id, query key, query time, name, type, response time, rcode, answer count)
        self.dns_done: list[tuple[int, int, int, str, str, int, int, int]] = []
        self.icmp: list[IcmpEvent] = []
        self.malformed = 0
        self.examples: list[str] = []
        self.events: list[CaptureEvent] = []
        self.ip_packets = self.non_ip = self.unsupported = 0

    def event(self, ts: int, kind: str, flow: _Flow) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(CaptureEvent(ts_ns=ts, kind=kind,
                                            flow=f"{_ep(*flow.client)} > {_ep(*flow.server)}"))

    def bad(self, why: str) -> None:
        self.malformed += 1
        if len(self.examples) < 20:
            self.examples.append(why)

    def run(self, buf: bytearray, link: int, records: list[Record]) -> None:
        """One batch of records. Untagged Ethernet/IPv4 TCP (nearly every packet of a busy capture) is
        read with one unpack straight from the buffer; everything else is copied and decoded in full. Every TCP
        segment then takes the same flow update, inline here; new flows, SYN, RST, zero windows and
        retransmissions are rare and go to methods."""
        dirs = self.dirs
        fast = _FAST.unpack_from
        fast_min = _FAST_MIN
        rejected = 0  # records that are not IP packets or not readable: every other one is an IP packet
        big = MIN_BIG_SEGMENT
        # Flags as literals: module globals cost a lookup per packet. SYN 0x02, RST 0x04, ACK 0x10.
        ethernet = link == 1
        if not ethernet and link not in SUPPORTED_LINKTYPES:
            self.unsupported += len(records)
            return
        for ts, off, caplen, _origlen in records:
            if ethernet and caplen >= fast_min:
                ether_ip, total, frag_proto, addrs, ports, seq, ack, off_flags, window = fast(buf, off + 12)
                # IPv4 (0x0800) with a 20-byte header, not a fragment, TCP with a data offset >= 5 words
                quick = ether_ip & 0xFFFFFF00 == 0x08004500 and frag_proto & 0x1FFF00FF == 6 and off_flags >= 0x5000
                if not quick and ether_ip & 0xFFFFFF00 == 0x08004500 and frag_proto & 0x1FFF00FF == 17:
                    # UDP: only DNS is read, from after the 8-byte UDP header
                    if ports >> 16 == 53 or ports & 0xFFFF == 53:
                        self.dns_message(ts, addrs << 32 | ports, bytes(buf[off + 42:off + caplen]))
                    continue
            else:
                quick = False
            if quick:
                key = addrs << 32 | ports
                payload = total - 20 - (off_flags >> 12) * 4
                flags = off_flags & 0xFF
                mss = None  # read below, for a SYN only
            else:
                d = None
                try:
                    d = decode(link, bytes(buf[off:off + caplen]))
                    if d is None:
                        self.non_ip += 1
                        rejected += 1
                        continue
                    if d.proto != 6 or d.fragment:
                        self.packet(ts, d)
                        continue
                    t = tcp(d.l4)
                except (Malformed, struct.error, IndexError, ValueError) as exc:
                    self.bad(str(exc) or type(exc).__name__)
                    rejected += d is None  # an IP packet whose transport is broken still counts as IP
                    continue
                key = _key(d.src, t.sport, d.dst, t.dport)
                seq, ack, flags, window = t.seq, t.ack, t.flags, t.window
                payload, mss = d.ip_payload_len - t.header_len, t.mss
            if payload < 0:
                payload = 0
            me = dirs.get(key)
            if me is None or flags & 0x06 or not window:
                if quick and flags & 0x02 and caplen >= 34 + (off_flags >> 12) * 4:  # a SYN's options, when kept
                    mss = mss_option(buf, off + 54, off + 34 + (off_flags >> 12) * 4)
                me = self.unusual(ts, key, flags, window, mss, me)
                if me is None:
                    continue
            me.packets += 1
            me.last = ts
            me.bytes += payload
            if flags & 0x10:
                if me.watch_ack and not flags & 0x02:
                    me.flow.client_ack_after_synack = True  # type: ignore[union-attr]
                    me.watch_ack = False
                m = me.max_ack
                if m is None or 0 < (ack - m) & 0xFFFFFFFF < 0x80000000:
                    me.max_ack = ack
            if payload:
                end = (seq + payload) & 0xFFFFFFFF
                m = me.max_end
                if m is None or 0 < (end - m) & 0xFFFFFFFF < 0x80000000:
                    me.max_end = end
                else:
                    self.retransmit(ts, me, seq, payload)
                if payload < big and me.first_small_end is None:
                    me.first_small_end = end
        self.ip_packets += len(records) - rejected

    def unusual(self, ts: int, key: int, flags: int, window: int, mss: int | None, me: _Dir | None) -> _Dir | None:
        """A segment that opens a flow or carries SYN, RST or a zero window; None when the flow table is full."""
        if me is None:
            if len(self.flows) >= MAX_FLOWS:
                return None
            a, b = _endpoints(key)
            # the SYN's sender is the client; a SYN-ACK's receiver is; otherwise the first sender
            client, server = (b, a) if (flags & SYN and flags & ACK) else (a, b)
            c, s = _Dir(from_client=True), _Dir(from_client=False)
            new = _Flow(client, server, ts, (c, s))
            c.flow = s.flow = new
            self.flows.append(new)
            self.dirs[_key(*server, *client)] = s
            self.dirs[_key(*client, *server)] = c  # a flow to itself (same address and port) is the client's
            me = c if a == client else s
        flow = me.flow
        if flow is None:
            raise AssertionError("a direction without its flow")
        if mss:
            flow.mss.add(mss)
        if flags & SYN:
            if flags & ACK:
                flow.synack += 1
                flow.dirs[0].watch_ack = True
                self.event(ts, "synack", flow)
            elif me.from_client:
                flow.syn += 1
                self.event(ts, "syn", flow)
        if flags & RST:
            self.event(ts, "rst", flow)
            if me.from_client:
                flow.rst_client += 1
            else:
                flow.rst_server += 1
        elif window == 0 and not flags & SYN:
            flow.zero_windows += 1
        return me

    def retransmit(self, ts: int, me: _Dir, seq: int, payload: int) -> None:
        me.retransmits += 1
        assert me.flow is not None
        self.event(ts, "retransmit", me.flow)
        length, times = me.resent.get(seq, (0, 0))
        if seq in me.resent or len(me.resent) < MAX_SEGMENTS:
            me.resent[seq] = (max(length, payload), times + 1)

    def packet(self, ts: int, d: Decoded) -> None:
        if d.fragment:
            return
        if d.proto == 17:
            self._udp(ts, d)
        elif d.proto in (1, 58):
            self._icmp(ts, d)

    def _udp(self, ts: int, d: Decoded) -> None:
        sport, dport = udp_ports(d.l4)
        if 53 in (sport, dport):
            self.dns_message(ts, _key(d.src, sport, d.dst, dport), d.l4[8:])

    def dns_message(self, ts: int, key: int, body: bytes) -> None:
        """A query waits for its response by (id, direction); a response closes the query it answers. The fixed
        header (id, flags, counts) is enough to pair them; only a query's question is read."""
        if len(body) < 12:
            self.bad("DNS message shorter than its header")
            return
        qid, flags, _qd, ancount = struct.unpack_from("!HHHH", body)
        if not flags & 0x8000:
            if len(self.dns) < MAX_DNS and (qid, key) not in self.dns:  # a resent query keeps the first one's time
                try:
                    qname, number = dns_question(body)
                    qtype = _QTYPES.get(number, str(number))
                except Malformed:
                    self.bad("undecodable DNS question")
                    qname, qtype = "?", "?"
                self.dns[(qid, key)] = (ts, qname, qtype)
            return
        query_key = _reverse(key)
        query = self.dns.pop((qid, query_key), None)
        if query is not None and len(self.dns_done) < MAX_DNS:
            self.dns_done.append((qid, query_key, *query, ts, flags & 0x0F, ancount))

    def dns_out(self) -> list[DnsTransaction]:
        """Answered and unanswered transactions in the order their queries were sent. Validated as one list:
        a model at a time costs 2.5x more, and a busy capture has thousands."""
        names: dict[int, tuple[str, str]] = {}

        def endpoints(key: int) -> tuple[str, str]:
            found = names.get(key)
            if found is None:
                client, server = _endpoints(key)
                found = names[key] = (_ep(*client), _ep(*server))
            return found

        rows: list[dict[str, object]] = []
        for qid, key, query_ns, qname, qtype, response_ns, rcode, answers in self.dns_done:
            client, server = endpoints(key)
            rows.append({"client": client, "server": server, "id": qid, "qname": qname, "qtype": qtype,
                         "query_ns": query_ns, "rcode": _RCODES.get(rcode, str(rcode)),
                         "latency_ms": round((response_ns - query_ns) / 1e6, 3), "answers": answers})
        for (qid, key), (query_ns, qname, qtype) in self.dns.items():
            client, server = endpoints(key)
            rows.append({"client": client, "server": server, "id": qid, "qname": qname, "qtype": qtype,
                         "query_ns": query_ns})
        rows.sort(key=lambda t: t["query_ns"])  # type: ignore[arg-type,return-value]
        return _DNS_LIST.validate_python(rows[:MAX_DNS])

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

    def flows_out(self, keep: int) -> list[TcpFlow]:
        """The `keep` flows that matter most: blackholes, failed handshakes, then the most retransmissions.
        Verdicts are computed for every flow; models are built only for those kept."""
        interesting = {Handshake.SYN_RST: 0, Handshake.SYN_UNANSWERED: 1, Handshake.SYN_ACK_ONLY: 2}
        ranked = []
        for f in self.flows:
            if f.syn:
                hs = (Handshake.COMPLETED if f.client_ack_after_synack else Handshake.SYN_ACK_ONLY) if f.synack \
                    else Handshake.SYN_RST if f.rst_server else Handshake.SYN_UNANSWERED
            else:
                hs = Handshake.MID_STREAM
            largest = None
            for me, peer in (f.dirs, f.dirs[::-1]):
                if not me.resent:
                    continue
                unacked = [ln for seq, (ln, n) in me.resent.items()
                           if n >= 2 and ln >= MIN_BIG_SEGMENT
                           and not (peer.max_ack is not None and _ahead(peer.max_ack, seq))]
                small_passed = hs is Handshake.COMPLETED or (
                    me.first_small_end is not None and peer.max_ack is not None
                    and not _ahead(me.first_small_end, peer.max_ack))
                if unacked and small_passed:
                    largest = max(unacked)
            retransmits = f.dirs[0].retransmits + f.dirs[1].retransmits
            ranked.append(((largest is None, interesting.get(hs, 3), -retransmits, f.first), f, hs, largest))
        ranked.sort(key=lambda r: r[0])
        out = []
        for _, f, hs, largest in ranked[:keep]:
            c, s = f.dirs
            out.append(TcpFlow(
                client=_ep(*f.client), server=_ep(*f.server), first_ns=f.first, last_ns=max(c.last, s.last),
                packets=c.packets + s.packets, bytes=c.bytes + s.bytes, handshake=hs, syn_sent=f.syn,
                syn_retransmits=max(0, f.syn - 1), retransmits=c.retransmits + s.retransmits,
                resets_from_client=f.rst_client, resets_from_server=f.rst_server, zero_windows=f.zero_windows,
                mss=sorted(f.mss), blackhole=largest is not None, largest_unacked_retransmitted=largest))
        return out


def _quoted(inner: bytes, version: int) -> str | None:
    """The flow an ICMP error quotes (its original IP header and first 8 bytes)."""
    try:
        d = decode(228 if version == 4 else 229, inner)
    except Malformed:
        return None
    if d is None or len(d.l4) < 4:
        return None
    if d.proto in (1, 58) and len(d.l4) >= 8 and d.l4[0] in (8, 128):  # an echo: no ports, its id and sequence
        ident, seq = struct.unpack_from("!HH", d.l4, 4)
        return f"icmp {ntop(d.src)} > {ntop(d.dst)} id {ident} seq {seq}"
    sport, dport = struct.unpack_from("!HH", d.l4)
    name = {6: "tcp", 17: "udp"}.get(d.proto, str(d.proto))
    return f"{name} {_ep(d.src, sport)} > {_ep(d.dst, dport)}"


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while packets stream: every batch allocates thousands of tracked tuples,
    and each collection walks every object alive (a caller's earlier results included) for ~25% of the run.
    Nothing per packet forms a cycle, so reference counting frees it all; the flow tables are bounded."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def analyze_capture(path: Path, label: str | None = None) -> CaptureAnalysis:
    """Read a pcap or pcapng to its end (or to its first unreadable byte) and summarise it."""
    reader = open_capture(path)
    state = _Analysis()
    with _collector_paused():
        for batch in reader.batches():
            state.run(batch.buf, batch.linktype, batch.records)
    flows = state.flows_out(KEEP_FLOWS)
    unanswered = len(state.dns)
    dns = state.dns_out()
    return CaptureAnalysis(
        file=label or path.name, format=reader.format,
        linktypes={str(k): v for k, v in reader.linktypes.items()}, packets=reader.packets,
        ip_packets=state.ip_packets, non_ip=state.non_ip, unsupported_linktype=state.unsupported,
        malformed=state.malformed, malformed_examples=state.examples,
        problems=[CaptureProblem(offset=p.offset, message=p.message) for p in reader.problems],
        complete=not reader.problems, flows=flows, flows_total=len(state.flows), dns=dns,
        dns_unanswered=unanswered, icmp=state.icmp, events=state.events,
    )


__all__ = ["analyze_capture"]
