"""The Kubernetes slice with the real `kubernetes` client against a loopback API server (tests/kubeapi.py) that
serves the lab's cluster as real API JSON: every object recorded, 403/404/timeouts as reasons, pagination."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bundle.collect.kube import KubeRequest, api_client, collect_kube
from tests import kubeapi
from tests.conftest import corpus_file, fresh

COREFILE = """.:53 {
    errors
    health
    log
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 30
}
"""
KUBE_PROXY_CONF = """apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpEstablishedTimeout: 24h0m0s
"""
CLIENT_UID = "6f1c2a9e-3b7d-4c55-9a0e-2d1f5e8b7c41"


def cluster() -> kubeapi.FakeApi:
    """The stale-dnat lab's cluster: payments (ClusterIP 10.96.0.20:443 -> pods :8080) whose EndpointSlice names
    the new pod 10.244.1.3, a client pod on node-a, cluster DNS with two CoreDNS pods, kube-proxy in iptables mode."""
    api = kubeapi.FakeApi()
    corpus_service = json.loads(corpus_file("k8s-text/endpointslice/k8s_api_testdata_HEAD_core.v1.Service.json").read_text())
    api.add("services", kubeapi.service("default", "payments", "10.96.0.20", [("https", 443, 8080, "TCP")],
                                        {"app": "payments"}, corpus=corpus_service))
    api.add("endpointslices", kubeapi.endpoint_slice("default", "payments", [("10.244.1.3", True, "node-a")],
                                                     [("https", 8080, "TCP")]))
    api.add("pods", kubeapi.pod("default", "payments-5d9c7b-q8z4m", "10.244.1.3", "node-a", {"app": "payments"},
                                [8080], "b2c9e1d4-0a5f-4e27-8c3b-6f2e1d9a7b10"))
    api.add("pods", kubeapi.pod("default", "client", "10.244.1.2", "node-a", {"app": "client"}, [], CLIENT_UID))
    api.add("nodes", kubeapi.node("node-a", "10.244.0.1", "10.244.1.0/24"))
    api.add("services", kubeapi.service("kube-system", "kube-dns", "10.96.0.10",
                                        [("dns", 53, 53, "UDP"), ("dns-tcp", 53, 53, "TCP")], {"k8s-app": "kube-dns"}))
    # two slices for kube-dns, so listing them takes two pages at limit 1 (see test_pagination)
    api.add("endpointslices", kubeapi.endpoint_slice("kube-system", "kube-dns", [("10.244.0.2", True, "node-b")],
                                                     [("dns", 53, "UDP")], suffix="aaaaa"))
    api.add("endpointslices", kubeapi.endpoint_slice("kube-system", "kube-dns", [("10.244.0.3", False, "node-b")],
                                                     [("dns", 53, "UDP")], suffix="bbbbb"))
    for i, ip in enumerate(("10.244.0.2", "10.244.0.3")):
        name = f"coredns-7db6d8ff4d-{i}x"
        api.add("pods", kubeapi.pod("kube-system", name, ip, "node-b", {"k8s-app": "kube-dns"}, [53],
                                    f"0c0ffee0-0000-4000-8000-00000000000{i}", ready=i == 0, restarts=3 * i))
        log = corpus_file("k8s-text/coredns/coredns_plugin_log_README_example.log").read_text().splitlines()
        api.logs[("kube-system", name)] = [(600, "[INFO] plugin/reload: Running configuration SHA512 = 1a2b")] + \
            [(10 + j, line) for j, line in enumerate(log)]
    api.add("configmaps", kubeapi.config_map("kube-system", "coredns", {"Corefile": COREFILE}))
    api.add("configmaps", kubeapi.config_map("kube-system", "kube-proxy", {"config.conf": KUBE_PROXY_CONF}))
    api.add("daemonsets", kubeapi.daemon_set("kube-system", "kube-proxy", 2, 3))
    for ns in ("default", "kube-system"):
        api.add("namespaces", kubeapi.namespace(ns))
    return api


@pytest.fixture
def fake_api():
    with kubeapi.serve(cluster()) as api:
        yield api


def _collect(api, tmp_path, **kw):
    client, server, context = api_client(str(api.kubeconfig(tmp_path)), None)
    req = KubeRequest(services=(("default", "payments"),), pods=(("default", "client"),), **kw)
    return collect_kube(req, client, server, context)


def test_every_object_is_recorded(fake_api, tmp_path):
    result = _collect(fake_api, tmp_path)
    doc = result.doc
    assert doc.server == fake_api.url and not doc.truncated
    # the optional policy APIs this server lacks (Calico, Cilium, the admin tiers) answer 404: not served
    assert all(c.outcome == "ok" or (c.outcome == "not_served" and c.status == 404) for c in doc.calls), \
        [c for c in doc.calls if c.outcome != "ok"]
    # (this server serves AdminNetworkPolicy, with none in it)
    assert doc.other_policies == {"adminnetworkpolicies.policy.networking.k8s.io": 0,
                                  "ciliumnetworkpolicies.cilium.io -n default": 0,
                                  "ciliumnetworkpolicies.cilium.io -n kube-system": 0}
    assert {c.resource for c in doc.calls if c.outcome == "not_served"} == {
        "baselineadminnetworkpolicies.policy.networking.k8s.io",
        "globalnetworkpolicies.projectcalico.org", "networkpolicies.projectcalico.org",
        "ciliumclusterwidenetworkpolicies.cilium.io"}
    [svc] = [s for s in doc.services if s.name == "payments"]
    assert (svc.cluster_ips, [(p.name, p.port, p.target_port, p.protocol) for p in svc.ports], svc.selector) == \
        (["10.96.0.20"], [("https", 443, "8080", "TCP")], {"app": "payments"})
    assert {(v.service, tuple(a for e in v.endpoints for a in e.addresses)) for v in doc.endpoint_slices} == \
        {("default/payments", ("10.244.1.3",)), ("kube-system/kube-dns", ("10.244.0.2",)),
         ("kube-system/kube-dns", ("10.244.0.3",))}
    pods = {p.name: p for p in doc.pods}
    assert pods["client"].uid == CLIENT_UID and pods["client"].node == "node-a"
    assert pods["payments-5d9c7b-q8z4m"].pod_ips == ["10.244.1.3"]
    assert pods["payments-5d9c7b-q8z4m"].containers[0].ports == [8080]
    assert [(n.name, n.pod_cidrs, n.addresses["InternalIP"]) for n in doc.nodes] == \
        [("node-a", ["10.244.1.0/24"], ["10.244.0.1"])]
    dns = doc.cluster_dns
    assert dns.service.cluster_ips == ["10.96.0.10"] and dns.log_enabled is True and "kubernetes" in dns.corefile
    assert [(p.ready, p.containers[0].restarts) for p in dns.pods] == [(True, 0), (False, 3)]
    assert doc.kube_proxy.mode == "iptables" and doc.kube_proxy.conntrack["maxPerCore"] == 32768
    assert doc.kube_proxy.daemonset_ready == "2/3"
    assert doc.network_policies == {"default": 0, "kube-system": 0} and doc.policies == []
    assert {n.name: n.labels for n in doc.namespaces} == {
        "default": {"kubernetes.io/metadata.name": "default"}, "kube-system": {"kubernetes.io/metadata.name": "kube-system"}}
    assert pods["payments-5d9c7b-q8z4m"].labels == {"app": "payments"}
    members = {path: data for path, data, _media, _source in result.members}
    for call in doc.calls:  # each answer kept as the API sent it (a 404 has none to keep)
        assert call.member in members or (call.outcome == "not_served" and call.member is None)
    svc_member = next(c.member for c in doc.calls if c.resource == "services" and c.name == "payments")
    assert json.loads(members[svc_member])["spec"]["clusterIP"] == "10.96.0.20"
    # the label selectors the client sent are the ones the API needs
    sent = {q["labelSelector"][0] for path, q in fake_api.requests if "labelSelector" in q}
    assert {"kubernetes.io/service-name=payments", "app=payments", "k8s-app=kube-dns"} <= sent


def test_logs_are_bounded_by_time_and_lines(fake_api, tmp_path):
    result = _collect(fake_api, tmp_path, log_since_s=300, log_lines=1)
    members = {path: data for path, data, _m, _s in result.members}
    logs = [members[m] for m in result.doc.cluster_dns.log_members]
    assert len(logs) == 2 and all(data.count(b"\n") == 1 for data in logs)
    assert all(b"plugin/reload" not in data for data in logs)  # 600 s old: outside sinceSeconds=300
    query = next(q for path, q in fake_api.requests if path.endswith("/log"))
    assert query["sinceSeconds"] == ["300"] and query["tailLines"] == ["1"]


def test_forbidden_and_missing_are_reasons_not_failures(fake_api, tmp_path):
    fake_api.forbidden.add(("list", "endpointslices.discovery.k8s.io"))
    del fake_api.objects[("configmaps", "kube-system", "coredns")]
    doc = _collect(fake_api, tmp_path).doc
    denied = [c for c in doc.calls if c.outcome == "forbidden"]
    assert {(c.verb, c.resource, c.namespace) for c in denied} == \
        {("list", "endpointslices.discovery.k8s.io", "default"), ("list", "endpointslices.discovery.k8s.io", "kube-system")}
    assert all(c.status == 403 and "cannot list resource" in c.detail for c in denied)
    [missing] = [c for c in doc.calls if c.outcome == "not_found"]
    assert (missing.resource, missing.name, missing.status) == ("configmaps", "coredns", 404)
    assert doc.cluster_dns.corefile is None and doc.services and doc.pods  # the rest is there


def test_pagination_follows_continue(fake_api, tmp_path, monkeypatch):
    monkeypatch.setattr("bundle.collect.kube.PAGE", 1)
    doc = _collect(fake_api, tmp_path).doc
    pages = [c for c in doc.calls if c.resource.startswith("endpointslices") and c.namespace == "kube-system"]
    assert [c.items for c in pages] == [1, 1]
    assert len([v for v in doc.endpoint_slices if v.service == "kube-system/kube-dns"]) == 2


def test_a_dead_server_and_a_bad_kubeconfig(tmp_path):
    with kubeapi.serve(cluster()) as api:
        config = api.kubeconfig(tmp_path)
    client, server, context = api_client(str(config), None)  # the server is gone now
    doc = collect_kube(KubeRequest(services=(("default", "payments"),), budget_s=3, call_timeout_s=0.5),
                       client, server, context).doc
    assert doc.calls and all(c.outcome in ("error", "timeout", "skipped") for c in doc.calls)
    bad = tmp_path / "broken"
    bad.write_text("clusters: [")
    from bundle.collect.kube import KubeConfigError
    with pytest.raises(KubeConfigError):
        api_client(str(bad), None)


def test_fuzzed_api_objects_do_not_break_the_reader(tmp_path):
    """The API's own round-trip fixtures (every field, odd values) served as they are."""
    svc = json.loads(corpus_file("k8s-text/endpointslice/k8s_api_testdata_HEAD_core.v1.Service.json").read_text())
    eps = json.loads(corpus_file("k8s-text/endpointslice/k8s_api_testdata_HEAD_discovery.k8s.io.v1.EndpointSlice.json").read_text())
    api = kubeapi.FakeApi()
    api.add("services", svc)
    api.add("endpointslices", eps)
    with kubeapi.serve(api):
        client, server, context = api_client(str(api.kubeconfig(tmp_path)), None)
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        doc = collect_kube(KubeRequest(services=((ns, name),)), client, server, context).doc
    [view] = doc.services
    assert view.name == name and view.ports[0].port == svc["spec"]["ports"][0]["port"]


class _PodCgroup:
    """A real cgroup shaped as the kubelet makes them, a real process moved into it; undone on exit."""

    def __init__(self, pid: int, uid: str, layout: str) -> None:
        self.pid, self.uid, self.layout = pid, uid, layout
        cid = "3f2a9c" * 10 + "abcd"
        if layout == "cgroupfs-v1":
            self.root = Path("/sys/fs/cgroup/pids")
            self.dirs = [self.root / "kubepods", self.root / "kubepods/besteffort",
                         self.root / f"kubepods/besteffort/pod{uid}", self.root / f"kubepods/besteffort/pod{uid}/{cid}"]
        elif layout == "crio-systemd-v1":  # CRI-O with the systemd driver, guaranteed QoS (no QoS slice)
            u = uid.replace("-", "_")
            self.root = Path("/sys/fs/cgroup/pids")
            self.dirs = [self.root / "kubepods.slice", self.root / f"kubepods.slice/kubepods-pod{u}.slice",
                         self.root / f"kubepods.slice/kubepods-pod{u}.slice/crio-{cid}.scope"]
        else:  # systemd driver, cgroup v2, containerd
            u = uid.replace("-", "_")
            self.root = Path("/sys/fs/cgroup/unified")
            base = self.root / "kubepods.slice/kubepods-besteffort.slice"
            self.dirs = [self.root / "kubepods.slice", base, base / f"kubepods-besteffort-pod{u}.slice",
                         base / f"kubepods-besteffort-pod{u}.slice/cri-containerd-{cid}.scope"]

    def __enter__(self):
        for d in self.dirs:
            d.mkdir(exist_ok=True)
        (self.dirs[-1] / "cgroup.procs").write_text(str(self.pid))
        return self

    def __exit__(self, *exc):
        try:
            (self.root / "cgroup.procs").write_text(str(self.pid))
        except OSError:
            pass  # the process is gone
        for d in reversed(self.dirs):
            try:
                d.rmdir()
            except OSError:
                pass


@pytest.mark.privileged
@pytest.mark.parametrize("layout", ["cgroupfs-v1", "systemd-v2", "crio-systemd-v1"])
def test_pod_netns_is_found_by_its_uid(lab, layout):
    from bundle.collect.podns import find_pod_process
    from bundle.lab.topology import netns_pids

    info = lab("stale-dnat")
    pid = netns_pids(info.namespaces["pod"])[0]
    uid = f"7a1b2c3d-0000-4000-8000-{pid:012d}"
    assert find_pod_process(uid) is None
    with _PodCgroup(pid, uid, layout):
        found = find_pod_process(uid)
        assert found is not None and found.pid == pid
        assert found.netns_inode == os.stat(f"/run/netns/{info.namespaces['pod']}").st_ino
    assert find_pod_process(uid) is None


@pytest.mark.privileged
def test_collect_with_service_and_pod_against_the_api(lab, tmp_path):
    """`collect --service default/payments --pod default/client` on the stale-dnat lab: the API's objects are
    all in the bundle, the Service's ClusterIP, endpoint and DNS name become targets, the client pod's netns
    is found by its UID and added as a vantage, and the NAT slice judges the node's rules against the API's
    EndpointSlices: stale DNAT."""
    from bundle.archive import read_bundle
    from bundle.lab.topology import netns_pids
    from bundle.render.view import build_view
    from tests.conftest import netbundle

    info = lab("stale-dnat")
    api = cluster()
    pid = netns_pids(info.namespaces["pod"])[0]
    uid = f"7a1b2c3d-0000-4000-8000-{pid:012d}"
    client = api.objects[("pods", "default", "client")]
    client["metadata"]["uid"] = uid
    hostile = '[INFO] 10.244.1.2:41000 - 1 "A IN <script>alert(1)</script>.default.svc.cluster.local. udp 60" NXDOMAIN'
    api.logs[("kube-system", "coredns-7db6d8ff4d-0x")].append((5, hostile))
    out = fresh(tmp_path)
    with kubeapi.serve(api), _PodCgroup(pid, uid, "cgroupfs-v1"):
        proc = netbundle("collect", "--service", "default/payments", "--pod", "default/client",
                         "--kubeconfig", str(api.kubeconfig(tmp_path)), "--netns", info.namespaces["node"],
                         "-o", str(out))
    assert proc.returncode in (0, 5), proc.stderr
    b = read_bundle(out)
    k = b.kube()
    assert k is not None and all(c.outcome in ("ok", "not_served") for c in k.calls)
    for call in k.calls:  # every answer is a member, with its checksum in the manifest
        if call.outcome == "not_served":
            continue
        member = b.member(call.member)
        assert member is not None and member.provenance.vantage == "kubernetes-api", call
    [pv] = k.pod_vantages
    assert pv.outcome == "added" and pv.pid == pid
    vantages = {v.id: v for v in b.manifest.vantages}
    assert pv.vantage in vantages and vantages[pv.vantage].netns_inode == \
        os.stat(f"/run/netns/{info.namespaces['pod']}").st_ino
    assert vantages["kubernetes-api"].kind.value == "kubernetes_api"
    specs = {t.spec for t in b.manifest.targets}
    assert {"10.96.0.20:443", "10.244.1.3:8080"} <= specs
    node = b.nat(f"netns-{info.namespaces['node']}")
    assert node is not None and node.endpoint_slices and \
        {v.service for v in node.endpoint_slices} >= {"default/payments"}
    findings = build_view(b).findings
    assert [f for f in findings if f.id == "service.stale_dnat" and f.vantage == f"netns-{info.namespaces['node']}"]
    dns = b.dns(pv.vantage)
    assert dns is not None and [n.name for n in dns.names] == ["payments.default.svc.cluster.local"]
    # the three-hop matrix: the name resolves, the pod IP answers, the ClusterIP's translation is the failing hop
    view = build_view(b)
    [hops] = [h for h in view.hops if h.service == "default/payments:https"]
    verdicts = {(r.hop, r.vantage): r.verdict for r in hops.rows}
    assert verdicts[("name -> ClusterIP", pv.vantage)] == "pass"
    assert verdicts[("pod IP direct", pv.vantage)] == "pass"
    assert verdicts[("ClusterIP -> endpoints", f"netns-{info.namespaces['node']}")] == "fail"
    assert hops.failing == "ClusterIP -> endpoints"
    from bundle.render import render_html
    from bundle.render.text import summary
    assert "first failing hop: ClusterIP -> endpoints" in summary(b)
    html = render_html(b)
    assert "(first failing hop)" in html
    # a log line carrying markup is folded into the page as text
    assert "A IN &lt;script&gt;alert(1)&lt;/script&gt;.default.svc.cluster.local." in html and "<script>" not in html


@pytest.mark.privileged
def test_rbac_denial_is_named_and_the_rest_is_collected(lab, tmp_path):
    from bundle.archive import read_bundle
    from tests.conftest import netbundle

    info = lab("stale-dnat")
    api = cluster()
    api.forbidden.add(("list", "endpointslices.discovery.k8s.io"))
    out = fresh(tmp_path)
    with kubeapi.serve(api):
        proc = netbundle("collect", "--passive", "--service", "default/payments", "--kubeconfig",
                         str(api.kubeconfig(tmp_path)), "--netns", info.namespaces["node"], "-o", str(out))
    assert proc.returncode == 5, proc.stderr  # written, but one slice is partial
    b = read_bundle(out)
    runs = {(r.vantage, r.slice): r for r in b.manifest.slices}
    kube_run = runs[("kubernetes-api", "kube")]
    assert kube_run.status.value == "partial"
    assert kube_run.reason == "list endpointslices.discovery.k8s.io: forbidden"
    assert all(r.status.value in ("complete", "skipped") for key, r in runs.items() if key[0] != "kubernetes-api")
    denied = [c for c in b.kube().calls if c.outcome == "forbidden"]
    assert denied and all(c.status == 403 and 'cannot list resource "endpointslices"' in c.detail for c in denied)
    assert b.kube().services[0].name == "payments"  # what was allowed is there


def test_pods_that_cannot_be_vantages_say_why():
    from bundle.collect.kubephase import pod_vantage
    from bundle.models.kube import KubeSlice, PodView

    doc = KubeSlice(server="http://127.0.0.1:1", calls=[], pods=[
        PodView(namespace="default", name="hostnet", uid="1b9a1b9a-0000-4000-8000-000000000001", host_network=True),
        PodView(namespace="default", name="far", uid="1b9a1b9a-0000-4000-8000-000000000002", node="node-b"),
        PodView(namespace="default", name="here", uid="1b9a1b9a-0000-4000-8000-000000000003", node="node-a")])
    outcomes = {name: pod_vantage(doc, "default", name, "node-a") for name in ("hostnet", "far", "here", "absent")}
    assert {n: (pv.outcome, spec) for n, (pv, spec) in outcomes.items()} == {
        "hostnet": ("host_network", None), "far": ("other_node", None), "here": ("no_process", None),
        "absent": ("not_found", None)}
    assert "node node-b, this is node-a" in outcomes["far"][0].detail


def test_admin_network_policies_are_kept_raw_and_counted(tmp_path):
    """Where the cluster serves AdminNetworkPolicy, its objects are kept as the API sent them and counted (they
    decide before NetworkPolicy, and are not evaluated: the decisions say so); the slice stays complete."""
    api = cluster()
    api.add("adminnetworkpolicies", {
        "apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
        "metadata": kubeapi._meta("cluster-wide-deny", None),
        "spec": {"priority": 10, "subject": {"namespaces": {}},
                 "ingress": [{"name": "deny-all", "action": "Deny", "from": [{"namespaces": {}}]}]}})
    with kubeapi.serve(api):
        result = _collect(api, tmp_path)
    doc = result.doc
    assert doc.other_policies["adminnetworkpolicies.policy.networking.k8s.io"] == 1
    assert [(a.kind, a.name, a.priority) for a in doc.admin_policies] == [("AdminNetworkPolicy", "cluster-wide-deny", 10)]
    [call] = [c for c in doc.calls if c.resource == "adminnetworkpolicies.policy.networking.k8s.io"]
    members = {path: data for path, data, _m, _s in result.members}
    assert call.outcome == "ok" and json.loads(members[call.member])["items"][0]["spec"]["priority"] == 10
