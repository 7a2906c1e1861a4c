"""Path discovery: TTL-stepped probes toward a target, as `traceroute -n -I` and `traceroute -n -T -p PORT` walk
it — ICMP echoes, and TCP SYNs to the target's own port so that a path that filters ICMP is still walked. Each
hop's responder is the source of the ICMP "time exceeded" it sends; the walk ends when the target answers (an
echo reply, a SYN-ACK or a RST), when a hop says "unreachable", or after a few silent hops in a row. Bounded in
hops, probes and time; one raw ICMP socket hears the errors for both kinds of probe.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time

from bundle.collect.icmp import echo_request, family_of
from bundle.models import MissingReason, PathHop, PathTrace, Unavailable

MAX_HOPS = 16
SILENT_STOP = 3  # silent hops in a row after which the walk stops
PROBE_TIMEOUT_S = 1.0
_TIME_EXCEEDED = {4: 11, 6: 3}
_UNREACHABLE = {4: 3, 6: 1}


def _quoted(data: bytes, family: int) -> tuple[int, int, bytes, bytes] | None:
    """(ICMP type, code, quoted destination address, the quoted transport header's first 8 bytes) of an ICMP
    error as a raw socket hands it (IPv4 with its IP header, IPv6 without)."""
    if family == 4:
        if len(data) < 20:
            return None
        icmp = data[(data[0] & 0x0F) * 4:]
        if len(icmp) < 8 + 20:
            return None
        inner = icmp[8:]
        ihl = (inner[0] & 0x0F) * 4
        return icmp[0], icmp[1], bytes([inner[9]]) + inner[16:20], inner[ihl:ihl + 8]
    if len(data) < 8 + 40:
        return None
    inner = data[8:]
    return data[0], data[1], bytes([inner[6]]) + inner[24:40], inner[40:48]


class _Walker:
    def __init__(self, target: str, port: int | None, budget_s: float) -> None:
        self.family = family_of(target)
        self.target = target
        self.port = port
        self.deadline = time.monotonic() + budget_s
        af = socket.AF_INET if self.family == 4 else socket.AF_INET6
        proto = socket.IPPROTO_ICMP if self.family == 4 else socket.IPPROTO_ICMPV6
        self.errors = socket.socket(af, socket.SOCK_RAW, proto)  # hears time exceeded for every probe
        self.errors.setblocking(False)
        self.dst_raw = socket.inet_pton(af, target)
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.sports: list[int] = []  # the walk's own packets, so the capture analysis can leave them out

    def close(self) -> None:
        self.errors.close()

    def _ttl(self, sock: socket.socket, ttl: int) -> None:
        if self.family == 4:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)

    def _error(self, proto: int, match: bytes) -> tuple[str, int, int] | None:
        """(source, type, code) of an ICMP error about our probe, from what is queued on the raw socket."""
        while True:
            try:
                data, addr = self.errors.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return None
            q = _quoted(data, self.family)
            if q is None or q[0] not in (_TIME_EXCEEDED[self.family], _UNREACHABLE[self.family]):
                continue
            if q[2] == bytes([proto]) + self.dst_raw and q[3][:len(match)] == match:
                return addr[0].split("%")[0], q[0], q[1]

    def icmp(self, ttl: int) -> PathHop:
        seq = ttl
        pkt = echo_request(self.family, self.ident, seq, b"netbundle")
        proto, reply_type = (1, 0) if self.family == 4 else (58, 129)
        self._ttl(self.errors, ttl)
        start = time.monotonic()
        try:
            self.errors.sendto(pkt, (self.target, 0))
        except OSError as exc:
            return PathHop(ttl=ttl, kind="error", detail=exc.strerror or str(exc))
        match = pkt[4:8]  # identifier and sequence, at offset 4 of the quoted echo
        end = min(start + PROBE_TIMEOUT_S, self.deadline)
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.errors], [], [], left)
            if not ready:
                break
            try:
                data, addr = self.errors.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                continue
            icmp = data[(data[0] & 0x0F) * 4:] if self.family == 4 else data
            rtt = round((time.monotonic() - start) * 1000, 3)
            if len(icmp) >= 8 and icmp[0] == reply_type and icmp[4:8] == match and addr[0] == self.target:
                return PathHop(ttl=ttl, responder=self.target, kind="reply", rtt_ms=rtt)
            q = _quoted(data, self.family)
            if q is not None and q[2] == bytes([proto]) + self.dst_raw and q[3][4:8] == match:
                if q[0] in (_TIME_EXCEEDED[self.family], _UNREACHABLE[self.family]):
                    kind = "time exceeded" if q[0] == _TIME_EXCEEDED[self.family] else "unreachable"
                    return PathHop(ttl=ttl, responder=addr[0].split("%")[0], kind=kind, rtt_ms=rtt,
                                   detail=None if kind == "time exceeded" else f"code {q[1]}")
        return PathHop(ttl=ttl, kind="none")

    def tcp(self, ttl: int) -> PathHop:
        assert self.port is not None
        af = socket.AF_INET if self.family == 4 else socket.AF_INET6
        sock = socket.socket(af, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, no TIME-WAIT
            self._ttl(sock, ttl)
            start = time.monotonic()
            err = sock.connect_ex((self.target, self.port))
            if err not in (0, errno.EINPROGRESS):
                return PathHop(ttl=ttl, kind="error", detail=os.strerror(err))
            sport = sock.getsockname()[1]
            self.sports.append(sport)
            match = struct.pack("!HH", sport, self.port)
            end = min(start + PROBE_TIMEOUT_S, self.deadline)
            while (left := end - time.monotonic()) > 0:
                ready, writable, _ = select.select([self.errors], [sock], [], left)
                rtt = round((time.monotonic() - start) * 1000, 3)
                if ready:
                    got = self._error(6, match)
                    if got is not None:
                        source, typ, code = got
                        kind = "time exceeded" if typ == _TIME_EXCEEDED[self.family] else "unreachable"
                        return PathHop(ttl=ttl, responder=source, kind=kind, rtt_ms=rtt,
                                       detail=None if kind == "time exceeded" else f"code {code}")
                if writable:
                    status = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if status in (0, errno.ECONNREFUSED):
                        return PathHop(ttl=ttl, responder=self.target, kind="reply", rtt_ms=rtt,
                                       detail="SYN-ACK" if status == 0 else "RST")
                    if status not in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EINPROGRESS):
                        return PathHop(ttl=ttl, kind="error", detail=os.strerror(status))
                    if status != errno.EINPROGRESS:
                        # an unreachable counted by the kernel: its ICMP source is still on the raw socket
                        got = self._error(6, match)
                        return PathHop(ttl=ttl, responder=got[0] if got else None, kind="unreachable", rtt_ms=rtt,
                                       detail=os.strerror(status))
            return PathHop(ttl=ttl, kind="none")
        finally:
            sock.close()


def trace(target: str, port: int | None, budget_s: float = 8.0, max_hops: int = MAX_HOPS) -> PathTrace:
    """Walk the path to target with ICMP echoes (port None) or TCP SYNs to port."""
    protocol = "tcp" if port is not None else "icmp"
    started = time.monotonic()
    try:
        walker = _Walker(target, port, budget_s)
    except PermissionError as exc:
        return PathTrace(target=target, protocol=protocol, port=port, hops=[], reached=False,
                         stopped="not permitted", duration_s=0.0,
                         unavailable=Unavailable(unavailable=MissingReason.NOT_PERMITTED,
                                                 detail=f"raw ICMP socket: {exc.strerror}"))
    hops: list[PathHop] = []
    stopped = "max hops"
    try:
        silent = 0
        for ttl in range(1, max_hops + 1):
            if time.monotonic() + 0.05 > walker.deadline:
                stopped = "time budget"
                break
            hop = walker.tcp(ttl) if port is not None else walker.icmp(ttl)
            hops.append(hop)
            if hop.kind in ("reply", "unreachable", "error"):
                stopped = {"reply": "reached", "unreachable": "unreachable", "error": "error"}[hop.kind]
                break
            silent = silent + 1 if hop.kind == "none" else 0
            if silent >= SILENT_STOP:
                stopped = f"{SILENT_STOP} silent hops"
                break
    finally:
        walker.close()
    return PathTrace(target=target, protocol=protocol, port=port, hops=hops,
                     reached=bool(hops) and hops[-1].kind == "reply", stopped=stopped,
                     duration_s=round(time.monotonic() - started, 3),
                     icmp_id=walker.ident if port is None else None, tcp_sports=walker.sports)
