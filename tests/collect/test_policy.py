"""NetworkPolicy end to end: the policy lab scenarios collected with their API objects served by the loopback API
server of the tests (tests/kubeapi.py: it plays the API server, nothing here plays the kubelet), the nft drop in
a pod's netns playing the CNI that enforces them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundle.archive import read_bundle
from bundle.models import Layer
from tests import kubeapi
from tests.conftest import fresh, netbundle

pytestmark = pytest.mark.privileged


def _collect(tmp_path, info, *extra: str, api=None):
    api = api or kubeapi.load(Path(info.files["cluster"]))
    out = fresh(tmp_path)
    with kubeapi.serve(api):
        proc = netbundle("collect", "--service", "default/payments", "--pod", "default/client",
                         "--kubeconfig", str(api.kubeconfig(tmp_path)), "--client", f"netns-{info.namespaces['pod']}",
                         "--netns", info.namespaces["pod"], "--netns", info.namespaces["node"], *extra,
                         "-o", str(out))
    assert proc.returncode in (0, 5), proc.stderr
    b = read_bundle(out)
    return b, b.findings()


def test_lab_objects_are_what_the_client_models_accept(lab):
    """The lab's API objects deserialize into the kubernetes client's own models (a typo in a field would not)."""
    from kubernetes.client import ApiClient

    info = lab("policy-healthy")
    client = ApiClient()
    kinds = {"pods": "V1Pod", "services": "V1Service", "namespaces": "V1Namespace",
             "endpointslices": "V1EndpointSlice", "networkpolicies": "V1NetworkPolicy"}
    import json

    def paths(value, at=""):
        if isinstance(value, dict):
            return {q for k, v in value.items() for q in paths(v, f"{at}/{k}")} | {at}
        if isinstance(value, list):
            return {q for i, v in enumerate(value) for q in paths(v, f"{at}[{i}]")} | {at}
        return {at}

    for item in json.loads(Path(info.files["cluster"]).read_text())["items"]:
        obj = client._ApiClient__deserialize(item["object"], kinds[item["resource"]])  # type: ignore[attr-defined]
        # the client's deserializer drops what its model does not know: every field must survive the round trip
        kept = client.sanitize_for_serialization(obj)
        assert paths(item["object"]) - paths(kept) == set(), item["object"]["metadata"]["name"]


def test_default_deny_ingress_owns_the_timeout(lab, tmp_path):
    """policy-ingress: default-deny in the server's namespace, an allow for a label the client lacks. The
    client's connect to the ClusterIP times out; the ladder's owner is transport, explained by
    policy.denied_ingress naming the policies, not 'dropped on the way'."""
    info = lab("policy-ingress")
    b, report = _collect(tmp_path, info)
    client = f"netns-{info.namespaces['pod']}"
    [denied] = [f for f in report.findings if f.id == "policy.denied_ingress"]
    assert denied.layer is Layer.TRANSPORT and denied.target.address == "10.96.0.20" and denied.target.port == 443
    assert "default/default-deny-ingress" in denied.summary and "default/allow-frontend-to-payments" in denied.summary
    assert "default/client -> default/payments:https" in denied.summary
    assert {e.pointer for e in denied.evidence} == {"policies[0]", "policies[1]"}
    assert denied.next_command == "kubectl get networkpolicy -n default allow-frontend-to-payments " \
                                  "default-deny-ingress -o yaml"
    [lad] = [lad for lad in report.ladders if lad.target == "10.96.0.20:443" and lad.client == client]
    assert lad.owner is Layer.TRANSPORT
    cause = report.findings[lad.cause]
    assert cause.id == "policy.denied_ingress" and cause.severity.value == "critical"
    rules = {e.rule for e in report.explanations if e.cause == lad.cause}
    assert rules == {"policy_denied_ingress"}
    # the dataplane agrees: the node's Calico chain toward the endpoint counted the drops in the window
    node = f"netns-{info.namespaces['node']}"
    [drops] = [f for f in report.findings if f.id == "policy.dataplane_drops" and f.vantage == node]
    assert "cali-tw-cbr0" in drops.summary and "cbr0" in drops.summary and drops.count >= 1
    assert any(e.rule == "cni_policy_drops" for e in report.explanations)
    # the decisions: the endpoint's ingress isolated, nothing allows it; the client's egress open; DNS allowed
    flows = {(d.purpose, d.protocol): d for d in report.policy}
    pay = flows[("default/payments:https", "TCP")]
    assert not pay.allowed and pay.egress.allowed and not pay.egress.isolated
    assert pay.ingress.isolated and pay.ingress.allowing == [] and pay.port == 8080 and pay.address == "10.244.1.3"
    assert flows[("cluster DNS", "UDP")].allowed and flows[("cluster DNS", "TCP")].allowed
    assert not [f for f in report.findings if f.id == "policy.denied_egress"]
    # the appendix: the denied flow, and the heads of the two policies that isolate the payments pod marked
    from bundle.render import render_html

    html = render_html(b)
    section = html[html.index('id="policy"'):html.index('id="timeline"')]
    assert "<strong>denied</strong>: isolated by <code>default/allow-frontend-to-payments</code>, " \
           "<code>default/default-deny-ingress</code>, and no rule allows it" in section
    assert section.count('<span class="isolates">') == 2 and 'class="allows"' not in section
    assert "role: frontend" in section and "port: https" in section


def test_an_egress_policy_without_dns_owns_the_lookup_timeouts(lab, tmp_path):
    """policy-dns-egress: the client's egress policy allows payments:8080 and forgot port 53. DNS owns the name
    target, explained by policy.denied_egress (both UDP and TCP 53 to the CoreDNS pod); the flow to payments
    itself is allowed."""
    info = lab("policy-dns-egress")
    b, report = _collect(tmp_path, info, "--target", "payments:443")
    client = f"netns-{info.namespaces['pod']}"
    [denied] = [f for f in report.findings if f.id == "policy.denied_egress"]
    assert denied.layer is Layer.DNS and "default/client-egress" in denied.summary
    assert "UDP 53" in denied.summary and "TCP 53" in denied.summary
    [lad] = [lad for lad in report.ladders if lad.target == "payments:443" and lad.client == client]
    assert lad.owner is Layer.DNS and report.findings[lad.cause].id == "policy.denied_egress"
    flows = {(d.purpose, d.protocol): d for d in report.policy}
    assert flows[("default/payments:https", "TCP")].allowed
    assert [r.name for r in flows[("default/payments:https", "TCP")].egress.allowing] == ["client-egress"]
    assert not flows[("cluster DNS", "UDP")].allowed and flows[("cluster DNS", "UDP")].egress.isolated


def test_policies_that_allow_the_flows_say_nothing(lab, tmp_path):
    """policy-healthy: default-deny plus the allows the client needs (a named port, DNS by namespace and pod
    selector in one entry): every flow allowed, no policy finding, no owner."""
    info = lab("policy-healthy")
    b, report = _collect(tmp_path, info, "--target", "payments:443")
    assert not [f for f in report.findings if f.id.startswith("policy.")]
    assert report.policy and all(d.allowed for d in report.policy)
    pay = next(d for d in report.policy if d.purpose == "default/payments:https")
    assert [r.name for r in pay.ingress.allowing] == ["allow-client-to-payments"] and pay.ingress.isolated
    dns = next(d for d in report.policy if d.purpose == "cluster DNS" and d.protocol == "UDP")
    assert [(r.name, r.rule) for r in dns.egress.allowing] == [("client-egress", 1)]
    assert all(lad.owner is None for lad in report.ladders)
    from bundle.render import render_html

    html = render_html(b)
    section = html[html.index('id="policy"'):html.index('id="timeline"')]
    assert 'title="ingress rule 0: allows"' in section and 'title="egress rule 1: allows"' in section
    assert 'class="isolates"' not in section and "<strong>denied</strong>" not in section


def test_allowed_by_policy_yet_dropped_points_at_the_dataplane(lab, tmp_path):
    """The policy-ingress dataplane (the node's Calico-shaped chain drops the client's SYNs) with policies that
    allow the client — the objects and the programmed rules disagree: no policy denial owns the timeout;
    policy.allowed_but_lost (info) says the objects allow it, and the owner's cause is the dataplane's own
    evidence, the drops counted in the chain toward the endpoint."""
    info = lab("policy-ingress")
    api = kubeapi.load(Path(info.files["cluster"]))
    allow = api.objects[("networkpolicies", "default", "allow-frontend-to-payments")]
    allow["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] = {"app": "client"}
    b, report = _collect(tmp_path, info, api=api)
    assert not [f for f in report.findings if f.id.startswith("policy.denied")]
    [hint] = [f for f in report.findings if f.id == "policy.allowed_but_lost"]
    assert hint.severity.value == "info" and "default/allow-frontend-to-payments ingress rule 0" in hint.summary
    assert "the dataplane" in hint.summary
    [lad] = [lad for lad in report.ladders if lad.target == "10.96.0.20:443"]
    assert lad.owner is Layer.TRANSPORT and report.findings[lad.cause].id == "policy.dataplane_drops"
    assert {e.rule for e in report.explanations if e.cause == lad.cause} == {"cni_policy_drops"}


def test_admin_tier_decides_first_and_cni_policies_are_named(lab, tmp_path):
    """An AdminNetworkPolicy that Allows the client at priority 5 decides before the NetworkPolicies that deny it:
    no policy denial is reported, the decision names the admin rule; the node's Calico-shaped chain still drops
    the SYNs, so the owner is that dataplane evidence. A CiliumNetworkPolicy served beside them is kept raw and
    named by policy.not_evaluated."""
    info = lab("policy-ingress")
    api = kubeapi.load(Path(info.files["cluster"]))
    api.add("adminnetworkpolicies", {
        "apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
        "metadata": {"name": "allow-clients", "uid": "00000000-0000-4000-8000-000000000777"},
        "spec": {"priority": 5, "subject": {"pods": {"namespaceSelector": {},
                                                     "podSelector": {"matchLabels": {"app": "payments"}}}},
                 "ingress": [{"name": "from-clients", "action": "Allow",
                              "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}}]}]}})
    api.add("ciliumnetworkpolicies", {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                                      "metadata": {"name": "l7-payments", "namespace": "default"},
                                      "spec": {"endpointSelector": {"matchLabels": {"app": "payments"}}}})
    b, report = _collect(tmp_path, info, api=api)
    k = b.kube()
    assert k.other_policies["adminnetworkpolicies.policy.networking.k8s.io"] == 1
    assert k.other_policies["ciliumnetworkpolicies.cilium.io -n default"] == 1
    assert [a.name for a in k.admin_policies] == ["allow-clients"]
    assert not [f for f in report.findings if f.id.startswith("policy.denied")]
    pay = next(d for d in report.policy if d.purpose == "default/payments:https")
    assert pay.allowed and pay.ingress.decided_by == "AdminNetworkPolicy"
    assert [(r.name, r.action) for r in pay.ingress.allowing] == [("allow-clients/from-clients", "Allow")]
    [note] = [f for f in report.findings if f.id == "policy.not_evaluated"]
    assert "ciliumnetworkpolicies.cilium.io -n default (1)" in note.summary and "adminnetwork" not in note.summary
    [lad] = [lad for lad in report.ladders if lad.target == "10.96.0.20:443"]
    assert report.findings[lad.cause].id == "policy.dataplane_drops"
    runs = {(r.vantage, r.slice): r for r in b.manifest.slices}
    assert runs[("kubernetes-api", "kube")].status.value in ("complete", "partial")
    assert "not_served" not in (runs[("kubernetes-api", "kube")].reason or "")
