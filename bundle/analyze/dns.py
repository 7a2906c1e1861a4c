"""Findings of the DNS layer, per vantage and name."""

from __future__ import annotations

from bundle.analyze._common import FindingList, about
from bundle.models import DnsSlice, Finding, Layer, Outcome, Severity, Vantage

SLOW_MS = 500.0


def dns_findings(vantage: Vantage, doc: DnsSlice) -> list[Finding]:
    found = FindingList(Layer.DNS, vantage, f"vantages/{vantage.id}/dns.json")
    add = found.add

    conf = doc.resolv_conf
    if conf is None:
        detail = doc.resolv_conf_unavailable.detail if doc.resolv_conf_unavailable else "unreadable"
        add("dns.resolv_conf_unreadable", Severity.WARNING, None,
            f"resolv.conf could not be read in {vantage.id} ({detail}): the resolver's configuration is unknown.",
            "resolv_conf_unavailable", "cat /etc/resolv.conf")
        return found.items
    if doc.nodelocal:
        add("dns.nodelocal", Severity.INFO, None, f"In {vantage.id}, {doc.nodelocal}.", "nodelocal",
            "cat /etc/resolv.conf")
    for i, report in enumerate(doc.names):
        r = report.resolution
        name = report.name
        servers = ", ".join(conf.nameservers)
        if not r.queries:
            continue
        if r.outcome is Outcome.TIMEOUT:
            waited = sum(q.latency_ms or 0 for q in r.queries if q.timeout)
            add("dns.timeout", Severity.CRITICAL, about(name=name),
                f"From {vantage.id}, queries for {name} to {servers} got no answer ({len(r.queries)} sent, "
                f"{waited / 1000:.1f} s waited): the resolver is unreachable, a policy drops DNS, or it is "
                f"overloaded. This is not NXDOMAIN: the name was never looked up.",
                f"names[{i}].resolution", f"dig +search +tries=1 +time=2 {name}")
        elif r.outcome is Outcome.UNREACHABLE:
            why = next((q.rcode for q in r.queries if q.rcode), "unreachable")
            add("dns.unreachable", Severity.CRITICAL, about(name=name),
                f"From {vantage.id}, queries for {name} cannot reach {servers}: {why}.",
                f"names[{i}].resolution", f"ip route get {conf.nameservers[0]}")
        elif r.outcome is Outcome.SERVFAIL:
            add("dns.servfail", Severity.WARNING, about(name=name),
                f"From {vantage.id}, {servers} answered SERVFAIL for {name}: the resolver is up but its upstream "
                f"or its data is failing.", f"names[{i}].resolution", f"dig +search {name}")
        candidates_tried = len({q.qname for q in r.queries})
        if candidates_tried > 1:
            fq = report.fqdn
            fq_part = (f"; asking the FQDN {fq.fqdn}. directly costs {len(fq.queries)} queries "
                       f"({fq.total_ms:.1f} ms)") if fq else ""
            ending = (f"before {r.outcome.value.upper()}" if r.outcome is not Outcome.ANSWERED
                      else f"before {r.answered_by} answered")
            # Kubernetes' ndots:5 makes every healthy pod pay this: it matters only when it costs time or failures
            costly = any(q.timeout for q in r.queries) or r.total_ms > SLOW_MS
            add("dns.search_amplification", Severity.WARNING if costly else Severity.INFO, about(name=name),
                f"In {vantage.id}, the name {name} cost {len(r.queries)} queries over {candidates_tried} candidates "
                f"(ndots:{conf.options.ndots} with {len(conf.search)} search domains) in {r.total_ms:.1f} ms "
                f"{ending}{fq_part}" + (": a candidate timed out or the walk was slow." if costly else
                                        " (normal with Kubernetes' ndots:5; it costs little here)."),
                f"names[{i}].resolution", f"cat /etc/resolv.conf; dig +search +showsearch {name}")
        if r.outcome in (Outcome.NXDOMAIN, Outcome.NODATA):
            add("dns.nxdomain", Severity.CRITICAL, about(name=name),
                f"From {vantage.id}, {name} does not resolve ({r.outcome.value}, answered in {r.total_ms:.1f} ms): "
                f"a client cannot learn the address it must dial. The name is absent or the suffix is wrong; the "
                f"resolver itself answers.",
                f"names[{i}].resolution", f"dig +search {name}")
        elif r.outcome is Outcome.ANSWERED and r.total_ms > SLOW_MS:
            add("dns.slow", Severity.WARNING, about(name=name),
                f"From {vantage.id}, {name} resolved but took {r.total_ms:.0f} ms.", f"names[{i}].resolution",
                f"dig +search {name}")
        alt = report.alternate
        if alt is not None and r.outcome is Outcome.ANSWERED and sorted(alt.addresses) != sorted(r.addresses):
            # the cluster's own records are the same from every server; many outside names rotate their answers
            internal = _in_cluster(alt.fqdn, conf.search)
            failing = alt.outcome is not Outcome.ANSWERED
            add("dns.servers_disagree", Severity.WARNING if internal or failing else Severity.INFO, about(name=name),
                f"For {name}, {conf.nameservers[0]} answers {', '.join(r.addresses) or 'nothing'} but {alt.server} "
                f"answers {', '.join(alt.addresses) or alt.outcome.value}: " +
                ("a cache holds stale data or one side is failing." if internal or failing else
                 "a name outside the cluster's domain, whose servers may rotate their answers; it matters if the "
                 "addresses one side gives do not answer."),
                f"names[{i}].alternate", f"dig @{alt.server} {alt.fqdn}")
    return found.items


def _in_cluster(fqdn: str, search: list[str]) -> bool:
    """Whether the name lies in the cluster's DNS domain, as a pod's search list names it (`svc.<domain>`)."""
    name = fqdn.rstrip(".").lower()
    domains = [d.lower().rstrip(".")[4:] for d in search if d.lower().startswith("svc.")]
    return any(name == d or name.endswith("." + d) for d in domains if d)
