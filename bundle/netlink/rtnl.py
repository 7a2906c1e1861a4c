"""RTM_GETROUTE dumps (every table, IPv4 and IPv6), decoded with `struct`.

Why not pyroute2: it decodes every attribute of every route into nested objects; measured here at 10,000
routes that is ~6.7 s against ~0.04 s for `ip -j route show table all`. A node with one route per pod or a
BGP-fed table holds tens of thousands. Layouts are from linux/rtnetlink.h; only what the route slice keeps
is decoded (the other tables of the slice are small and stay with pyroute2).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections import Counter
from collections.abc import Iterator
from typing import NamedTuple

NETLINK_ROUTE = 0
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_DUMP_INTR = 0x10

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_METRICS = 8
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTA_VIA = 18
RTAX_MTU = 2

_NLMSGHDR = struct.Struct("=IHHII")
# struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type; flags
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")
# struct rtnexthop: len, flags, hops, ifindex
_RTNH = struct.Struct("=HBBi")
_U32 = struct.Struct("=I")
_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class RawRoute(NamedTuple):
    family: int  # AF_INET or AF_INET6
    dst_len: int
    table: int
    protocol: int
    scope: int
    type: int
    dst: str | None
    gateway: str | None
    oif: int | None
    prefsrc: str | None
    priority: int | None
    mtu: int | None
    nexthops: tuple[tuple[str | None, int, int], ...]  # (gateway, ifindex, hops) of a multipath route


def _addr(family: int, raw: bytes | bytearray | memoryview) -> str | None:
    want = 4 if family == socket.AF_INET else 16
    if len(raw) < want:
        return None
    return socket.inet_ntop(family, bytes(raw[:want]))


def _via(raw: bytes | bytearray | memoryview) -> str | None:
    """struct rtvia: the gateway of another family (an IPv4 route via an IPv6 next hop)."""
    if len(raw) < 2:
        return None
    fam = struct.unpack_from("=H", raw, 0)[0]
    return _addr(fam, raw[2:]) if fam in _FAMILIES else None


def _attrs(buf: bytes | bytearray | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each rtattr in [start, end)."""
    off = start
    while off + 4 <= end:
        length, kind = _RTA.unpack_from(buf, off)
        if length < 4 or off + length > end:
            return
        yield kind & 0x3FFF, off + 4, off + length
        off += (length + 3) & ~3


def decode_route(buf: bytes | bytearray | memoryview, start: int, end: int) -> RawRoute | None:
    """One RTM_NEWROUTE payload; None for families other than IPv4/IPv6 (multicast tables, MPLS)."""
    if end - start < _RTMSG.size:
        return None
    family, dst_len, _src_len, _tos, table, protocol, scope, rtype, _flags = _RTMSG.unpack_from(buf, start)
    if family not in _FAMILIES:
        return None
    dst = gateway = prefsrc = None
    oif = priority = mtu = None
    hops: list[tuple[str | None, int, int]] = []
    for kind, a, b in _attrs(buf, start + _RTMSG.size, end):
        if kind == RTA_DST:
            dst = _addr(family, buf[a:b])
        elif kind == RTA_GATEWAY:
            gateway = _addr(family, buf[a:b])
        elif kind == RTA_VIA:
            gateway = _via(buf[a:b])
        elif kind == RTA_OIF and b - a >= 4:
            oif = _U32.unpack_from(buf, a)[0]
        elif kind == RTA_PRIORITY and b - a >= 4:
            priority = _U32.unpack_from(buf, a)[0]
        elif kind == RTA_PREFSRC:
            prefsrc = _addr(family, buf[a:b])
        elif kind == RTA_TABLE and b - a >= 4:
            table = _U32.unpack_from(buf, a)[0]
        elif kind == RTA_METRICS:
            for mkind, ma, mb in _attrs(buf, a, b):
                if mkind == RTAX_MTU and mb - ma >= 4:
                    mtu = _U32.unpack_from(buf, ma)[0]
        elif kind == RTA_MULTIPATH:
            off = a
            while off + _RTNH.size <= b:
                length, _nflags, nhops, ifindex = _RTNH.unpack_from(buf, off)
                if length < _RTNH.size or off + length > b:
                    break
                hop_gw = None
                for hkind, ha, hb in _attrs(buf, off + _RTNH.size, off + length):
                    if hkind == RTA_GATEWAY:
                        hop_gw = _addr(family, buf[ha:hb])
                    elif hkind == RTA_VIA:
                        hop_gw = _via(buf[ha:hb])
                hops.append((hop_gw, ifindex, nhops))
                off += (length + 3) & ~3
    return RawRoute(family, dst_len, table, protocol, scope, rtype, dst, gateway, oif, prefsrc, priority, mtu,
                    tuple(hops))


DUMP_TRIES = 3


def dump_routes(keep: int | None = None, bufsize: int = 1 << 20) -> tuple[list[RawRoute], Counter[int], bool]:
    """The IPv4 and IPv6 routes of every table in the current netns (as `ip route show table all`): the first
    `keep` of them (all when None), how many each table holds (counted over all), and whether every one of
    DUMP_TRIES dumps came back marked interrupted (NLM_F_DUMP_INTR; the counts are then approximate)."""
    for _ in range(DUMP_TRIES):
        out, per_table, interrupted = _dump_routes_once(keep, bufsize)
        if not interrupted:
            break
    return out, per_table, interrupted


def _dump_routes_once(keep: int | None, bufsize: int) -> tuple[list[RawRoute], Counter[int], bool]:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    out: list[RawRoute] = []
    per_table: Counter[int] = Counter()
    interrupted = False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        seq = int.from_bytes(os.urandom(3), "little")
        body = _RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
                  + body)
        buf = bytearray(bufsize)
        while True:
            n = sock.recv_into(buf)
            if n == 0:
                raise OSError(errno.EBADMSG, "rtnetlink route dump ended without NLMSG_DONE")
            off = 0
            while off + _NLMSGHDR.size <= n:
                length, mtype, flags, mseq, _pid = _NLMSGHDR.unpack_from(buf, off)
                if length < _NLMSGHDR.size or off + length > n:
                    raise OSError(errno.EBADMSG, f"malformed rtnetlink message (length {length} at offset {off} "
                                                 f"of {n}): the route dump is not complete")
                if mseq == seq:
                    interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                    if mtype == NLMSG_DONE:
                        return out, per_table, interrupted
                    if mtype == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", buf, off + _NLMSGHDR.size)[0]
                        if code:
                            raise OSError(code, os.strerror(code))
                        return out, per_table, interrupted
                    if mtype == RTM_NEWROUTE:
                        route = decode_route(buf, off + _NLMSGHDR.size, off + length)
                        if route is not None:
                            per_table[route.table] += 1
                            if keep is None or len(out) < keep:
                                out.append(route)
                off += (length + 3) & ~3
    finally:
        sock.close()
