"""DNS slice: resolv.conf as the vantage sees it, the exact query plan of glibc's resolver for each name,
sent for real from inside the netns, with rcodes and latencies; the FQDN asked directly for comparison."""

from __future__ import annotations

import ipaddress
import socket
import time
from pathlib import Path

from pyroute2 import IPRoute

from bundle.collect.base import Artifact, Collector, ResolvedTarget, SliceContext, SliceResult
from bundle.collect.dnswire import Exchanger
from bundle.collect.resolvconf import parse, plan, walks
from bundle.models import (
    Candidate,
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
    Target,
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


NODELOCAL_LINK = "nodelocaldns"  # the dummy interface node-local-dns puts its listen addresses on (-interfacename)


def _nodelocal_link_addresses() -> list[str]:
    """Addresses on this netns's `nodelocaldns` link, both families (none when there is no such link)."""
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=NODELOCAL_LINK)
        if not index:
            return []
        return [str(msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"))
                for msg in ipr.get_addr(index=index[0])]


def _link_local(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip in NODELOCAL or (ip.version == 6 and ip.is_link_local)


def _nodelocal(conf: ResolvConf) -> str | None:
    """Why a NodeLocal DNSCache is suspected here. Its address is the operator's choice: IPv4 clusters take
    169.254.20.10 by convention, IPv6 ones any unique-local address (fd00::/8), so an IPv6 cache is known by
    the `nodelocaldns` link holding it or by a DNS listener on that link's addresses, not by its prefix."""
    try:
        on_link = _nodelocal_link_addresses()
    except OSError:
        on_link = []
    local = [ns for ns in conf.nameservers if _link_local(ns) or ns in on_link]
    if local:
        where = f"on this netns's {NODELOCAL_LINK} link" if local[0] in on_link else "link-local"
        return (f"nameserver {local[0]} is {where}: a NodeLocal DNSCache answers here, so both the cache and "
                f"the cluster DNS behind it (the kube-dns Service) must be checked (--dns-server)")
    try:
        for family in (socket.AF_INET, socket.AF_INET6):
            for s in dump(family, socket.IPPROTO_UDP, with_tcp_info=False):
                if s.lport == 53 and (s.local in on_link or _link_local(s.local)):
                    shown = f"[{s.local}]" if ":" in s.local else s.local
                    return (f"a DNS cache listens on {shown}:53 in this netns (NodeLocal DNSCache): pods using it "
                            f"depend on it and on the cluster DNS behind it")
    except OSError:
        pass
    if on_link:
        return (f"this netns has NodeLocal DNSCache's {NODELOCAL_LINK} link ({', '.join(on_link)}) but nothing "
                f"listens on port 53 there: pods sent to it get no answer")
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


_STOPS_NOTHING = (Outcome.NXDOMAIN, Outcome.NODATA, Outcome.SERVFAIL)


def _walk(cands: list[Candidate], conf: ResolvConf, ex: Exchanger, queries: list[DnsQuery]) -> tuple[Outcome, str | None]:
    """__res_context_search over one walk: stop on an answer, a timeout or a hard error; NXDOMAIN, NODATA and
    SERVFAIL go on to the next candidate."""
    got_nodata = got_servfail = False
    for cand in cands:
        if time.monotonic() >= ex.deadline:
            return Outcome.CUT, None
        sent = ex.ask(cand.name, cand.qtypes, conf.nameservers, MAX_QUERIES_PER_NAME - len(queries))
        queries += sent
        result = _candidate_outcome(sent)
        if result is Outcome.ANSWERED:
            return result, cand.name
        if result is Outcome.NODATA:
            got_nodata = True
        elif result is Outcome.SERVFAIL:
            got_servfail = True
        elif result is not Outcome.NXDOMAIN:
            return result, None  # timeout, refused, error, cut: glibc stops this walk here
    return (Outcome.NODATA if got_nodata else Outcome.SERVFAIL if got_servfail else Outcome.NXDOMAIN), None


def resolve(name: str, conf: ResolvConf, families: list[str], ex: Exchanger) -> Resolution:
    """The walks getaddrinfo makes (resolvconf.walks), in order, until one answers. Without an answer the
    outcome is the first walk's that stopped on a timeout or an error, else NODATA if any walk had it."""
    steps = walks(name, conf, families)
    started = time.monotonic()
    queries: list[DnsQuery] = []
    outcomes: list[Outcome] = []
    answered_by = None
    for walk in steps:
        result, answered_by = _walk(walk, conf, ex, queries)
        outcomes.append(result)
        if result in (Outcome.ANSWERED, Outcome.CUT):
            break
    stopped = [o for o in outcomes if o not in _STOPS_NOTHING]
    outcome: Outcome
    if outcomes[-1] in (Outcome.ANSWERED, Outcome.CUT):
        outcome = outcomes[-1]
    elif stopped:
        outcome = stopped[0]
    else:
        outcome = Outcome.NODATA if Outcome.NODATA in outcomes else \
            Outcome.SERVFAIL if Outcome.SERVFAIL in outcomes else Outcome.NXDOMAIN
    flat = [c for walk in steps for c in walk]
    return Resolution(name=name, candidates=flat, expected_queries=sum(len(c.qtypes) for c in flat),
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


def load_conf(kind: str, ref: str | None) -> tuple[Path, bytes | None, ResolvConf | None, Unavailable | None]:
    path = resolv_conf_path(kind, ref)
    try:
        raw = path.read_bytes()[:65536]
    except PermissionError as exc:
        return path, None, None, Unavailable(unavailable=MissingReason.NOT_PERMITTED, detail=f"{path}: {exc.strerror}")
    except OSError as exc:
        return path, None, None, Unavailable(unavailable=MissingReason.ERROR, detail=f"{path}: {exc.strerror}")
    return path, raw, parse(raw.decode("utf-8", "replace"), str(path), socket.gethostname()), None


def report_name(name: str, conf: ResolvConf, families: list[str], ex: Exchanger, alt: str | None) -> NameReport:
    """Resolve as glibc would, then ask the FQDN directly (and of the alternate server) for comparison."""
    res = resolve(name, conf, families, ex)
    fqdn = res.answered_by or (res.candidates[0].name if res.candidates else name.rstrip("."))
    report = NameReport(name=name, resolution=res)
    pointless = res.outcome in (Outcome.TIMEOUT, Outcome.UNREACHABLE) and fqdn == res.candidates[0].name
    if not name.endswith(".") and not pointless:
        report.fqdn = direct(fqdn, conf.nameservers[0], families, ex)
    if alt:
        report.alternate = direct(fqdn, alt, families, ex)
    return report


def resolve_targets(targets: list[Target], kind: str, ref: str | None, *, passive: bool, deadline: float,
                    max_wait: float | None) -> tuple[list[ResolvedTarget], list[NameReport], dict[str, list[str]]]:
    """Name targets resolved by this vantage's own resolver, before any slice runs: what its clients would
    dial is what route, sockets and probes look at. An unresolved name is left out (the DNS slice says why)."""
    out: list[ResolvedTarget] = []
    reports: list[NameReport] = []
    answers: dict[str, list[str]] = {}
    conf = None
    if any(t.name for t in targets) and not passive:
        _, _, conf, _ = load_conf(kind, ref)
    families = query_families() if conf is not None else []
    ex = Exchanger(conf.options, deadline=deadline, max_wait=max_wait) if conf is not None else None
    for t in targets:
        if t.address is not None:
            out.append(ResolvedTarget(spec=t.spec, address=t.address, port=t.port))
            continue
        assert t.name is not None
        if conf is None or ex is None:
            answers[t.name] = []
            continue
        report = report_name(t.name, conf, families, ex, None)
        reports.append(report)
        answers[t.name] = report.resolution.addresses
        if report.resolution.addresses:
            out.append(ResolvedTarget(spec=t.spec, address=report.resolution.addresses[0], port=t.port, name=t.name))
    return out, reports, answers


class DnsCollector(Collector):
    name = "dns"
    description = "resolv.conf as this vantage sees it, glibc's query plan per name, sent for real"

    def collect(self, ctx: SliceContext) -> SliceResult:
        started = time.monotonic()
        names = list(ctx.options.dns_names)[:MAX_NAMES]
        alt = ctx.options.dns_server
        path, raw, conf, unavailable = load_conf(ctx.vantage_kind, ctx.vantage_ref)
        artifacts: list[Artifact] = []
        reasons: list[str] = []
        if raw is not None:
            artifacts.append(Artifact(name="resolv.conf", data=raw, media_type=MediaType.RESOLV_CONF,
                                      provenance=Provenance(source=f"read {path}")))
        if unavailable is not None:
            reasons.append(f"resolv.conf unreadable: {unavailable.detail}")
        families = query_families()
        nodelocal = _nodelocal(conf) if conf else None
        if not ctx.passive and names:
            ctx.probe_gate()
        reports: list[NameReport] = [r for r in ctx.resolved_names if isinstance(r, NameReport)]
        done = {r.name for r in reports}
        names = [n for n in names if n not in done]
        if conf is not None:
            ex = Exchanger(conf.options, deadline=ctx.deadline - 0.5,
                           max_wait=ctx.options.dns_timeout)
            for name in names:
                if ctx.passive:
                    steps = plan(name, conf, families)
                    res = Resolution(name=name, candidates=steps, expected_queries=sum(len(c.qtypes) for c in steps),
                                     queries=[], outcome=Outcome.CUT, total_ms=0.0)
                    reports.append(NameReport(name=name, resolution=res))
                    continue
                report = report_name(name, conf, families, ex, alt)
                reports.append(report)
                if report.resolution.outcome is Outcome.CUT:
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
