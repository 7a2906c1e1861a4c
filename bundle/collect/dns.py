"""DNS slice: resolv.conf as the vantage sees it, the exact query plan of glibc's resolver for each name,
sent for real from inside the netns, with rcodes and latencies; the FQDN asked directly for comparison."""

from __future__ import annotations

import ipaddress
import socket
import time
from pathlib import Path

from pyroute2 import IPRoute

from bundle.collect.base import Artifact, Collector, SliceContext, SliceResult
from bundle.collect.dnswire import Exchanger
from bundle.collect.resolvconf import parse, plan
from bundle.models import (
    DirectCheck,
    DnsQuery,
    DnsSlice,
    MediaType,
    MissingReason,
    NameReport,
    Outcome,
    Provenance,
    Resolution,
    ResolvConf,
    SliceStatus,
    Unavailable,
)
from bundle.netlink.sockdiag import dump

MAX_NAMES = 20
MAX_QUERIES_PER_NAME = 64
NODELOCAL = ipaddress.ip_network("169.254.0.0/16")
_ADDRESS_TYPES = ("A", "AAAA")


def resolv_conf_path(kind: str, ref: str | None) -> Path:
    """Where a process in this vantage finds resolv.conf (as `ip netns exec` and containers arrange it)."""
    if kind == "netns_name" and ref:
        own = Path("/etc/netns") / ref / "resolv.conf"
        if own.exists():
            return own
    if kind == "netns_pid" and ref:
        return Path(f"/proc/{ref}/root/etc/resolv.conf")
    return Path("/etc/resolv.conf")


def query_families() -> list[str]:
    """What getaddrinfo(AF_UNSPEC, AI_ADDRCONFIG) asks here: A if a non-loopback IPv4 address exists, AAAA if a
    non-loopback IPv6 one does (glibc's check_pf counts link-local)."""
    v4 = v6 = False
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if msg["family"] == socket.AF_INET and addr != "127.0.0.1":
                v4 = True
            elif msg["family"] == socket.AF_INET6 and addr != "::1":
                v6 = True
    return [t for t, on in (("A", v4), ("AAAA", v6)) if on]


def _nodelocal(conf: ResolvConf) -> str | None:
    local = [ns for ns in conf.nameservers if ipaddress.ip_address(ns) in NODELOCAL]
    if local:
        return (f"nameserver {local[0]} is link-local: a NodeLocal DNSCache answers here, so both the cache and "
                f"the cluster DNS behind it (the kube-dns Service) must be checked (--dns-server)")
    try:
        for s in dump(socket.AF_INET, socket.IPPROTO_UDP, with_tcp_info=False):
            if s.lport == 53 and ipaddress.ip_address(s.local) in NODELOCAL:
                return (f"a DNS cache listens on {s.local}:53 in this netns (NodeLocal DNSCache): pods using it "
                        f"depend on it and on the cluster DNS behind it")
    except OSError:
        pass
    return None


def _addresses(queries: list[DnsQuery]) -> list[str]:
    return list(dict.fromkeys(a.data for q in queries for a in q.answers if a.type in _ADDRESS_TYPES))


def _candidate_outcome(queries: list[DnsQuery]) -> Outcome:
    """How glibc's search loop reads one candidate's answers (A and AAAA together)."""
    final = {q.qtype: q for q in queries}  # the last word per type
    if any(a.type in _ADDRESS_TYPES for q in final.values() for a in q.answers):
        return Outcome.ANSWERED
    codes = {q.rcode for q in final.values()}
    if not final:
        return Outcome.CUT
    if any(q.timeout for q in final.values()):
        return Outcome.TIMEOUT
    if any((q.rcode or "").startswith(("ICMP", "SEND-ERROR")) for q in final.values()):
        return Outcome.UNREACHABLE
    if codes == {"NXDOMAIN"}:
        return Outcome.NXDOMAIN
    if codes <= {"NOERROR", "NXDOMAIN"}:
        return Outcome.NODATA
    if "SERVFAIL" in codes:
        return Outcome.SERVFAIL
    if "REFUSED" in codes:
        return Outcome.REFUSED
    return Outcome.ERROR


def resolve(name: str, conf: ResolvConf, families: list[str], ex: Exchanger) -> Resolution:
    """__res_context_search: stop on an answer, a timeout or a hard error; NXDOMAIN and NODATA go on."""
    steps = plan(name, conf, families)
    started = time.monotonic()
    queries: list[DnsQuery] = []
    outcome = Outcome.NXDOMAIN
    got_nodata = got_servfail = False
    answered_by = None
    for cand in steps:
        if time.monotonic() >= ex.deadline:
            outcome = Outcome.CUT
            break
        sent = ex.ask(cand.name, cand.qtypes, conf.nameservers, MAX_QUERIES_PER_NAME - len(queries))
        queries += sent
        result = _candidate_outcome(sent)
        if result is Outcome.ANSWERED:
            outcome, answered_by = result, cand.name
            break
        if result is Outcome.NODATA:
            got_nodata = True
            continue
        if result is Outcome.SERVFAIL:
            got_servfail = True
            continue
        if result is Outcome.NXDOMAIN:
            continue
        outcome = result  # timeout, refused, error, cut: glibc stops here
        break
    else:
        outcome = Outcome.NODATA if got_nodata else Outcome.SERVFAIL if got_servfail else Outcome.NXDOMAIN
    return Resolution(name=name, candidates=steps, expected_queries=sum(len(c.qtypes) for c in steps),
                      queries=queries, outcome=outcome, answered_by=answered_by,
                      addresses=_addresses(queries) if outcome is Outcome.ANSWERED else [],
                      total_ms=round((time.monotonic() - started) * 1000, 3))


def direct(fqdn: str, server: str, families: list[str], ex: Exchanger) -> DirectCheck:
    started = time.monotonic()
    sent = ex.ask(fqdn, families, [server], MAX_QUERIES_PER_NAME)
    outcome = _candidate_outcome(sent)
    return DirectCheck(fqdn=fqdn, server=server, queries=sent, outcome=outcome,
                       addresses=_addresses(sent) if outcome is Outcome.ANSWERED else [],
                       total_ms=round((time.monotonic() - started) * 1000, 3))


class DnsCollector(Collector):
    name = "dns"
    description = "resolv.conf as this vantage sees it, glibc's query plan per name, sent for real"

    def collect(self, ctx: SliceContext) -> SliceResult:
        started = time.monotonic()
        names = [n for n in (ctx.option("dns_names") or "").split(",") if n][:MAX_NAMES]
        alt = ctx.option("dns_server")
        path = resolv_conf_path(ctx.option("vantage_kind") or "host", ctx.option("vantage_ref"))
        artifacts: list[Artifact] = []
        reasons: list[str] = []
        conf: ResolvConf | None = None
        unavailable = None
        try:
            raw = path.read_bytes()[:65536]
            artifacts.append(Artifact(name="resolv.conf", data=raw, media_type=MediaType.RESOLV_CONF,
                                      provenance=Provenance(source=f"read {path}")))
            conf = parse(raw.decode("utf-8", "replace"), str(path), socket.gethostname())
        except PermissionError as exc:
            unavailable = Unavailable(unavailable=MissingReason.NOT_PERMITTED, detail=f"{path}: {exc.strerror}")
        except OSError as exc:
            unavailable = Unavailable(unavailable=MissingReason.ERROR, detail=f"{path}: {exc.strerror}")
        if unavailable is not None:
            reasons.append(f"resolv.conf unreadable: {unavailable.detail}")
        families = query_families()
        nodelocal = _nodelocal(conf) if conf else None
        if not ctx.passive and names:
            ctx.probe_gate()
        reports: list[NameReport] = []
        if conf is not None:
            ex = Exchanger(conf.options, deadline=ctx.deadline - 0.5,
                           max_wait=float(ctx.option("dns_timeout") or 0) or None)
            for name in names:
                if ctx.passive:
                    steps = plan(name, conf, families)
                    res = Resolution(name=name, candidates=steps, expected_queries=sum(len(c.qtypes) for c in steps),
                                     queries=[], outcome=Outcome.CUT, total_ms=0.0)
                    reports.append(NameReport(name=name, resolution=res))
                    continue
                res = resolve(name, conf, families, ex)
                fqdn = res.answered_by or (res.candidates[0].name if res.candidates else name.rstrip("."))
                report = NameReport(name=name, resolution=res)
                pointless = res.outcome in (Outcome.TIMEOUT, Outcome.UNREACHABLE) and fqdn == res.candidates[0].name
                if not name.endswith(".") and not pointless:
                    report.fqdn = direct(fqdn, conf.nameservers[0], families, ex)
                if alt:
                    report.alternate = direct(fqdn, alt, families, ex)
                reports.append(report)
                if res.outcome is Outcome.CUT:
                    reasons.append(f"queries for {name} cut by the deadline")
            if conf.defaulted_nameserver:
                reasons.append("resolv.conf names no nameserver: glibc falls back to 127.0.0.1")
            if names and not ctx.passive and all(r.resolution.outcome in (Outcome.TIMEOUT, Outcome.UNREACHABLE)
                                                 for r in reports):
                reasons.append(f"no nameserver answered ({', '.join(conf.nameservers)})")
        doc = DnsSlice(resolv_conf=conf, resolv_conf_unavailable=unavailable, query_families=families,
                       nodelocal=nodelocal, names=reports, active_probes=not ctx.passive)
        artifacts.append(Artifact.document("dns.json", doc, MediaType.DNS,
                                           f"{path}, getaddrinfo plan, DNS queries over UDP/TCP", started))
        status = SliceStatus.PARTIAL if reasons else SliceStatus.COMPLETE
        return SliceResult(status=status, artifacts=artifacts, reason="; ".join(reasons) or None)
