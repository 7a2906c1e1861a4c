"""NetworkPolicy objects as the API serves them (networking.k8s.io/v1), read into typed views.

The API server defaults `policyTypes` (Ingress always; Egress too when the policy has egress rules); an object
read from a file may lack it, so the same default is applied here. Malformed parts are skipped, never guessed:
a peer or port that cannot be read makes its rule match nothing rather than everything.
"""

from __future__ import annotations

from typing import Any

from bundle.models.policy import (
    AdminPeer,
    AdminPolicyView,
    AdminRule,
    IpBlock,
    LabelSelector,
    NetworkPolicyView,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    SelectorRequirement,
)

_NEVER = PolicyPeer(ip_block=IpBlock(cidr="0.0.0.0/32", except_cidrs=["0.0.0.0/32"]))  # matches no address


def selector(obj: Any) -> LabelSelector | None:
    if not isinstance(obj, dict):
        return None
    labels = {str(k): str(v) for k, v in (obj.get("matchLabels") or {}).items()}
    exprs = [SelectorRequirement(key=str(e.get("key", "")), operator=str(e.get("operator", "")),
                                 values=[str(v) for v in e.get("values") or []])
             for e in obj.get("matchExpressions") or [] if isinstance(e, dict)]
    return LabelSelector(match_labels=labels, match_expressions=exprs)


def _peer(obj: Any) -> PolicyPeer:
    if not isinstance(obj, dict):
        return _NEVER
    block = obj.get("ipBlock")
    ip_block = None
    if isinstance(block, dict):
        if not isinstance(block.get("cidr"), str):
            return _NEVER
        ip_block = IpBlock(cidr=block["cidr"], except_cidrs=[str(c) for c in block.get("except") or []])
    peer = PolicyPeer(pod_selector=selector(obj.get("podSelector")),
                      namespace_selector=selector(obj.get("namespaceSelector")), ip_block=ip_block)
    if peer.pod_selector is None and peer.namespace_selector is None and peer.ip_block is None:
        return _NEVER  # the API rejects an empty peer; one that slipped through allows nothing
    return peer


def _port(obj: Any) -> PolicyPort:
    if not isinstance(obj, dict):
        return PolicyPort(protocol="none")
    port = obj.get("port")
    if isinstance(port, bool) or not isinstance(port, (int, str, type(None))):
        port = None
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    end = obj.get("endPort")
    return PolicyPort(protocol=str(obj.get("protocol") or "TCP").upper(), port=port,
                      end_port=end if isinstance(end, int) and not isinstance(end, bool) else None)


def _rules(items: Any, peers_key: str) -> list[PolicyRule]:
    out = []
    for r in items if isinstance(items, list) else []:
        r = r if isinstance(r, dict) else {}
        out.append(PolicyRule(peers=[_peer(p) for p in r.get(peers_key) or []],
                              ports=[_port(p) for p in r.get("ports") or []]))
    return out


def policy_view(obj: dict[str, Any], member: str | None = None) -> NetworkPolicyView | None:
    """One NetworkPolicy object, or None when it has no name or spec to read."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec")
    if not isinstance(spec, dict) or not isinstance(meta, dict) or not meta.get("name"):
        return None
    types = [str(t) for t in spec.get("policyTypes") or []]
    if not types:
        types = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    return NetworkPolicyView(namespace=str(meta.get("namespace") or ""), name=str(meta["name"]),
                             pod_selector=selector(spec.get("podSelector")) or LabelSelector(),
                             policy_types=types, ingress=_rules(spec.get("ingress"), "from"),
                             egress=_rules(spec.get("egress"), "to"), member=member)


def _admin_selector(obj: Any) -> LabelSelector | None:
    """A LabelSelector; an early v1alpha1 object wrapped it as {namespaceSelector: {...}}: unwrapped."""
    if isinstance(obj, dict) and set(obj) == {"namespaceSelector"}:
        obj = obj["namespaceSelector"]
    return selector(obj)


def _admin_peer(obj: Any) -> AdminPeer:
    if not isinstance(obj, dict):
        return AdminPeer(unsupported="malformed")
    if isinstance(obj.get("pods"), dict):
        pods = obj["pods"]
        return AdminPeer(pod_namespaces=selector(pods.get("namespaceSelector")) or LabelSelector(),
                         pod_selector=selector(pods.get("podSelector")) or LabelSelector())
    if "namespaces" in obj:
        return AdminPeer(namespaces=_admin_selector(obj["namespaces"]) or LabelSelector())
    if isinstance(obj.get("networks"), list):
        return AdminPeer(networks=[str(c) for c in obj["networks"]])
    kind = next((k for k in ("nodes", "domainNames") if k in obj), "unknown")
    return AdminPeer(unsupported=kind)


def _admin_port(obj: Any) -> PolicyPort:
    if not isinstance(obj, dict):
        return PolicyPort(protocol="none")
    if isinstance(obj.get("portNumber"), dict):
        pn = obj["portNumber"]
        return PolicyPort(protocol=str(pn.get("protocol") or "TCP").upper(), port=pn.get("port"))
    if isinstance(obj.get("namedPort"), str):
        return PolicyPort(protocol="ANY", port=obj["namedPort"])
    if isinstance(obj.get("portRange"), dict):
        pr = obj["portRange"]
        return PolicyPort(protocol=str(pr.get("protocol") or "TCP").upper(), port=pr.get("start"),
                          end_port=pr.get("end"))
    return PolicyPort(protocol="none")


def _admin_rules(items: Any, peers_key: str) -> list[AdminRule]:
    out = []
    for r in items if isinstance(items, list) else []:
        r = r if isinstance(r, dict) else {}
        ports = r.get("ports")
        out.append(AdminRule(name=str(r.get("name") or ""), action=str(r.get("action") or ""),
                             peers=[_admin_peer(p) for p in r.get(peers_key) or []],
                             ports=None if ports is None else [_admin_port(p) for p in ports]))
    return out


def admin_policy_view(obj: dict[str, Any], kind: str | None = None) -> AdminPolicyView | None:
    """An AdminNetworkPolicy or BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1); `kind` when the
    list it came in says it (a list's items may not)."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec")
    kind = kind or str(obj.get("kind") or "")
    if not isinstance(spec, dict) or not isinstance(meta, dict) or not meta.get("name") or \
            kind not in ("AdminNetworkPolicy", "BaselineAdminNetworkPolicy"):
        return None
    raw_subject = spec.get("subject")
    subject: dict[str, Any] = raw_subject if isinstance(raw_subject, dict) else {}
    raw_pods = subject.get("pods")
    pods: dict[str, Any] | None = raw_pods if isinstance(raw_pods, dict) else None
    priority = spec.get("priority")
    return AdminPolicyView(
        kind=kind, name=str(meta["name"]), priority=priority if isinstance(priority, int) else None,
        subject_namespaces=_admin_selector(subject.get("namespaces")) if "namespaces" in subject else None,
        subject_pod_namespaces=(selector(pods.get("namespaceSelector")) or LabelSelector()) if pods else None,
        subject_pods=(selector(pods.get("podSelector")) or LabelSelector()) if pods else None,
        ingress=_admin_rules(spec.get("ingress"), "from"), egress=_admin_rules(spec.get("egress"), "to"))
