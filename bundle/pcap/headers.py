"""Link, IP and transport headers walked with `struct`: the hot path of capture analysis.

Only what flow analysis needs is decoded; DNS payloads and ICMP errors are handed to dpkt by the caller.
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
    mss = None
    if flags & SYN and len(l4) >= hlen:
        opts = l4[20:hlen]
        i = 0
        while i < len(opts):
            kind = opts[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= len(opts) or opts[i + 1] < 2:
                break
            if kind == 2 and opts[i + 1] == 4 and i + 4 <= len(opts):
                mss = _H.unpack_from(opts, i + 2)[0]
            i += opts[i + 1]
    return Tcp(sport, dport, seq, ack, flags, window, hlen, mss)


def udp_ports(l4: bytes) -> tuple[int, int]:
    if len(l4) < 8:
        raise Malformed("short UDP header")
    sport, dport, _ = _UDP.unpack_from(l4)
    return sport, dport
