"""Bounded ICMP echo and DF-sized MTU sweep over a raw socket.

The sweep does not wait for "fragmentation needed": in a PMTU blackhole that
message never arrives. It binary-searches the largest DF echo that gets a
reply, retrying each silence once, under a hard time budget.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from bundle.models import IcmpError, MissingReason, MtuProbe, MtuSweep, PingResult, SweepStatus, Unavailable

IP_MTU_DISCOVER = 10
IP_PMTUDISC_PROBE = 3  # set DF, ignore the cached path MTU
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_PROBE = 3

_V4_ERRORS = {3: "destination unreachable", 11: "time exceeded", 12: "parameter problem"}
_V4_UNREACH = {
    0: "net unreachable", 1: "host unreachable", 2: "protocol unreachable", 3: "port unreachable",
    4: "fragmentation needed", 9: "net prohibited", 10: "host prohibited", 13: "administratively prohibited",
}
_V6_ERRORS = {1: "destination unreachable", 2: "packet too big", 3: "time exceeded", 4: "parameter problem"}
_V6_UNREACH = {0: "no route", 1: "administratively prohibited", 3: "address unreachable", 4: "port unreachable"}


def overhead(family: int) -> int:
    """IP + ICMP header bytes around an echo payload."""
    return 28 if family == 4 else 48


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of an ICMP message."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return int(~s & 0xFFFF)


def echo_request(family: int, ident: int, seq: int, body: bytes) -> bytes:
    """An ICMP (or ICMPv6) echo request; the kernel fills the ICMPv6 checksum on a raw socket."""
    if family == 4:
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        return struct.pack("!BBHHH", 8, 0, checksum(hdr + body), ident, seq) + body
    return struct.pack("!BBHHH", 128, 0, 0, ident, seq) + body


@dataclass
class EchoOutcome:
    passed: bool
    rtt_ms: float | None = None
    error: IcmpError | None = None
    local_error: str | None = None


class IcmpProber:
    """One raw ICMP socket; replies are matched on our identifier and sequence."""

    def __init__(self, family: int) -> None:
        self.family = family
        if family == 4:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        else:
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        self.sock.setblocking(False)
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> IcmpProber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_df(self, df: bool) -> None:
        if self.family == 4:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE if df else 0)
        else:
            self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE if df else 0)

    def echo(self, dst: str, payload: int, timeout: float) -> EchoOutcome:
        self.seq = (self.seq + 1) & 0xFFFF
        seq = self.seq
        pkt = echo_request(self.family, self.ident, seq, bytes((i & 0xFF for i in range(payload))))
        start = time.monotonic()
        try:
            self.sock.sendto(pkt, (dst, 0))
        except OSError as exc:
            return EchoOutcome(False, local_error=f"{errno.errorcode.get(exc.errno or 0, '')}: {exc.strerror}")
        end = start + timeout
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                continue
            except OSError as exc:
                return EchoOutcome(False, local_error=exc.strerror)
            got = self._match(data, addr[0], seq)
            if got is None or got is False:
                continue
            rtt = round((time.monotonic() - start) * 1000, 3)
            if isinstance(got, IcmpError):
                return EchoOutcome(False, rtt_ms=rtt, error=got)
            return EchoOutcome(True, rtt_ms=rtt)
        return EchoOutcome(False)

    def _match(self, data: bytes, src: str, seq: int) -> IcmpError | bool | None:
        """True for our echo reply, an IcmpError for an error about our echo, None otherwise."""
        if self.family == 4:
            if len(data) < 20:
                return None
            ihl = (data[0] & 0x0F) * 4
            icmp = data[ihl:]
            if len(icmp) < 8:
                return None
            typ, code = icmp[0], icmp[1]
            if typ == 0:
                ident, s = struct.unpack("!HH", icmp[4:8])
                return True if (ident, s) == (self.ident, seq) else None
            if typ in _V4_ERRORS:
                inner = icmp[8:]
                if len(inner) < 20 or inner[9] != 1:
                    return None
                iihl = (inner[0] & 0x0F) * 4
                echo = inner[iihl : iihl + 8]
                if len(echo) < 8 or echo[0] != 8 or struct.unpack("!HH", echo[4:8]) != (self.ident, seq):
                    return None
                mtu = struct.unpack("!H", icmp[6:8])[0] if (typ, code) == (3, 4) else None
                desc = _V4_UNREACH.get(code, f"code {code}") if typ == 3 else _V4_ERRORS[typ]
                return IcmpError(source=src, type=typ, code=code, description=desc, mtu=mtu)
            return None
        if len(data) < 8:
            return None
        typ, code = data[0], data[1]
        if typ == 129:
            return True if struct.unpack("!HH", data[4:8]) == (self.ident, seq) else None
        if typ in _V6_ERRORS:
            inner = data[8:]
            echo = inner[40:48]
            if len(inner) < 48 or inner[6] != 58 or echo[0] != 128 or struct.unpack("!HH", echo[4:8]) != (self.ident, seq):
                return None
            mtu = struct.unpack("!I", data[4:8])[0] if typ == 2 else None
            desc = _V6_UNREACH.get(code, f"code {code}") if typ == 1 else _V6_ERRORS[typ]
            return IcmpError(source=src.split("%")[0], type=typ, code=code, description=desc, mtu=mtu)
        return None


def family_of(address: str) -> int:
    return ipaddress.ip_address(address).version


def ping(dst: str, count: int = 2, timeout: float = 1.0, payload: int = 56) -> PingResult:
    """`ping -c 2`: small echoes, DF off, errors kept."""
    try:
        prober = IcmpProber(family_of(dst))
    except PermissionError as exc:
        return PingResult(
            target=dst, sent=0, received=0, rtts_ms=[], errors=[],
            unavailable=Unavailable(unavailable=MissingReason.NOT_PERMITTED, detail=f"raw ICMP socket: {exc.strerror}"),
        )
    rtts: list[float] = []
    errors: list[IcmpError] = []
    with prober:
        for _ in range(count):
            out = prober.echo(dst, payload, timeout)
            if out.passed and out.rtt_ms is not None:
                rtts.append(out.rtt_ms)
            elif out.error is not None:
                errors.append(out.error)
    return PingResult(target=dst, sent=count, received=len(rtts), rtts_ms=rtts, errors=errors)


def mtu_sweep(
    dst: str,
    egress_mtu: int,
    egress_dev: str | None,
    budget_s: float = 12.0,
    rtt_ms: float | None = None,
) -> MtuSweep:
    """Binary-search the largest DF echo payload that gets a reply, within budget_s."""
    started = time.monotonic()
    deadline = started + budget_s
    fam = family_of(dst)
    timeout = min(1.0, max(0.3, 5 * (rtt_ms or 0) / 1000))
    probes: list[MtuProbe] = []
    frag: IcmpError | None = None

    def result(status: SweepStatus, lo: int | None, hi: int | None, unavailable: Unavailable | None = None) -> MtuSweep:
        return MtuSweep(
            target=dst, status=status, egress_dev=egress_dev, egress_mtu=egress_mtu,
            largest_pass=lo, smallest_fail=hi,
            path_mtu=(lo + overhead(fam)) if status in (SweepStatus.FOUND, SweepStatus.ALL_PASS) and lo is not None else None,
            frag_needed=frag, probes=probes, probe_timeout_s=timeout,
            duration_s=round(time.monotonic() - started, 3), unavailable=unavailable,
        )

    try:
        prober = IcmpProber(fam)
    except PermissionError as exc:
        return result(SweepStatus.UNAVAILABLE, None, None,
                      Unavailable(unavailable=MissingReason.NOT_PERMITTED, detail=f"raw ICMP socket: {exc.strerror}"))
    with prober:
        prober.set_df(True)

        def passes(size: int) -> bool | None:
            """Two tries; None when the budget ran out first."""
            nonlocal frag
            for _ in range(2):
                if time.monotonic() + timeout > deadline:
                    return None
                out = prober.echo(dst, size, timeout)
                probes.append(MtuProbe(payload=size, passed=out.passed, rtt_ms=out.rtt_ms, error=out.error))
                if out.passed:
                    return True
                if out.error is not None:
                    if out.error.mtu is not None:
                        frag = out.error
                    return False
                if out.local_error is not None:
                    return False
            return False

        lo, hi = 56, egress_mtu - overhead(fam)
        first = passes(lo)
        if first is None:
            return result(SweepStatus.CUT, None, None)
        if not first:
            return result(SweepStatus.NO_REPLY, None, lo)
        top = passes(hi)
        if top is None:
            return result(SweepStatus.CUT, lo, None)
        if top:
            return result(SweepStatus.ALL_PASS, hi, None)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            ok = passes(mid)
            if ok is None:
                return result(SweepStatus.CUT, lo, hi)
            if ok:
                lo = mid
            else:
                hi = mid
        return result(SweepStatus.FOUND, lo, hi)
