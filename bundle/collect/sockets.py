"""Sockets slice: every TCP/UDP socket (sock_diag), owners (/proc/*/fd), listeners with bind scope,
state counts sampled as a trend, and a bounded TCP connect probe per target.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
import time
from collections import Counter
from typing import Any

import pydantic_core

from bundle.collect import connect
from bundle.collect.base import Artifact, Collector, ResolvedTarget, SliceContext, SliceResult
from bundle.collect.owners import Holder, OwnerMap, scan_owners
from bundle.models import (
    BindScope,
    Listener,
    MediaType,
    MissingReason,
    Provenance,
    SliceStatus,
    SocketsSlice,
    StateSample,
    Unavailable,
)
from bundle.netlink.sockdiag import TOTAL_RETRANS, DiagSocket, dump_all, tcp_info

DEFAULT_ROWS = 20_000
# ~450 bytes a row in JSON: 100,000 rows stay well under the reader's 64 MiB document limit, so `validate`
# can always parse the table it is given.
MAX_TABLE_ROWS = 100_000
FOCUS_ROWS = 2_000
# States that point at a fault: the rows of these (beside the targets') are what a reader of the report needs.
_TROUBLE = frozenset({"SYN-SENT", "SYN-RECV", "CLOSE-WAIT", "LAST-ACK", "FIN-WAIT-1", "CLOSING"})
DEFAULT_SAMPLES = 3
DEFAULT_INTERVAL_S = 1.0
_PROTO = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}


def bind_scope(address: str) -> BindScope:
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified:
        return BindScope.WILDCARD
    if ip.is_loopback or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped and ip.ipv4_mapped.is_loopback):
        return BindScope.LOOPBACK
    return BindScope.SPECIFIC


def _is_target_row(s: DiagSocket, targets: tuple[ResolvedTarget, ...]) -> bool:
    """Client side (to the target) or server side (on the target's port, or its address when no port)."""
    for t in targets:
        if t.port is None:
            if s.remote in t.forms or s.local in t.forms:
                return True
        elif (s.remote in t.forms and s.rport == t.port) or s.lport == t.port:
            return True
    return False


_NO_INODE = Unavailable(unavailable=MissingReason.NOT_APPLICABLE,
                        detail="no socket inode (TIME-WAIT or a pending connection request)")


def _owner_fields(s: DiagSocket, owners: OwnerMap) -> tuple[list[Holder], Unavailable | None]:
    if s.inode == 0:
        return [], _NO_INODE
    found = owners.by_inode.get(s.inode)
    if found:
        return list(found), None
    if owners.scan.denied:
        return [], Unavailable(unavailable=MissingReason.NOT_PERMITTED,
                               detail=f"owner unknown: not permitted ({owners.scan.denied} processes unreadable "
                                      f"as uid {owners.scan.uid})")
    return [], Unavailable(unavailable=MissingReason.NOT_VISIBLE,
                           detail="no process visible from this pid namespace holds it")


def _row(s: DiagSocket, owners: OwnerMap, ifnames: dict[int, str]) -> dict[str, Any]:
    """One row of the `sockets` table, already in its JSON shape (the `Socket` model's fields, in order).

    Rows are the one large table of the slice: building tens of thousands of pydantic objects would cost
    more than the kernel dump and the /proc walk together, so rows go straight to JSON and the reader
    validates them against `Socket` on load (every test reads its bundles back that way).
    """
    found, unknown = _owner_fields(s, owners)
    return {
        "protocol": _PROTO[s.protocol], "family": s.family, "state": s.state, "local": s.local, "lport": s.lport,
        "remote": s.remote, "rport": s.rport, "recv_q": s.rqueue, "send_q": s.wqueue, "timer": s.timer,
        "timer_expires_ms": s.expires_ms, "retransmits": s.retrans, "uid": s.uid, "inode": s.inode,
        "cookie": s.cookie, "interface": ifnames.get(s.ifindex) if s.ifindex else None,
        "owners": [{"pid": o.pid, "command": o.command, "fd": o.fd} for o in found],
        "owner_unknown": None if unknown is None else {"unavailable": unknown.unavailable.value,
                                                       "detail": unknown.detail},
        "tcp": None if s.tcp is None else tcp_info(s.tcp),
    }


def _sample(socks: list[DiagSocket], at: float, targets: tuple[ResolvedTarget, ...]) -> StateSample:
    tcp: Counter[str] = Counter()
    udp: Counter[str] = Counter()
    retrans = 0
    per_target: dict[str, Counter[str]] = {t.spec: Counter() for t in targets}
    for s in socks:
        if s.protocol == socket.IPPROTO_TCP:
            tcp[s.state] += 1
            if s.tcp is not None:
                retrans += s.tcp[TOTAL_RETRANS]
            for t in targets:
                if s.remote in t.forms and (t.port is None or s.rport == t.port):
                    per_target[t.spec][s.state] += 1
        else:
            udp[s.state] += 1
    return StateSample(at_s=round(at, 3), tcp=dict(tcp), udp=dict(udp), retransmits=retrans,
                       to_targets={k: dict(v) for k, v in per_target.items()})


def _ifnames() -> dict[int, str]:
    return {index: name for index, name in socket.if_nameindex()}


class SocketsCollector(Collector):
    name = "sockets"
    description = "TCP/UDP sockets with owners, listeners and bind scope, state trend, TCP connect probes"

    def collect(self, ctx: SliceContext) -> SliceResult:
        started = time.monotonic()
        samples_wanted = max(1, ctx.options.socket_samples or DEFAULT_SAMPLES)
        interval = max(0.0, DEFAULT_INTERVAL_S if ctx.options.socket_interval is None else ctx.options.socket_interval)
        row_limit = max(0, DEFAULT_ROWS if ctx.options.socket_rows is None else ctx.options.socket_rows)
        reasons: list[str] = []

        first = dump_all()
        samples = [_sample(first, 0.0, ctx.targets)]
        ctx.probe_gate()  # the table above holds no other slice's probe sockets
        more, cut = ctx.trend(started, samples_wanted, interval,
                              lambda: _sample(dump_all(with_tcp_info=True), time.monotonic() - started, ctx.targets))
        samples += more
        if cut:
            reasons.append(f"state trend cut to {len(samples)} samples by the deadline")

        keep: list[DiagSocket] = []
        others: list[DiagSocket] = []
        bound: list[DiagSocket] = []
        for s in first:
            (keep if _is_target_row(s, ctx.targets) else others).append(s)
            if (s.protocol == socket.IPPROTO_TCP and s.state == "LISTEN") or (
                    s.protocol == socket.IPPROTO_UDP and s.state == "UNCONN" and s.rport == 0):
                bound.append(s)
        keep = keep[:MAX_TABLE_ROWS]  # even the targets' rows: the table must stay readable (see MAX_TABLE_ROWS)
        kept = keep + others[: max(0, min(row_limit, MAX_TABLE_ROWS) - len(keep))]
        owners = scan_owners({s.inode for s in kept + bound if s.inode})
        ifnames = _ifnames()
        rows = [_row(s, owners, ifnames) for s in kept]
        counts = Counter(f"{_PROTO[s.protocol]} {s.state}" for s in first)
        listeners = []
        for s in bound:
            found, unknown = _owner_fields(s, owners)
            listeners.append(Listener(protocol=_PROTO[s.protocol], local=s.local, lport=s.lport,
                                      scope=bind_scope(s.local), recv_q=s.rqueue, send_q=s.wqueue,
                                      owners=[h.model() for h in found], owner_unknown=unknown))
        notes = []
        if not owners.scan.complete:
            # Every row is still there; only the owner column is limited, and each row says so.
            notes.append(f"owners hidden: {owners.scan.denied} of {owners.scan.processes} processes unreadable "
                         f"as uid {owners.scan.uid}")

        probes = []
        if not ctx.passive:
            ported = [t for t in ctx.targets if t.port is not None]
            if ported:
                timeout = min(2.0, max(0.2, (ctx.remaining() - 0.5) / 2))
                jobs = [(t.spec, t.address, t.port or 0) for t in ported]
                # The sidecar case: a target port served here on loopback only gets an in-netns check too.
                for t in ported:
                    for lst in listeners:
                        if lst.protocol == "tcp" and lst.lport == t.port and lst.scope is BindScope.LOOPBACK:
                            jobs.append((f"loopback {lst.local}:{lst.lport}", lst.local, lst.lport))
                with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
                    futures = [pool.submit(connect.probe, spec, addr, port, 2, timeout) for spec, addr, port in jobs]
                    probes = [f.result() for f in futures]

        hidden = 0
        close_wait: Counter[str] = Counter()
        for r in rows:
            if r["owner_unknown"] is not None and r["owner_unknown"]["unavailable"] == "not_permitted":
                hidden += 1
            if r["state"] == "CLOSE-WAIT":
                close_wait.update(o["command"] for o in r["owners"])
        focus = rows[:len(keep)] + [r for r in rows[len(keep):] if r["state"] in _TROUBLE]
        table = f"vantages/{ctx.vantage_id}/socket-table.json" if rows else None
        doc = SocketsSlice(
            sockets=[], focus_limit=FOCUS_ROWS, table=table, total=len(first), kept=len(rows),
            dropped=len(first) - len(rows), row_limit=row_limit, counts=dict(sorted(counts.items())),
            owners_hidden=hidden, close_wait_owners=dict(close_wait.most_common()), listeners=listeners,
            samples=samples, probes=probes, owner_scan=owners.scan, active_probes=not ctx.passive,
        )
        data = doc.model_dump(mode="json")
        data["sockets"] = focus[:FOCUS_ROWS]
        source = "sock_diag SOCK_DIAG_BY_FAMILY dumps (TCP/UDP, IPv4/IPv6, tcp_info), /proc/*/fd"
        duration = round(time.monotonic() - started, 6)
        art = Artifact(name="sockets.json", data=pydantic_core.to_json(data), media_type=MediaType.SOCKETS,
                       provenance=Provenance(source=f"{source}, TCP connect probes", duration_s=duration))
        art.provenance.truncated = doc.dropped > 0 or len(focus) > FOCUS_ROWS
        arts = [art]
        if rows:
            # Rows go straight to JSON: the reader validates them against SocketTable when it loads the table.
            arts.append(Artifact(name="socket-table.json", data=pydantic_core.to_json({"sockets": rows}),
                                 media_type=MediaType.SOCKET_TABLE,
                                 provenance=Provenance(source=source, duration_s=duration,
                                                       truncated=doc.dropped > 0)))
        status = SliceStatus.PARTIAL if reasons else SliceStatus.COMPLETE
        return SliceResult(status=status, artifacts=arts, reason="; ".join(reasons + notes) or None)
