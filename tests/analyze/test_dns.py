"""DNS findings as pure functions of the DNS slice's model, for what the labs do not build: two servers that
answer a name differently."""

from __future__ import annotations

import pytest

from bundle.analyze.dns import dns_findings
from bundle.collect.resolvconf import parse
from bundle.models import DnsSlice, Vantage, VantageKind
from bundle.models.dns import DirectCheck, DnsQuery, NameReport, Outcome, Resolution

POD_CONF = ("nameserver 169.254.20.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n"
            "options ndots:5\n")
V = Vantage(id="netns-pod", kind=VantageKind.NETNS_NAME, ref="pod", entered=True)


def _doc(fqdn: str, ours: list[str], theirs: list[str], conf: str = POD_CONF) -> DnsSlice:
    q = DnsQuery(qname=fqdn, qtype="A", server="169.254.20.10", rcode="NOERROR", latency_ms=1.0)
    res = Resolution(name=fqdn + ".", candidates=[], expected_queries=1, queries=[q], outcome=Outcome.ANSWERED,
                     answered_by=fqdn, addresses=ours, total_ms=1.0)
    alt = DirectCheck(fqdn=fqdn, server="10.96.0.10", queries=[q.model_copy(update={"server": "10.96.0.10"})],
                      outcome=Outcome.ANSWERED if theirs else Outcome.NXDOMAIN, addresses=theirs, total_ms=1.0)
    return DnsSlice(resolv_conf=parse(conf), query_families=["A"], active_probes=True,
                    names=[NameReport(name=fqdn + ".", resolution=res, alternate=alt)])


@pytest.mark.parametrize("fqdn, ours, theirs, severity", [
    # a Service of the cluster: CoreDNS's answer is the same from every server; a NodeLocal cache that differs
    # holds a stale record
    ("payments.default.svc.cluster.local", ["10.96.0.20"], ["10.96.0.21"], "warning"),
    # an outside name whose servers rotate their answers (a cloud load balancer): normal, info
    ("api.example.com", ["192.0.2.10"], ["192.0.2.11"], "info"),
    # one side has no answer at all: failing, wherever the name lives
    ("api.example.com", ["192.0.2.10"], [], "warning"),
    ("payments.default.svc.cluster.local", ["10.96.0.20"], ["10.96.0.20"], None),
])
def test_servers_disagree_weighs_where_the_name_lives(fqdn, ours, theirs, severity):
    found = [f for f in dns_findings(V, _doc(fqdn, ours, theirs)) if f.id == "dns.servers_disagree"]
    assert [f.severity.value for f in found] == ([severity] if severity else [])


def test_no_cluster_search_list_means_outside():
    """A host's resolv.conf names no `svc.` domain: the name's place is unknown, a rotating answer is info."""
    doc = _doc("payments.default.svc.cluster.local", ["10.96.0.20"], ["10.96.0.21"],
               conf="nameserver 10.0.0.2\nsearch example.internal\n")
    [f] = [f for f in dns_findings(V, doc) if f.id == "dns.servers_disagree"]
    assert f.severity.value == "info"
