"""Send DNS queries the way glibc's res_send does: per try, each server in turn; A and AAAA together on one
socket unless single-request; a truncated answer retried over TCP; wire format by dpkt."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from dataclasses import dataclass

import dpkt

from bundle.models import Answer, DnsQuery, ResolvOptions

QTYPES = {"A": dpkt.dns.DNS_A, "AAAA": dpkt.dns.DNS_AAAA}
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_NEXT_SERVER = {"SERVFAIL", "NOTIMP", "REFUSED"}  # res_send moves on to the next server for these


def _query(qname: str, qtype: str, qid: int) -> bytes:
    msg = dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=qname, type=QTYPES[qtype])])
    msg.rd = 1
    return bytes(msg)


def _answers(msg: dpkt.dns.DNS) -> list[Answer]:
    out = []
    for rr in msg.an:
        if rr.type == dpkt.dns.DNS_A:
            data = socket.inet_ntop(socket.AF_INET, rr.ip)
        elif rr.type == dpkt.dns.DNS_AAAA:
            data = socket.inet_ntop(socket.AF_INET6, rr.ip6)
        elif rr.type == dpkt.dns.DNS_CNAME:
            data = rr.cname
        else:
            continue
        kind = {dpkt.dns.DNS_A: "A", dpkt.dns.DNS_AAAA: "AAAA", dpkt.dns.DNS_CNAME: "CNAME"}[rr.type]
        out.append(Answer(name=rr.name, type=kind, ttl=rr.ttl, data=data))
    return out


def _parse(data: bytes) -> dpkt.dns.DNS | None:
    try:
        return dpkt.dns.DNS(data)
    except (dpkt.UnpackError, struct.error, IndexError, ValueError):
        return None


def _tcp_exchange(server: str, payload: bytes, timeout: float) -> bytes | None:
    try:
        with socket.create_connection((server, 53), timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(payload)) + payload)
            head = s.recv(2)
            if len(head) < 2:
                return None
            need = struct.unpack("!H", head)[0]
            buf = b""
            while len(buf) < need:
                chunk = s.recv(need - len(buf))
                if not chunk:
                    return None
                buf += chunk
            return buf
    except OSError:
        return None


@dataclass
class _Pending:
    qtype: str
    qid: int
    payload: bytes
    sent_at: float = 0.0
    tries: int = 0


class Exchanger:
    """Bounded by a deadline; each wait is glibc's (timeout << try) / nservers, at least 1 s, capped."""

    def __init__(self, options: ResolvOptions, deadline: float, max_wait: float | None = None) -> None:
        self.options = options
        self.deadline = deadline
        self.max_wait = max_wait
        self.rotation = 0

    def _wait(self, try_index: int, nservers: int) -> float:
        seconds = self.options.timeout << try_index
        if try_index > 0:
            seconds //= nservers
        seconds = max(1, seconds)
        wait = float(seconds) if self.max_wait is None else min(float(seconds), self.max_wait)
        return max(0.0, min(wait, self.deadline - time.monotonic()))

    def ask(self, qname: str, qtypes: list[str], servers: list[str], budget: int) -> list[DnsQuery]:
        """All of qtypes for one name; returns every query sent (retries included), in order."""
        if not qtypes or budget <= 0:
            return []
        order = list(servers)
        if self.options.rotate and len(order) > 1:
            k = self.rotation % len(order)
            order = order[k:] + order[:k]
            self.rotation += 1
        pending = {q: _Pending(q, int.from_bytes(os.urandom(2), "big"), b"") for q in qtypes}
        for p in pending.values():
            p.payload = _query(qname, p.qtype, p.qid)
        done: list[DnsQuery] = []
        parallel = not (self.options.single_request or self.options.single_request_reopen)
        for try_index in range(self.options.attempts):
            for si, server in enumerate(order):
                if not pending or len(done) >= budget:
                    return done
                last_server = si == len(order) - 1 and try_index == self.options.attempts - 1
                groups = [list(pending.values())] if parallel else [[p] for p in pending.values()]
                for group in groups:
                    wait = self._wait(try_index, len(order))
                    if wait <= 0:
                        return done
                    for q in self._send_group(qname, server, group, wait):
                        done.append(q)
                        if q.rcode is not None and (q.rcode not in _NEXT_SERVER or last_server or len(order) == 1):
                            pending.pop(q.qtype, None)
        return done

    def _send_group(self, qname: str, server: str, group: list[_Pending], wait: float) -> list[DnsQuery]:
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        results: dict[str, DnsQuery] = {}
        try:
            try:
                sock.connect((server, 53))
            except OSError as exc:  # no route to the server: glibc's sendto fails the same way
                for p in group:
                    p.tries += 1
                    results[p.qtype] = DnsQuery(qname=qname, qtype=p.qtype, server=server,
                                                rcode=f"SEND-ERROR {exc.strerror}", latency_ms=0.0, tries=p.tries)
                return [results[p.qtype] for p in group]
            for p in group:
                p.sent_at = time.monotonic()
                p.tries += 1
                try:
                    sock.send(p.payload)
                except OSError as exc:
                    results[p.qtype] = DnsQuery(qname=qname, qtype=p.qtype, server=server,
                                                rcode=f"SEND-ERROR {exc.strerror}", latency_ms=0.0, tries=p.tries)
            by_id = {p.qid: p for p in group if p.qtype not in results}
            end = time.monotonic() + wait
            while by_id and (left := end - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                try:
                    data = sock.recv(65535)
                except OSError as exc:  # ICMP port unreachable arrives as ECONNREFUSED on a connected socket
                    for p in list(by_id.values()):
                        results[p.qtype] = DnsQuery(qname=qname, qtype=p.qtype, server=server,
                                                    rcode=f"ICMP {exc.strerror}",
                                                    latency_ms=round((time.monotonic() - p.sent_at) * 1000, 3),
                                                    tries=p.tries)
                    by_id.clear()
                    break
                msg = _parse(data)
                if msg is None or msg.id not in by_id or not msg.qr:
                    continue
                p = by_id.pop(msg.id)
                tcp = False
                if msg.tc:
                    full = _tcp_exchange(server, p.payload, max(0.5, end - time.monotonic()))
                    parsed = _parse(full) if full else None
                    if parsed is not None:
                        msg, tcp = parsed, True
                results[p.qtype] = DnsQuery(
                    qname=qname, qtype=p.qtype, server=server, rcode=_RCODES.get(msg.rcode, str(msg.rcode)),
                    answers=_answers(msg), latency_ms=round((time.monotonic() - p.sent_at) * 1000, 3),
                    truncated_retried_tcp=tcp, tries=p.tries)
            for p in by_id.values():
                results[p.qtype] = DnsQuery(qname=qname, qtype=p.qtype, server=server, timeout=True,
                                            latency_ms=round(wait * 1000, 3), tries=p.tries)
        finally:
            sock.close()
        return [results[p.qtype] for p in group if p.qtype in results]
