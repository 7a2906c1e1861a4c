"""resolv.conf parsing and the glibc search plan, on the corpus' real files and on edge cases."""

from __future__ import annotations

import pytest

from bundle.collect.resolvconf import candidates, parse, plan
from tests.conftest import corpus_file
K8S = """search default.svc.cluster.local svc.cluster.local cluster.local
nameserver 10.96.0.10
options ndots:5
"""


def _corpus(rel: str) -> str:
    return corpus_file(rel).read_text()


@pytest.mark.parametrize("rel, nameservers, search, options, unknown", [
    ("k8s-text/resolv/k8sdocs_dns-debugging_pod_resolv.conf", ["10.0.0.10"],
     ["default.svc.cluster.local", "svc.cluster.local", "cluster.local", "google.internal",
      "c.gce_project_id.internal"], {"ndots": 5}, []),
    ("k8s-text/resolv/k8sdocs_dns-pod-service_dnsConfig_resolv.conf", ["1.2.3.4"],
     ["ns1.svc.cluster-domain.example", "my.dns.search.suffix"], {"ndots": 2, "edns0": True}, []),
    ("k8s-text/resolv/k8sdocs_dns-pod-service_ipv6_resolv.conf", ["fd00:79:30::a"],
     ["default.svc.cluster-domain.example", "svc.cluster-domain.example", "cluster-domain.example"], {"ndots": 5}, []),
    # glibc: an indented line is ignored; '#' mid-line is no comment (it becomes a search domain: checked
    # against the real resolver in tests/collect/test_dns.py); the last search line wins
    ("linux-text/jc/generic_resolve.conf-1", ["75.75.75.75", "75.75.76.76", "2001:558:feed::2"],
     ["hello.com", "world.com", "#", "add", "another", "search", "list", "for", "fun"], {}, []),
    ("linux-text/jc/generic_resolve.conf-2", ["10.136.17.15"],
     ["eng.myprime.com", "dev.eng.myprime.com", "labs.myprime.com", "qa.myprime.com"], {"rotate": True, "ndots": 1}, []),
    ("linux-text/jc/generic_resolve.conf-3", ["0.0.0.0", "111.22.3.5"], ["doc.com"], {}, []),
    ("linux-text/jc/generic_resolve.conf-4", ["10.1.1.2", "10.1.1.1"], ["example.com"],
     {"rotate": True, "timeout": 1}, ["retries:1"]),  # glibc knows attempts:, not retries:
])
def test_corpus_files(rel, nameservers, search, options, unknown):
    conf = parse(_corpus(rel), rel)
    assert conf.nameservers == nameservers and conf.search == search and conf.unknown_options == unknown
    for key, value in options.items():
        assert getattr(conf.options, key) == value


def test_kubernetes_expansion():
    conf = parse(K8S)
    assert candidates("doesnotexist", conf) == [
        "doesnotexist.default.svc.cluster.local", "doesnotexist.svc.cluster.local", "doesnotexist.cluster.local",
        "doesnotexist"]
    steps = plan("doesnotexist", conf, ["A", "AAAA"])
    assert sum(len(c.qtypes) for c in steps) == 8
    assert candidates("payments.default.svc.cluster.local.", conf) == ["payments.default.svc.cluster.local"]
    # 4 dots < ndots:5: the search list first, the name as-is last
    assert candidates("payments.default.svc.cluster.local", conf)[0] == \
        "payments.default.svc.cluster.local.default.svc.cluster.local"
    assert candidates("a.b.c.d.e.f", conf)[0] == "a.b.c.d.e.f"  # >= ndots: as-is first
    assert len(plan("x", conf, ["A"])) == 4 and plan("x", parse(K8S + "options no-aaaa\n"), ["A", "AAAA"])[0].qtypes == ["A"]


def test_parse_edge_cases():
    conf = parse("domain one.example\nsearch two.example three.example\ndomain four.example\n")
    assert conf.search == ["four.example"]  # the last of domain/search wins
    conf = parse("nameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n")
    assert conf.nameservers == ["10.0.0.1", "10.0.0.2", "10.0.0.3"] and conf.ignored_nameservers == ["10.0.0.4"]
    conf = parse("options ndots:99 timeout:0 attempts:9 single-request-reopen trust-ad use-vc\n")
    assert (conf.options.ndots, conf.options.timeout, conf.options.attempts) == (15, 0, 5)
    assert conf.options.single_request_reopen and conf.options.trust_ad and conf.options.use_vc
    assert conf.defaulted_nameserver and conf.nameservers == ["127.0.0.1"]
    assert parse("", hostname="node-1.example.internal").search == ["example.internal"]
    assert parse("nameserver not-an-ip\nnameserver fe80::1%eth0\n").nameservers == ["fe80::1"]
    assert parse("nameserver\t10.1.1.1\n#nameserver 10.2.2.2\n").nameservers == ["10.1.1.1"]
