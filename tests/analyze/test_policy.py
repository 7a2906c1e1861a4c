"""NetworkPolicy semantics against upstream's own truth tables: the Kubernetes e2e NetworkPolicy suite and
cyclonus's probe output (tests/data/netpol/SOURCES.md), plus the spec points people misread, each with a
case that a wrong reading fails."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import pytest
import yaml

from bundle.analyze.policy import Party, decide
from bundle.collect.netpol import policy_view
from bundle.models.policy import NamespaceView

DATA = Path(__file__).parent.parent / "data" / "netpol"
E2E = yaml.safe_load((DATA / "e2e_network_policy.yaml").read_text())["cases"]


def _e2e_world(case: dict) -> tuple[dict[str, Party], list[NamespaceView]]:
    ports = case.get("ports", [80])
    protocols = case.get("protocols", ["TCP"])
    named = tuple((f"serve-{p}-{proto.lower()}", proto, p) for p, proto in product(ports, protocols))
    parties = {}
    for pod in case["pods"]:
        ns, name = pod.split("/")
        labels = case.get("pod_labels", {}).get(pod, {"pod": name})
        ip = f"10.244.{'xyz'.index(ns) + 1}.{'abc'.index(name) + 2}"
        parties[pod] = Party(name=pod, ips=(ip,), namespace=ns, labels=labels, named_ports=named)
    namespaces = [NamespaceView(name=ns, labels={"kubernetes.io/metadata.name": ns,
                                                 **case.get("namespace_labels", {}).get(ns, {})})
                  for ns in "xyz"]
    return parties, namespaces


def _matches(pattern: str, pod: str) -> bool:
    pns, ppod = pattern.split("/")
    ns, name = pod.split("/")
    return pns in ("*", ns) and ppod in ("*", name)


def _expected(case_pods: list[str], ops: list[list]) -> dict[tuple[str, str], bool]:
    """upstream's Reachability: everything connected, then each call in order."""
    want = {(a, b): True for a in case_pods for b in case_pods}
    for op in ops:
        kind, *args = op
        for a, b in want:
            if kind == "peer" and _matches(args[0], a) and _matches(args[1], b) \
                    or kind == "pair" and (a, b) == (args[0], args[1]) \
                    or kind == "all_ingress" and b == args[0] \
                    or kind == "all_egress" and a == args[0]:
                want[(a, b)] = args[-1]
    return want


@pytest.mark.parametrize("case", E2E, ids=[c["name"] for c in E2E])
def test_kubernetes_e2e_truth_tables(case):
    """Every probe of every upstream e2e case: the allow/deny of each ordered pair of pods equals upstream's
    expectation (a pod to itself is not judged, as upstream's ignoreLoopback)."""
    parties, namespaces = _e2e_world(case)
    policies = [policy_view(p) for p in case["policies"]]
    assert all(policies)
    for probe in case["probes"]:
        want = _expected(case["pods"], probe["expect"])
        got = {(a, b): decide(policies, namespaces, parties[a], parties[b], probe["port"], probe["protocol"]).allowed
               for a, b in want}
        wrong = {k: (got[k], v) for k, v in want.items() if k[0] != k[1] and got[k] != v}
        assert not wrong, (probe["port"], probe["protocol"], wrong)


def test_the_e2e_data_is_not_vacuous():
    """The transcription covers the spec's corners: both directions, named ports, ipBlock with except, the
    namespace+pod conjunction, three protocols, and both outcomes."""
    text = (DATA / "e2e_network_policy.yaml").read_text()
    for needle in ("serve-81-tcp", "except:", "policyTypes: [Egress]", "SCTP", "UDP", "NotIn",
                   "namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector"):
        assert needle in text, needle
    assert len(E2E) >= 50
    assert any(op[-1] is False for c in E2E for p in c["probes"] for op in p["expect"])


def test_cyclonus_probe_tables():
    """cyclonus's simple-example policies on its probe resources: our ingress, egress and combined verdicts equal
    the three tables it printed, for both ports the pods serve (self pairs included, as cyclonus shows them)."""
    doc = yaml.safe_load((DATA / "cyclonus_probe.yaml").read_text())
    policies = [policy_view(p) for p in doc["policies"]]
    res = doc["resources"]
    namespaces = [NamespaceView(name=n, labels=labels) for n, labels in res["Namespaces"].items()]
    parties = {f"{p['Namespace']}/{p['Name']}": Party(
        name=f"{p['Namespace']}/{p['Name']}", ips=(p["IP"],), namespace=p["Namespace"], labels=p["Labels"],
        named_ports=tuple((c["PortName"], c["Protocol"].upper(), c["Port"]) for c in p["Containers"]))
        for p in res["Pods"]}
    columns = [c.lower() for c in doc["columns"].split()]
    for port, tables in doc["tables"].items():
        for kind in ("Ingress", "Egress", "Combined"):
            for row, cells in tables[kind].items():
                for col, cell in zip(columns, cells.split(), strict=True):
                    d = decide(policies, namespaces, parties[row], parties[col], int(port), "TCP")
                    verdict = {"Ingress": d.ingress.allowed, "Egress": d.egress.allowed, "Combined": d.allowed}[kind]
                    assert verdict == (cell == "."), (port, kind, row, col)


# --- the corners, each with the reading that gets it wrong -------------------------------------------------

def _pod(ns: str, name: str, ip: str, **labels: str) -> Party:
    return Party(name=f"{ns}/{name}", ips=(ip,), namespace=ns, labels=labels or {"app": name},
                 named_ports=(("https", "TCP", 8443), ("metrics", "TCP", 9090), ("dns", "UDP", 53)))


NS = [NamespaceView(name="shop", labels={"kubernetes.io/metadata.name": "shop", "team": "pay"}),
      NamespaceView(name="web", labels={"kubernetes.io/metadata.name": "web", "team": "front"}),
      NamespaceView(name="tools", labels={"kubernetes.io/metadata.name": "tools", "team": "pay"})]
SERVER = _pod("shop", "payments", "10.244.1.5", app="payments")


def _ingress_policy(rule: dict) -> list:
    return [policy_view({"metadata": {"namespace": "shop", "name": "p"},
                         "spec": {"podSelector": {"matchLabels": {"app": "payments"}}, "ingress": [rule]}})]


def test_namespace_and_pod_selector_in_one_entry_is_a_conjunction():
    """{namespaceSelector, podSelector} in ONE from-entry: pods matching both; in TWO entries: either. A reading
    that ORs the single entry lets web/api in (its namespace does not match); one that ignores the namespace
    selector lets the pod of that label in any namespace in."""
    one = _ingress_policy({"from": [{"namespaceSelector": {"matchLabels": {"team": "pay"}},
                                     "podSelector": {"matchLabels": {"role": "client"}}}]})
    two = _ingress_policy({"from": [{"namespaceSelector": {"matchLabels": {"team": "pay"}}},
                                    {"podSelector": {"matchLabels": {"role": "client"}}}]})
    tools_client = _pod("tools", "cli", "10.244.2.7", role="client")
    web_client = _pod("web", "api", "10.244.3.7", role="client")
    tools_other = _pod("tools", "other", "10.244.2.8", role="batch")
    assert [decide(one, NS, p, SERVER, 8443).allowed for p in (tools_client, web_client, tools_other)] == \
        [True, False, False]
    # two entries: any pod of a team=pay namespace, or role=client pods of the policy's own namespace only
    shop_client = _pod("shop", "cli", "10.244.1.9", role="client")
    assert [decide(two, NS, p, SERVER, 8443).allowed for p in (tools_client, web_client, tools_other, shop_client)] \
        == [True, False, True, True]


def test_named_port_resolves_on_the_destination_pod():
    """A named port is the destination pod's container port of that name and protocol: 'https' is 8443 here, so
    8443 passes and 443 (the Service port a reader might map it to) does not; UDP 'dns' does not open TCP 53."""
    pol = _ingress_policy({"ports": [{"port": "https"}, {"port": "dns", "protocol": "UDP"}]})
    client = _pod("shop", "cli", "10.244.1.9")
    assert decide(pol, NS, client, SERVER, 8443).allowed
    assert not decide(pol, NS, client, SERVER, 443).allowed
    assert decide(pol, NS, client, SERVER, 53, "UDP").allowed
    assert not decide(pol, NS, client, SERVER, 53, "TCP").allowed
    # a pod without a port of that name is not opened by it, whatever the number
    bare = Party(name="shop/bare", ips=("10.244.1.6",), namespace="shop", labels={"app": "payments"})
    assert not decide(pol, NS, client, bare, 8443).allowed


def test_end_port_is_an_inclusive_range():
    pol = _ingress_policy({"ports": [{"port": 9000, "endPort": 9090, "protocol": "TCP"}]})
    client = _pod("shop", "cli", "10.244.1.9")
    assert [decide(pol, NS, client, SERVER, p).allowed for p in (8999, 9000, 9045, 9090, 9091)] == \
        [False, True, True, True, False]


def test_ip_block_except_carves_out_addresses():
    """ipBlock matches the peer's address inside cidr and outside every except; IPv6 blocks never match IPv4."""
    pol = _ingress_policy({"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}},
                                    {"ipBlock": {"cidr": "fd00:10:244::/48", "except": ["fd00:10:244:2::/64"]}}]})
    inside = _pod("web", "a", "10.244.3.7")
    carved = _pod("web", "b", "10.244.2.7")
    outside = Party(name="192.0.2.10", ips=("192.0.2.10",))
    six = Party(name="fd00:10:244:3::7", ips=("fd00:10:244:3::7",))
    six_carved = Party(name="fd00:10:244:2::7", ips=("fd00:10:244:2::7",))
    assert [decide(pol, NS, p, SERVER, 8443).allowed for p in (inside, carved, outside, six, six_carved)] == \
        [True, False, False, True, False]


def test_policy_types_default_and_an_egress_only_policy_does_not_isolate_ingress():
    """Without policyTypes, a policy is Ingress, plus Egress when it has egress rules (the API server's
    defaulting). An egress-only policy leaves ingress open; `ingress: []` with Ingress isolates."""
    egress_only = policy_view({"metadata": {"namespace": "shop", "name": "e"},
                               "spec": {"podSelector": {}, "egress": [{"to": [{"podSelector": {}}]}]}})
    assert egress_only is not None and egress_only.policy_types == ["Ingress", "Egress"]
    explicit = policy_view({"metadata": {"namespace": "shop", "name": "e"},
                            "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": []}})
    client = _pod("web", "api", "10.244.3.7")
    d = decide([explicit], NS, client, SERVER, 8443)
    assert d.allowed and not d.ingress.isolated
    d = decide([egress_only], NS, client, SERVER, 8443)  # defaulted: Ingress too, and it has no ingress rule
    assert not d.allowed and d.ingress.isolated and d.ingress.note == "isolated, and no policy allows it"
    assert [r.name for r in d.ingress.selecting] == ["e"] and d.ingress.allowing == []


def test_the_decision_names_the_rules():
    pols = [policy_view({"metadata": {"namespace": "shop", "name": "default-deny"},
                         "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
            policy_view({"metadata": {"namespace": "shop", "name": "allow-web"},
                         "spec": {"podSelector": {"matchLabels": {"app": "payments"}},
                                  "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "front"}}}]},
                                              {"ports": [{"port": 9090}]}]}})]
    d = decide(pols, NS, _pod("web", "api", "10.244.3.7"), SERVER, 8443, purpose="service endpoint")
    assert d.allowed and [(r.name, r.rule) for r in d.ingress.allowing] == [("allow-web", 0)]
    assert {r.name for r in d.ingress.selecting} == {"default-deny", "allow-web"}
    d = decide(pols, NS, _pod("tools", "cli", "10.244.2.7"), SERVER, 8443)
    assert not d.allowed and not d.ingress.allowing and d.egress.allowed and not d.egress.isolated


# --- the admin tiers ---------------------------------------------------------------------------------------

def _admin(obj: dict):
    from bundle.collect.netpol import admin_policy_view

    view = admin_policy_view(obj)
    assert view is not None
    return view


def test_policy_assistant_walkthrough():
    """SIG Network's policy-assistant walkthrough: an ANP Allow on port 80, an ANP Pass for development
    namespaces, a BANP Deny for everything, a NetworkPolicy isolating pod a. Our verdicts and the tier that
    decides each equal the README's table: [ANP] Allow; [ANP] No-Op -> [BANP] Deny; [ANP] Pass -> [NPv1] Dropped."""
    doc = yaml.safe_load((DATA / "policy_assistant_walkthrough.yaml").read_text())
    nps = [policy_view(p) for p in doc["policies"] if p["kind"] == "NetworkPolicy"]
    admin = [_admin(p) for p in doc["policies"] if p["kind"] != "NetworkPolicy"]
    assert [(a.kind, a.name, a.priority) for a in admin] == [("AdminNetworkPolicy", "anp1", 1),
                                                              ("AdminNetworkPolicy", "anp2", 2),
                                                              ("BaselineAdminNetworkPolicy", "default", None)]
    tier = {"[ANP] Allow (allow-80)": ("AdminNetworkPolicy", "Allow"),
            "[ANP] No-Op -> [BANP] Deny (baseline-deny)": ("BaselineAdminNetworkPolicy", "Deny"),
            "[ANP] Pass (development-ns) -> [NPv1] Dropped (demo/deny-anything-to-pod-a)": ("NetworkPolicy", None)}
    for t in doc["traffic"]:
        src, dst = t["source"], t["destination"]
        namespaces = [NamespaceView(name=n, labels={"kubernetes.io/metadata.name": n, **extra}) for n, extra in
                      (("demo", {}), ("demo2", src.get("namespace_labels", {})))]
        a = Party(name="src", ips=("10.244.5.2",), namespace=src["namespace"], labels=src["labels"])
        b = Party(name="dst", ips=("10.244.5.3",), namespace=dst["namespace"], labels=dst["labels"])
        d = decide(nps, namespaces, a, b, t["port"], t["protocol"], admin=admin)
        assert d.allowed == (t["verdict"] == "Allowed"), t
        decided, action = tier[t["ingress"]]
        assert d.ingress.decided_by == decided, t
        if action:
            assert [r.action for r in d.ingress.admin][-1] == action
        if "Pass" in t["ingress"]:
            assert [(r.name, r.action) for r in d.ingress.admin] == [("anp2/development-ns", "Pass")]
            assert [r.name for r in d.ingress.selecting] == ["deny-anything-to-pod-a"]
        assert not d.egress.isolated and t["egress"] == "no policies targeting egress"


def test_admin_priority_pass_and_baseline_only_for_unisolated_pods():
    """Lower priority numbers decide first; a Pass stops the admin tier (a later ANP's Deny does not apply);
    the baseline decides only for a pod no NetworkPolicy isolates; networks match addresses."""
    deny_all = _admin({"kind": "AdminNetworkPolicy", "metadata": {"name": "deny-all"},
                       "spec": {"priority": 50, "subject": {"namespaces": {}},
                                "ingress": [{"name": "deny", "action": "Deny", "from": [{"namespaces": {}}]}]}})
    allow_web = _admin({"kind": "AdminNetworkPolicy", "metadata": {"name": "allow-web"},
                        "spec": {"priority": 10, "subject": {"pods": {"namespaceSelector": {},
                                                                      "podSelector": {"matchLabels": {"app": "payments"}}}},
                                 "ingress": [{"name": "web", "action": "Allow",
                                              "from": [{"namespaces": {"matchLabels": {"team": "front"}}}],
                                              "ports": [{"portRange": {"start": 8000, "end": 8999}}]},
                                             {"name": "tools", "action": "Pass",
                                              "from": [{"namespaces": {"matchLabels": {"team": "pay"}}}]}]}})
    baseline = _admin({"kind": "BaselineAdminNetworkPolicy", "metadata": {"name": "default"},
                       "spec": {"subject": {"namespaces": {}},
                                "egress": [{"name": "no-metadata", "action": "Deny",
                                            "to": [{"networks": ["169.254.169.254/32"]}]}]}})
    web, tools = _pod("web", "api", "10.244.3.7"), _pod("tools", "cli", "10.244.2.7")
    admin = [deny_all, allow_web, baseline]
    assert decide([], NS, web, SERVER, 8443, admin=admin).allowed  # priority 10 Allow before 50's Deny
    assert not decide([], NS, web, SERVER, 9090, admin=admin).allowed  # port outside the range: 50 denies
    d = decide([], NS, tools, SERVER, 8443, admin=admin)  # Pass at 10: 50's Deny is skipped, no NP: allowed
    assert d.allowed and [r.action for r in d.ingress.admin] == ["Pass"] and d.ingress.decided_by == "none"
    metadata = Party(name="169.254.169.254", ips=("169.254.169.254",))
    d = decide([], NS, web, metadata, 80, admin=admin)
    assert not d.allowed and d.egress.decided_by == "BaselineAdminNetworkPolicy"
    # the same egress from a pod a NetworkPolicy isolates for egress: NetworkPolicy decides, the baseline does not
    allow_out = policy_view({"metadata": {"namespace": "web", "name": "out"},
                             "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}})
    d = decide([allow_out], NS, web, metadata, 80, admin=admin)
    assert d.allowed and d.egress.decided_by == "NetworkPolicy"


def test_a_host_network_client_gets_no_verdict():
    """A host-network pod shares its node's address (so it would be found as the client pod by address), but its
    traffic is the node's: NetworkPolicy does not select it and traffic from a pod's own node is always allowed
    to it. No decision is made for it rather than a wrong denial."""
    from bundle.analyze.policy import client_pod
    from bundle.models.kube import KubeSlice, PodView

    kube = KubeSlice(server="http://127.0.0.1:1", calls=[], pods=[
        PodView(namespace="kube-system", name="node-exporter", pod_ips=["10.244.0.1"], host_network=True),
        PodView(namespace="web", name="api", pod_ips=["10.244.3.7"])])
    assert client_pod(kube, ["10.244.0.1"], None) is None
    assert client_pod(kube, ["10.244.3.7"], None).name == "api"
