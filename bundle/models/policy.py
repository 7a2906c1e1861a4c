"""NetworkPolicy (networking.k8s.io/v1) as the analysis needs it, and the decision for one flow.

The views keep the API's meaning, not its spelling: an absent and an empty `from`/`to`/`ports` list are the
same ("matches all"), so both read as an empty list here; a selector that is absent (None) and one that is
empty ({} — matches everything) are not, so they stay apart.
"""

from __future__ import annotations

from pydantic import Field

from bundle.models._base import Model


class SelectorRequirement(Model):
    key: str
    operator: str = Field(description="In, NotIn, Exists, DoesNotExist")
    values: list[str] = Field(default_factory=list)


class LabelSelector(Model):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[SelectorRequirement] = Field(default_factory=list)


class IpBlock(Model):
    cidr: str
    except_cidrs: list[str] = Field(default_factory=list, description="the API's `except`")


class PolicyPeer(Model):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IpBlock | None = None


class PolicyPort(Model):
    protocol: str = "TCP"
    port: int | str | None = Field(default=None, description="a number, a named container port, or None: every port")
    end_port: int | None = None


class PolicyRule(Model):
    peers: list[PolicyPeer] = Field(default_factory=list, description="from (ingress) or to (egress); empty: all")
    ports: list[PolicyPort] = Field(default_factory=list, description="empty: every port and protocol")


class NetworkPolicyView(Model):
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: list[str] = Field(description="Ingress and/or Egress, defaulted as the API server does")
    ingress: list[PolicyRule] = Field(default_factory=list)
    egress: list[PolicyRule] = Field(default_factory=list)
    member: str | None = Field(default=None, description="the bundle member holding the API's object")


class AdminPeer(Model):
    """A peer of an AdminNetworkPolicy rule: namespaces (every pod of them), pods (namespace and pod selector),
    networks (CIDRs). `unsupported` names a peer kind that cannot be judged here (nodes, domainNames)."""

    namespaces: LabelSelector | None = None
    pod_namespaces: LabelSelector | None = None
    pod_selector: LabelSelector | None = None
    networks: list[str] = Field(default_factory=list)
    unsupported: str | None = None


class AdminRule(Model):
    name: str = ""
    action: str = Field(description="Allow, Deny or Pass (Pass only in an AdminNetworkPolicy)")
    peers: list[AdminPeer] = Field(default_factory=list)
    ports: list[PolicyPort] | None = Field(default=None, description="None: every port")


class AdminPolicyView(Model):
    """An AdminNetworkPolicy (decided before NetworkPolicy, by ascending priority) or the
    BaselineAdminNetworkPolicy (decided for pods no NetworkPolicy isolates)."""

    kind: str = Field(description="AdminNetworkPolicy or BaselineAdminNetworkPolicy")
    name: str
    priority: int | None = None
    subject_namespaces: LabelSelector | None = None
    subject_pod_namespaces: LabelSelector | None = None
    subject_pods: LabelSelector | None = None
    ingress: list[AdminRule] = Field(default_factory=list)
    egress: list[AdminRule] = Field(default_factory=list)


class NamespaceView(Model):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)


class RuleRef(Model):
    """One rule of one policy: `rule` is its index in the policy's ingress or egress list."""

    namespace: str = Field(description="empty for the cluster-scoped admin tiers")
    name: str
    direction: str = Field(description="ingress or egress")
    tier: str = Field(default="NetworkPolicy", description="AdminNetworkPolicy, NetworkPolicy or "
                                                           "BaselineAdminNetworkPolicy")
    action: str = Field(default="", description="an admin rule's action: Allow, Deny or Pass")
    rule: int | None = Field(default=None, description="None when the policy selects the pod but has no rule that "
                                                         "matches (it only isolates)")


class DirectionVerdict(Model):
    isolated: bool = Field(description="some policy of this direction selects the pod")
    allowed: bool
    decided_by: str = Field(default="NetworkPolicy", description="the tier that decided: AdminNetworkPolicy, "
                                                                   "NetworkPolicy, BaselineAdminNetworkPolicy, or "
                                                                   "none (nothing selects the pod: allowed)")
    admin: list[RuleRef] = Field(default_factory=list, description="the admin-tier rules that matched, in order "
                                                                   "(a Pass hands on to NetworkPolicy)")
    selecting: list[RuleRef] = Field(default_factory=list, description="the policies that select the pod")
    allowing: list[RuleRef] = Field(default_factory=list, description="the rules that allow the flow")
    note: str = ""


class FlowDecision(Model):
    """The verdict of the policies on one flow: the client's egress and the server's ingress, apart."""

    purpose: str = Field(description="what the flow is for: service endpoint, cluster DNS, ...")
    source: str = Field(description="namespace/pod, or an address")
    destination: str
    address: str | None = Field(default=None, description="the destination's address the flow uses")
    port: int
    protocol: str
    egress: DirectionVerdict
    ingress: DirectionVerdict
    allowed: bool
