"""Link, IP and transport headers walked with `struct`: the hot path of capture analysis.

Only what flow analysis needs is decoded: a DNS query's question, not the whole message.
Link types (https://www.tcpdump.org/linktypes.html): 0 BSD loopback, 1 Ethernet (802.1Q/QinQ), 12/14/101 raw IP,
113 Linux cooked v1, 228 IPv4, 229 IPv6, 239 NFLOG, 276 Linux cooked v2.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

SUPPORTED_LINKTYPES = {0, 1, 12, 14, 101, 113, 228, 229, 239, 276}
_VLAN = {0x8100, 0x88A8, 0x9100}
_IPV6_EXT = {0, 43, 44, 60, 51}
_H = struct.Struct("!H")
_TCP = struct.Struct("!HHIIBBH")
_UDP = struct.Struct("!HHH")


class Malformed(Exception):
    """A header is cut short or inconsistent; the caller counts it."""


_NTOP: dict[bytes, str] = {}


def ntop(raw: bytes) -> str:
    """Text form of a raw 4- or 16-byte address, cached (addresses repeat across packets)."""
    text = _NTOP.get(raw)
    if text is None:
        text = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
        if len(_NTOP) < 100_000:
            _NTOP[raw] = text
    return text


@dataclass(slots=True)
class Decoded:
    version: int
    src: bytes  # raw address: turned into text (ntop) only for what is reported
    dst: bytes
    proto: int
    ip_payload_len: int  # from the IP header: the real size, even when the capture cut the packet
    l4: bytes  # transport header and what was captured after it
    fragment: bool = False


def _network(linktype: int, data: bytes) -> tuple[int, bytes] | None:
    """(ethertype-ish version 4/6, IP packet) or None when the frame carries no IP."""
    if linktype == 1:
        if len(data) < 14:
            raise Malformed("short Ethernet header")
        etype = _H.unpack_from(data, 12)[0]
        off = 14
        while etype in _VLAN:
            if len(data) < off + 4:
                raise Malformed("short VLAN tag")
            etype = _H.unpack_from(data, off + 2)[0]
            off += 4
        return _by_ethertype(etype, data[off:])
    if linktype == 113:
        if len(data) < 16:
            raise Malformed("short Linux cooked header")
        return _by_ethertype(_H.unpack_from(data, 14)[0], data[16:])
    if linktype == 276:
        if len(data) < 20:
            raise Malformed("short Linux cooked v2 header")
        return _by_ethertype(_H.unpack_from(data, 0)[0], data[20:])
    if linktype == 0:
        if len(data) < 4:
            raise Malformed("short loopback header")
        fam = struct.unpack_from("<I", data)[0]
        if fam > 0xFFFF:
            fam = struct.unpack_from(">I", data)[0]
        return (4, data[4:]) if fam == 2 else (6, data[4:]) if fam in (10, 24, 28, 30) else None
    if linktype in (12, 14, 101):
        if not data:
            raise Malformed("empty raw packet")
        v = data[0] >> 4
        return (v, data) if v in (4, 6) else None
    if linktype == 228:
        return 4, data
    if linktype == 229:
        return 6, data
    if linktype == 239:
        return _nflog(data)
    return None


def _by_ethertype(etype: int, payload: bytes) -> tuple[int, bytes] | None:
    return (4, payload) if etype == 0x0800 else (6, payload) if etype == 0x86DD else None


def _nflog(data: bytes) -> tuple[int, bytes] | None:
    if len(data) < 4:
        raise Malformed("short NFLOG header")
    family = data[0]
    off = 4
    while off + 4 <= len(data):
        tlv_len, tlv_type = struct.unpack_from("<HH", data, off)
        if tlv_len < 4:
            raise Malformed("NFLOG TLV length below 4")
        if tlv_type == 9:  # NFULA_PAYLOAD
            payload = data[off + 4:off + tlv_len]
            return (4, payload) if family == 2 else (6, payload) if family == 10 else None
        off += (tlv_len + 3) & ~3
    return None


def decode(linktype: int, data: bytes) -> Decoded | None:
    """The IP and transport view of one frame; None for non-IP frames; Malformed when headers are broken."""
    net = _network(linktype, data)
    if net is None:
        return None
    version, pkt = net
    if version == 4:
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            raise Malformed("short or bad IPv4 header")
        ihl = (pkt[0] & 0x0F) * 4
        total = _H.unpack_from(pkt, 2)[0]
        if ihl < 20 or len(pkt) < ihl or total < ihl:
            raise Malformed("bad IPv4 header length")
        frag = _H.unpack_from(pkt, 6)[0]
        return Decoded(4, pkt[12:16], pkt[16:20], pkt[9], total - ihl, pkt[ihl:], fragment=bool(frag & 0x1FFF))
    if len(pkt) < 40 or pkt[0] >> 4 != 6:
        raise Malformed("short or bad IPv6 header")
    plen = _H.unpack_from(pkt, 4)[0]
    nxt = pkt[6]
    off = 40
    fragment = False
    while nxt in _IPV6_EXT:
        if len(pkt) < off + 8:
            raise Malformed("short IPv6 extension header")
        if nxt == 44:
            fragment = bool(_H.unpack_from(pkt, off + 2)[0] & 0xFFF8)
            hlen = 8
        elif nxt == 51:
            hlen = (pkt[off + 1] + 2) * 4
        else:
            hlen = (pkt[off + 1] + 1) * 8
        nxt = pkt[off]
        off += hlen
    return Decoded(6, pkt[8:24], pkt[24:40], nxt, max(0, plen - (off - 40)), pkt[off:], fragment=fragment)


@dataclass(slots=True)
class Tcp:
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    header_len: int
    mss: int | None


FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def tcp(l4: bytes) -> Tcp:
    if len(l4) < 20:
        raise Malformed("short TCP header")
    sport, dport, seq, ack, off_byte, flags, window = _TCP.unpack_from(l4)
    hlen = (off_byte >> 4) * 4
    if hlen < 20:
        raise Malformed("TCP data offset below 20")
    mss = mss_option(l4, 20, hlen) if flags & SYN and len(l4) >= hlen else None
    return Tcp(sport, dport, seq, ack, flags, window, hlen, mss)


def mss_option(buf: bytes | bytearray, start: int, end: int) -> int | None:
    """The MSS option among the TCP options in buf[start:end] (a SYN's), or None."""
    i = start
    while i < end:
        kind = buf[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or buf[i + 1] < 2:
            break
        if kind == 2 and buf[i + 1] == 4 and i + 4 <= end:
            return int(_H.unpack_from(buf, i + 2)[0])
        i += buf[i + 1]
    return None


def udp_ports(l4: bytes) -> tuple[int, int]:
    if len(l4) < 8:
        raise Malformed("short UDP header")
    sport, dport, _ = _UDP.unpack_from(l4)
    return sport, dport


def dns_question(msg: bytes) -> tuple[str, int]:
    """(name, type) of a DNS message's first question (RFC 1035 4.1.2), compression pointers followed a bounded
    number of times; Malformed when there is none or it is cut short. Cheaper than decoding the whole message:
    the labels are walked by their lengths and the name decoded once, length bytes turned into dots."""
    if len(msg) < 12 or not _H.unpack_from(msg, 4)[0]:
        raise Malformed("DNS message without a question")
    i = 12
    while True:  # the common case: a name written out in full
        if i >= len(msg):
            raise Malformed("DNS question name runs past the message")
        n = msg[i]
        if n == 0 or n >= 0x40:
            break
        i += n + 1
    if n == 0 and i - 12 <= 255:
        if i + 5 > len(msg):
            raise Malformed("DNS question cut short")
        raw = bytearray(msg[12:i])
        j = 0
        while j < len(raw):
            n = raw[j]
            raw[j] = 0x2E  # "."
            j += n + 1
        return raw[1:].decode("ascii", "backslashreplace"), int(_H.unpack_from(msg, i + 1)[0])
    return _dns_question_slow(msg)


def _dns_question_slow(msg: bytes) -> tuple[str, int]:
    """dns_question with compression pointers, unknown label types and over-long names."""
    labels: list[str] = []
    i, end, jumps, size = 12, None, 0, 0
    while True:
        if i >= len(msg):
            raise Malformed("DNS question name runs past the message")
        n = msg[i]
        if n >= 0xC0:
            if i + 1 >= len(msg) or jumps >= 16:
                raise Malformed("bad compression pointer in a DNS question")
            end = i + 2 if end is None else end
            i = ((n & 0x3F) << 8) | msg[i + 1]
            jumps += 1
            continue
        if n >= 0x40:
            raise Malformed("unknown DNS label type")
        if n == 0:
            break
        size += n + 1
        if size > 255 or i + 1 + n > len(msg):
            raise Malformed("DNS question name too long or cut short")
        labels.append(msg[i + 1:i + 1 + n].decode("ascii", "backslashreplace"))
        i += 1 + n
    end = i + 1 if end is None else end
    if end + 4 > len(msg):
        raise Malformed("DNS question cut short")
    return ".".join(labels), int(_H.unpack_from(msg, end)[0])
