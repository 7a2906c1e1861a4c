"""Redacting one frame: addresses mapped, the transport checksum still right for the packet as sent (checked by
putting the dropped payload back and letting dpkt recompute it), nothing of a payload kept."""

from __future__ import annotations

import dpkt
import pytest

from bundle.redact import Redactor

_KEY = bytes(range(32))
_PAYLOAD = b"GET /pay HTTP/1.1\r\nHost: payments\r\n\r\n"


def _v4(proto: int, l4: dpkt.Packet, **ip: object) -> bytes:
    pkt = dpkt.ip.IP(src=bytes([10, 244, 1, 3]), dst=bytes([10, 96, 0, 10]), p=proto, data=l4, **ip)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x0a" * 6, dst=b"\x0b" * 6, data=pkt))


def _v6(proto: int, l4: dpkt.Packet) -> bytes:
    pkt = dpkt.ip6.IP6(src=bytes.fromhex("fd00000000000000000000000000000a"),
                       dst=bytes.fromhex("fd00000000000000000000000000000b"), nxt=proto, hlim=64, data=l4)
    pkt.plen = len(bytes(l4))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x0a" * 6, dst=b"\x0b" * 6, type=dpkt.ethernet.ETH_TYPE_IP6,
                                        data=pkt))


def _as_sent(redacted: bytes, original: bytes) -> dpkt.ethernet.Ethernet:
    """The redacted frame with the payload it dropped put back, parsed."""
    return dpkt.ethernet.Ethernet(redacted + original[len(redacted):])


@pytest.mark.parametrize("build", [
    lambda: _v4(dpkt.ip.IP_PROTO_TCP, dpkt.tcp.TCP(sport=41000, dport=8080, seq=7, flags=dpkt.tcp.TH_ACK,
                                                   data=_PAYLOAD)),
    lambda: _v4(dpkt.ip.IP_PROTO_UDP, dpkt.udp.UDP(sport=41000, dport=53, data=_PAYLOAD)),
    lambda: _v6(dpkt.ip.IP_PROTO_TCP, dpkt.tcp.TCP(sport=41000, dport=8080, seq=7, flags=dpkt.tcp.TH_ACK,
                                                   data=_PAYLOAD)),
    lambda: _v6(dpkt.ip.IP_PROTO_UDP, dpkt.udp.UDP(sport=41000, dport=53, data=_PAYLOAD)),
    lambda: _v6(dpkt.ip.IP_PROTO_ICMP6, dpkt.icmp6.ICMP6(type=128, data=dpkt.icmp6.ICMP6.Echo(id=1, seq=1,
                                                                                              data=_PAYLOAD))),
], ids=["tcp4", "udp4", "tcp6", "udp6", "icmp6"])
def test_transport_checksum_stays_right_for_the_packet_as_sent(build):
    original = build()
    redacted = Redactor(_KEY).packet(1, original)
    assert len(redacted) < len(original) and _PAYLOAD not in redacted
    before, after = dpkt.ethernet.Ethernet(original), _as_sent(redacted, original)
    assert after.data.src != before.data.src and after.data.dst != before.data.dst
    ip, l4 = after.data, after.data.data
    carried, carried_ip = l4.sum, getattr(ip, "sum", None)
    l4.sum = 0
    if carried_ip is not None:
        ip.sum = 0  # dpkt recomputes an IPv4 packet's transport checksum along with its own
    rebuilt = dpkt.ethernet.Ethernet(bytes(after))  # dpkt fills in zero checksums when it packs
    assert carried == rebuilt.data.data.sum != 0
    assert carried_ip == getattr(rebuilt.data, "sum", None)
    assert carried != before.data.data.sum  # the addresses changed, so must the checksum


def test_udp_without_checksum_keeps_none():
    udp = dpkt.udp.UDP(sport=41000, dport=53, data=_PAYLOAD)
    original = bytearray(_v4(dpkt.ip.IP_PROTO_UDP, udp))
    original[14 + 20 + 6:14 + 20 + 8] = b"\0\0"  # "no checksum", allowed over IPv4
    redacted = Redactor(_KEY).packet(1, bytes(original))
    assert redacted[14 + 20 + 6:14 + 20 + 8] == b"\0\0"


def test_later_fragment_keeps_its_ip_header_only():
    """Bytes after a non-first fragment's header are payload, not a transport header: none is kept."""
    original = _v4(dpkt.ip.IP_PROTO_UDP, dpkt.udp.UDP(sport=41000, dport=53, data=_PAYLOAD), offset=185 * 8)
    redacted = Redactor(_KEY).packet(1, original)
    assert len(redacted) == 14 + 20
    ip = dpkt.ethernet.Ethernet(redacted + b"\0" * 8).data
    assert ip.src != bytes([10, 244, 1, 3])
