"""NetworkPolicy decisions for one flow, with the upstream (networking.k8s.io/v1) semantics.

A pod is isolated for a direction when any policy of that type in its namespace selects it; an isolated pod's
traffic in that direction is allowed only when some rule of a selecting policy matches both the peer and the
port. The client's egress and the server's ingress are decided apart and a flow passes when both allow it.
Peers: podSelector (pods of the policy's namespace), namespaceSelector (every pod of the matching namespaces),
both in one entry (pods matching the first in namespaces matching the second), ipBlock (the peer's addresses,
minus `except`). Ports: protocol (TCP when unset), a number or a range to endPort, or a name resolved on the
destination pod's container ports; an empty list matches every port. Pods on the host network are left out,
as most CNIs do (the spec leaves them undefined).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bundle.analyze._common import in_vantage
from bundle.models import CountersSlice, Evidence, Finding, FindingTarget, Layer, RouteSlice, Severity, Vantage
from bundle.models.kube import KubeSlice, PodView, target_port
from bundle.models.policy import (
    AdminPeer,
    AdminPolicyView,
    AdminRule,
    DirectionVerdict,
    FlowDecision,
    LabelSelector,
    NamespaceView,
    NetworkPolicyView,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    RuleRef,
)


@dataclass(frozen=True)
class Party:
    """One end of a flow: a pod (namespace, labels, named container ports) or an address that is no pod."""

    name: str
    ips: tuple[str, ...]
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    named_ports: tuple[tuple[str, str, int], ...] = ()  # (name, protocol, number)
    host_network: bool = False

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None and not self.host_network


def selects(sel: LabelSelector, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector: every matchLabels pair and every requirement; an empty selector selects all."""
    if any(labels.get(k) != v for k, v in sel.match_labels.items()):
        return False
    for req in sel.match_expressions:
        present = req.key in labels
        if req.operator == "In":
            ok = present and labels[req.key] in req.values
        elif req.operator == "NotIn":
            ok = not present or labels[req.key] not in req.values
        elif req.operator == "Exists":
            ok = present
        elif req.operator == "DoesNotExist":
            ok = not present
        else:
            ok = False  # the API refuses other operators; one that got through selects nothing
        if not ok:
            return False
    return True


def _in_block(ip: str, cidr: str, excepts: Iterable[str]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
        net = ipaddress.ip_network(cidr, strict=False)
        if addr.version != net.version or addr not in net:
            return False
        return not any(addr in n for n in (ipaddress.ip_network(e, strict=False) for e in excepts)
                       if n.version == addr.version)
    except ValueError:
        return False


def peer_matches(peer: PolicyPeer, policy_ns: str, party: Party, namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    if peer.ip_block is not None:
        return any(_in_block(ip, peer.ip_block.cidr, peer.ip_block.except_cidrs) for ip in party.ips)
    if not party.is_pod:
        return False
    assert party.namespace is not None
    if peer.namespace_selector is not None:
        ns_labels = namespaces.get(party.namespace)
        if ns_labels is None or not selects(peer.namespace_selector, ns_labels):
            return False
    elif party.namespace != policy_ns:  # a podSelector alone: the policy's own namespace
        return False
    return peer.pod_selector is None or selects(peer.pod_selector, party.labels)


def port_matches(p: PolicyPort, port: int, protocol: str, destination: Party) -> bool:
    if p.protocol.upper() != protocol.upper():
        return False
    if p.port is None:
        return True
    if isinstance(p.port, int):
        return port == p.port if p.end_port is None else p.port <= port <= p.end_port
    # a named port means the destination pod's container port of that name and protocol
    return any(name == p.port and proto.upper() == protocol.upper() and number == port
               for name, proto, number in destination.named_ports)


def _rule_matches(rule: PolicyRule, policy_ns: str, peer: Party, port: int, protocol: str, destination: Party,
                  namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    if rule.peers and not any(peer_matches(p, policy_ns, peer, namespaces) for p in rule.peers):
        return False
    return not rule.ports or any(port_matches(p, port, protocol, destination) for p in rule.ports)


def _ns_or_pods(namespaces_sel: LabelSelector | None, pod_ns_sel: LabelSelector | None, pod_sel: LabelSelector | None,
                party: Party, namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    """The admin tiers' two ways to select pods (subjects and peers alike): every pod of the namespaces one
    selector matches, or the pods matching a pod selector in the namespaces matching a namespace selector."""
    ns_labels = namespaces.get(party.namespace or "")
    if ns_labels is None:
        return False
    if namespaces_sel is not None:
        return selects(namespaces_sel, ns_labels)
    if pod_ns_sel is not None and pod_sel is not None:
        return selects(pod_ns_sel, ns_labels) and selects(pod_sel, party.labels)
    return False


def _admin_subject(pol: AdminPolicyView, pod: Party, namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    return _ns_or_pods(pol.subject_namespaces, pol.subject_pod_namespaces, pol.subject_pods, pod, namespaces)


def _admin_peer(peer: AdminPeer, party: Party, namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    if peer.networks:
        return any(_in_block(ip, cidr, ()) for cidr in peer.networks for ip in party.ips)
    if peer.unsupported is not None or not party.is_pod:
        return False
    return _ns_or_pods(peer.namespaces, peer.pod_namespaces, peer.pod_selector, party, namespaces)


def _admin_port(p: PolicyPort, port: int, protocol: str, destination: Party) -> bool:
    if p.protocol == "ANY":  # a named port: the destination pod's, whatever its protocol says
        return any(name == p.port and proto.upper() == protocol.upper() and number == port
                   for name, proto, number in destination.named_ports)
    return port_matches(p, port, protocol, destination)


def _admin_match(rule: AdminRule, peer: Party, port: int, protocol: str, destination: Party,
                 namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    if not any(_admin_peer(p, peer, namespaces) for p in rule.peers):
        return False  # `from`/`to` is required: an admin rule without peers matches nothing
    return rule.ports is None or any(_admin_port(p, port, protocol, destination) for p in rule.ports)


def _admin_tier(admin: Iterable[AdminPolicyView], kind: str, direction_: str, pod: Party, peer: Party, port: int,
                protocol: str, destination: Party, namespaces: Mapping[str, Mapping[str, str]]) -> list[RuleRef]:
    """The first matching rule of the tier's policies that select the pod (AdminNetworkPolicies by ascending
    priority, rules in order): [] when none matches."""
    pols = sorted((a for a in admin if a.kind == kind and _admin_subject(a, pod, namespaces)),
                  key=lambda a: (a.priority if a.priority is not None else 1 << 30, a.name))
    for pol in pols:
        rules = pol.ingress if direction_ == "ingress" else pol.egress
        for i, rule in enumerate(rules):
            if _admin_match(rule, peer, port, protocol, destination, namespaces):
                return [RuleRef(namespace="", name=f"{pol.name}/{rule.name}" if rule.name else pol.name,
                                direction=direction_, rule=i, tier=kind, action=rule.action)]
    return []


def direction(policies: Iterable[NetworkPolicyView], direction_: str, pod: Party, peer: Party, port: int,
              protocol: str, destination: Party, namespaces: Mapping[str, Mapping[str, str]],
              admin: Iterable[AdminPolicyView] = ()) -> DirectionVerdict:
    """Ingress of `pod` from `peer`, or egress of `pod` to `peer` (direction_ "ingress" or "egress"): the
    AdminNetworkPolicies first (Allow and Deny are final, Pass hands on), then NetworkPolicy, then — for a pod
    no NetworkPolicy isolates — the BaselineAdminNetworkPolicy."""
    if not pod.is_pod:
        why = "on the host network: policies do not select it" if pod.host_network else "not a pod"
        return DirectionVerdict(isolated=False, allowed=True, decided_by="none", note=why)
    admin = list(admin)
    first = _admin_tier(admin, "AdminNetworkPolicy", direction_, pod, peer, port, protocol, destination, namespaces)
    if first and first[0].action in ("Allow", "Deny"):
        allowed = first[0].action == "Allow"
        return DirectionVerdict(isolated=True, allowed=allowed, decided_by="AdminNetworkPolicy", admin=first,
                                selecting=first if not allowed else [], allowing=first if allowed else [],
                                note=f"AdminNetworkPolicy {first[0].name}: {first[0].action}")
    kind = "Ingress" if direction_ == "ingress" else "Egress"
    selecting = [p for p in policies if p.namespace == pod.namespace and kind in p.policy_types
                 and selects(p.pod_selector, pod.labels)]
    if not selecting:
        base = _admin_tier(admin, "BaselineAdminNetworkPolicy", direction_, pod, peer, port, protocol, destination,
                           namespaces)
        if base and base[0].action in ("Allow", "Deny"):
            allowed = base[0].action == "Allow"
            return DirectionVerdict(isolated=True, allowed=allowed, decided_by="BaselineAdminNetworkPolicy",
                                    admin=first + base, selecting=base if not allowed else [],
                                    allowing=base if allowed else [],
                                    note=f"no NetworkPolicy selects it; BaselineAdminNetworkPolicy {base[0].name}: "
                                         f"{base[0].action}")
        return DirectionVerdict(isolated=False, allowed=True, decided_by="none", admin=first,
                                note=f"no {kind} policy selects it")
    allowing = []
    for p in selecting:
        rules = p.ingress if direction_ == "ingress" else p.egress
        allowing += [RuleRef(namespace=p.namespace, name=p.name, direction=direction_, rule=i)
                     for i, r in enumerate(rules)
                     if _rule_matches(r, p.namespace, peer, port, protocol, destination, namespaces)]
    refs = [RuleRef(namespace=p.namespace, name=p.name, direction=direction_) for p in selecting]
    return DirectionVerdict(isolated=True, allowed=bool(allowing), selecting=refs, allowing=allowing, admin=first,
                            note="" if allowing else "isolated, and no policy allows it")


def decide(policies: list[NetworkPolicyView], namespaces: list[NamespaceView], source: Party, destination: Party,
           port: int, protocol: str = "TCP", purpose: str = "", address: str | None = None,
           admin: Iterable[AdminPolicyView] = ()) -> FlowDecision:
    """The policies' verdict on source -> destination:port/protocol."""
    labels = {n.name: n.labels for n in namespaces}
    admin = list(admin)
    egress = direction(policies, "egress", source, destination, port, protocol, destination, labels, admin)
    ingress = direction(policies, "ingress", destination, source, port, protocol, destination, labels, admin)
    return FlowDecision(purpose=purpose, source=source.name, destination=destination.name, address=address,
                        port=port, protocol=protocol.upper(), egress=egress, ingress=ingress,
                        allowed=egress.allowed and ingress.allowed)


# --- the flows of one incident, from the Kubernetes slice ---------------------------------------------------

KUBE_VANTAGE = "kubernetes-api"
KUBE_DOC = f"vantages/{KUBE_VANTAGE}/kube.json"
DNS_PURPOSE = "cluster DNS"


def party(pod: PodView) -> Party:
    named = tuple((p.name, p.protocol, p.port) for c in pod.containers for p in c.named_ports)
    return Party(name=f"{pod.namespace}/{pod.name}", ips=tuple(pod.pod_ips), namespace=pod.namespace,
                 labels=dict(pod.labels), named_ports=named, host_network=pod.host_network)


def client_pod(kube: KubeSlice, addresses: Iterable[str], vantage: str | None) -> PodView | None:
    """The client's Pod object: the one holding an address of the client vantage, else the pod that became it.
    A host-network pod is none: its traffic is the node's, which NetworkPolicy does not select, and traffic from
    a pod's own node is always allowed to it — deciding for it would deny what passes."""
    held = set(addresses)
    pod = next((p for p in kube.pods if held & set(p.pod_ips) and not p.host_network), None)
    if pod is None and vantage is not None:
        named = next((pv.pod for pv in kube.pod_vantages if pv.vantage == vantage), None)
        pod = next((p for p in kube.pods if f"{p.namespace}/{p.name}" == named and not p.host_network), None)
    return pod


@dataclass(frozen=True)
class Frontend:
    """What the client dials for one decided flow: a Service's frontend, and what the flow is for."""

    purpose: str
    address: str | None
    port: int
    name: str | None


def decisions(kube: KubeSlice, client: PodView) -> list[tuple[Frontend, FlowDecision]]:
    """The client's flows to each Service's endpoint pods on the target port, and to the cluster DNS pods on
    53/UDP and 53/TCP, decided. An endpoint whose Pod object was not read is left out: its ingress policies
    cannot be judged without its labels."""
    src = party(client)
    by_ip = {ip: p for p in [*kube.pods, *(kube.cluster_dns.pods if kube.cluster_dns else [])] for ip in p.pod_ips}
    out: list[tuple[Frontend, FlowDecision]] = []
    for svc in kube.services:
        slices = [v for v in kube.endpoint_slices if v.service == f"{svc.namespace}/{svc.name}"]
        for port in svc.ports:
            tp = target_port(port, slices)
            if tp is None:
                continue
            front = Frontend(purpose=f"{svc.namespace}/{svc.name}:{port.name or port.port}",
                             address=next((ip for ip in svc.cluster_ips if ip and ip != "None"), None), port=port.port,
                             name=f"{svc.name}.{svc.namespace}.svc.cluster.local")
            for address in dict.fromkeys(a for v in slices for e in v.endpoints if e.ready is not False
                                         for a in e.addresses):
                pod = by_ip.get(address)
                if pod is not None:
                    out.append((front, decide(kube.policies, kube.namespaces, src, party(pod), tp, port.protocol,
                                              purpose=front.purpose, address=address, admin=kube.admin_policies)))
    dns = kube.cluster_dns
    if dns is not None:
        front = Frontend(purpose=DNS_PURPOSE, port=53, name=None,
                         address=next((ip for ip in (dns.service.cluster_ips if dns.service else []) if ip), None))
        for pod in dns.pods:
            for proto in ("UDP", "TCP"):
                out.append((front, decide(kube.policies, kube.namespaces, src, party(pod), 53, proto,
                                          purpose=DNS_PURPOSE, address=next(iter(pod.pod_ips), None),
                                          admin=kube.admin_policies)))
    return out


def ref_name(r: RuleRef) -> str:
    """ns/name for a NetworkPolicy; the tier and policy/rule for the admin tiers."""
    return f"{r.namespace}/{r.name}" if r.tier == "NetworkPolicy" else f"{r.tier} {r.name}"


def _policies_pointer(kube: KubeSlice, refs: list[RuleRef]) -> list[Evidence]:
    found = {i for ref in refs for i, p in enumerate(kube.policies) if ref.tier == "NetworkPolicy"
             and (p.namespace, p.name) == (ref.namespace, ref.name)}
    admin = {i for ref in refs for i, a in enumerate(kube.admin_policies) if ref.tier == a.kind
             and a.name == ref.name.split("/")[0]}
    return [Evidence(member=KUBE_DOC, pointer=f"policies[{i}]") for i in sorted(found)] + \
        [Evidence(member=KUBE_DOC, pointer=f"admin_policies[{i}]") for i in sorted(admin)]


def policy_findings(kube: KubeSlice, client: PodView) -> list[Finding]:
    """policy.denied_egress / policy.denied_ingress, one per direction and Service port (or the cluster DNS):
    the policies isolate the pod for that direction and none of their rules allows the client's flow."""
    found: dict[tuple[str, str, int], list[tuple[Frontend, FlowDecision]]] = {}
    for front, d in decisions(kube, client):
        for side, verdict in (("egress", d.egress), ("ingress", d.ingress)):
            if not verdict.allowed:
                found.setdefault((side, front.purpose, front.port), []).append((front, d))
    out: list[Finding] = []
    others = {k: n for k, n in kube.other_policies.items() if n and "policy.networking.k8s.io" not in k}
    caveat = (" Also in force and not evaluated here: " + ", ".join(f"{k} ({n})" for k, n in sorted(others.items()))
              + " — the CNI's own policies may decide this flow too.") if others else ""
    if others:
        i = next((i for i, c in enumerate(kube.calls) if c.member and c.resource in {k.split(" ")[0] for k in others}), None)
        out.append(Finding(
            id="policy.not_evaluated", severity=Severity.INFO, layer=Layer.TRANSPORT, vantage=KUBE_VANTAGE,
            target=None, summary="Policy objects of the CNI beside NetworkPolicy exist and are kept raw, not evaluated: "
                                 + ", ".join(f"{k} ({n})" for k, n in sorted(others.items()))
                                 + ". Calico and Cilium enforce them beside NetworkPolicy (and the admin tiers, which "
                                   "are evaluated): read them before trusting a verdict.",
            evidence=[Evidence(member=KUBE_DOC, pointer="other_policies")]
            + ([Evidence(member=kube.calls[i].member or KUBE_DOC, pointer="items")] if i is not None else []),
            next_command="kubectl get " + ",".join(sorted({k.split(" ")[0] for k in others})) + " -A -o yaml"))
    for (side, purpose, port), items in found.items():
        front = items[0][0]
        denied = sorted({f"{d.destination} ({d.address}) {d.protocol} {d.port}" for _, d in items})
        refs = [r for _, d in items for r in (d.egress if side == "egress" else d.ingress).selecting]
        names = sorted({ref_name(r) for r in refs})
        pod = items[0][1].source if side == "egress" else items[0][1].destination
        whose = (f"the client {pod}'s egress" if side == "egress" else f"the ingress of {pod}"
                 + (f" and {len({d.destination for _, d in items}) - 1} more" if len({d.destination for _, d in items}) > 1 else ""))
        tier = (items[0][1].egress if side == "egress" else items[0][1].ingress).decided_by
        how = (f"{whose} is isolated by {', '.join(names)}, and no rule of theirs allows" if tier == "NetworkPolicy"
               else f"for {whose}, {', '.join(names)} denies")
        summary = (f"{tier} denies {client.namespace}/{client.name} -> {purpose}: {how} {', '.join(denied[:4])}"
                   + (f" (+{len(denied) - 4} more)" if len(denied) > 4 else "")
                   + ". Where the CNI enforces NetworkPolicy, these packets are dropped." + caveat)
        ns = (client.namespace if side == "egress" else items[0][1].destination.split("/")[0])
        out.append(Finding(
            id="policy.denied_egress" if side == "egress" else "policy.denied_ingress", severity=Severity.WARNING,
            layer=Layer.DNS if purpose == DNS_PURPOSE else Layer.TRANSPORT, vantage=KUBE_VANTAGE,
            target=FindingTarget(address=front.address, port=port, name=front.name), count=len(denied),
            summary=summary, evidence=_policies_pointer(kube, refs) or [Evidence(member=KUBE_DOC, pointer="policies")],
            next_command=(f"kubectl get networkpolicy -n {ns} "
                          f"{' '.join(n.split('/')[1] for n in names if n.startswith(ns + '/'))} -o yaml"
                          if tier == "NetworkPolicy" else
                          f"kubectl get {tier.lower()} {' '.join(sorted({r.name.split('/')[0] for r in refs}))} -o yaml")))
    return out


LOST = frozenset({"transport.connect_timeout", "transport.syn_sent_stuck", "capture.syn_unanswered"})


def allowed_but_lost(kube: KubeSlice, client: PodView, client_vantage: str, findings: list[Finding]) -> list[Finding]:
    """policy.allowed_but_lost: policies select the pods of a flow (so a CNI programs rules for it), allow it, and
    the client's SYNs toward that Service or endpoint still go unanswered. The policy objects are not the cause;
    the dataplane's programmed rules (stale, or a CNI that disagrees), or something else on the path, is."""
    out: list[Finding] = []
    lost = [f for f in findings if f.id in LOST and f.vantage == client_vantage and f.target is not None]
    seen: set[tuple[str, int]] = set()
    for front, d in decisions(kube, client):
        if not d.allowed or not (d.egress.isolated or d.ingress.isolated) or front.purpose == DNS_PURPOSE:
            continue
        hit = next((f for f in lost if f.target is not None and (f.target.address, f.target.port) in
                    ((front.address, front.port), (d.address, d.port))), None)
        if hit is None or (front.purpose, front.port) in seen:
            continue
        seen.add((front.purpose, front.port))
        rules = [r for v in (d.egress, d.ingress) for r in v.allowing]
        out.append(Finding(
            id="policy.allowed_but_lost", severity=Severity.INFO, layer=Layer.TRANSPORT, vantage=KUBE_VANTAGE,
            target=FindingTarget(address=front.address, port=front.port, name=front.name),
            summary=f"The NetworkPolicies allow {d.source} -> {front.purpose} ({d.destination} {d.protocol} {d.port}: "
                    + ", ".join(f"{ref_name(r)} {r.direction} rule {r.rule}" for r in rules)
                    + f"), yet the client's SYNs go unanswered: not the policy objects — look at what the dataplane "
                      f"programmed for them (the CNI's rules on the nodes), or elsewhere on the path.",
            evidence=_policies_pointer(kube, rules) + hit.evidence[:1],
            next_command=f"kubectl get networkpolicy -n {d.destination.split('/')[0]} -o yaml"))
    return out


def chain_findings(vantage: Vantage, doc: CountersSlice) -> list[Finding]:
    """policy.dataplane_drops: a CNI policy chain's DROP/REJECT rules counted packets during the window — the
    CNI's NetworkPolicy enforcement refused traffic here, on the interfaces the chain names."""
    out: list[Finding] = []
    for i, w in enumerate(doc.policy_chains):
        if w.end is None or w.end.drop_packets <= w.start.drop_packets:
            continue
        dropped = w.end.drop_packets - w.start.drop_packets
        where = f" (interfaces {', '.join(w.end.interfaces)})" if w.end.interfaces else ""
        out.append(Finding(
            id="policy.dataplane_drops", severity=Severity.WARNING, layer=Layer.TRANSPORT, vantage=vantage.id,
            target=None, count=dropped,
            summary=f"In {vantage.id}, the {w.end.engine} policy chain {w.end.chain}{where} dropped {dropped} "
                    f"packet(s) during the window ({w.end.backend}, IPv{w.end.family}): the CNI's NetworkPolicy "
                    f"enforcement refused traffic here.",
            evidence=[Evidence(member=f"vantages/{vantage.id}/counters.json", pointer=f"policy_chains[{i}]")],
            next_command=in_vantage(vantage, f"{'ip6tables' if w.end.family == 6 else 'iptables'} -t filter -L "
                                             f"{w.end.chain} -v -x -n")))
    return out


def dataplane_not_visible(vantage: Vantage, route: RouteSlice) -> list[Finding]:
    """policy.dataplane_not_visible: the node's links show a CNI that enforces policy outside netfilter (Cilium's
    eBPF, Calico's eBPF mode, Antrea's OVS): its drops cannot be seen in the filter table's counters."""
    names = {link.name for link in route.links}
    engine = ("Cilium (eBPF)" if names & {"cilium_host", "cilium_net", "cilium_vxlan", "cilium_geneve"} else
              "Calico in eBPF mode" if names & {"bpfnatin", "bpfnatout"} else
              "Antrea (Open vSwitch)" if "antrea-gw0" in names else None)
    if engine is None:
        return []
    return [Finding(
        id="policy.dataplane_not_visible", severity=Severity.INFO, layer=Layer.TRANSPORT, vantage=vantage.id,
        target=None, summary=f"In {vantage.id}, the links show {engine}: it enforces NetworkPolicy outside netfilter, "
                             f"so its drops do not show in the filter table's counters; use the CNI's own tools.",
        evidence=[Evidence(member=f"vantages/{vantage.id}/route.json", pointer="links")],
        next_command="cilium-dbg monitor --type drop" if engine.startswith("Cilium") else
        "kubectl -n kube-system logs ds/calico-node" if engine.startswith("Calico") else "antctl get ovsflows")]
