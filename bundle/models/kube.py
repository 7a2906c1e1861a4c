"""The Kubernetes slice: what the API says about the Services and pods in question, cluster DNS and kube-proxy,
with every call recorded (who answered what, or why not). The objects themselves are kept as members."""

from __future__ import annotations

from pydantic import Field

from bundle.models._base import Model
from bundle.models.nat import EndpointSliceView
from bundle.models.policy import AdminPolicyView, NamespaceView, NetworkPolicyView


class ApiCall(Model):
    verb: str = Field(description="get, list or log")
    resource: str = Field(description="e.g. services, endpointslices.discovery.k8s.io, pods/log")
    namespace: str | None = None
    name: str | None = None
    selector: str | None = None
    outcome: str = Field(description="ok, forbidden, not_found, not_served (an optional API this cluster does not "
                                     "serve), unauthorized, timeout, error, skipped")
    status: int | None = Field(default=None, description="HTTP status, when one came back")
    detail: str = ""
    items: int | None = None
    member: str | None = Field(default=None, description="the bundle member holding the API's answer")
    duration_s: float = 0.0


class ServicePortView(Model):
    name: str | None = None
    protocol: str = "TCP"
    port: int
    target_port: str | None = None
    node_port: int | None = None


class ServiceView(Model):
    namespace: str
    name: str
    type: str | None = None
    cluster_ips: list[str] = Field(default_factory=list)
    ports: list[ServicePortView] = Field(default_factory=list)
    selector: dict[str, str] = Field(default_factory=dict)
    session_affinity: str | None = None
    internal_traffic_policy: str | None = None
    external_traffic_policy: str | None = None


class ContainerPort(Model):
    name: str
    port: int
    protocol: str = "TCP"


class ContainerView(Model):
    name: str
    ports: list[int] = Field(default_factory=list)
    named_ports: list[ContainerPort] = Field(default_factory=list, description="the ports that have a name: what "
                                             "a NetworkPolicy's named port and a Service's targetPort resolve to")
    ready: bool | None = None
    restarts: int = 0


class PodView(Model):
    namespace: str
    name: str
    uid: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    node: str | None = None
    pod_ips: list[str] = Field(default_factory=list)
    host_network: bool = False
    dns_policy: str | None = None
    dns_config: dict[str, object] | None = None
    phase: str | None = None
    ready: bool | None = None
    containers: list[ContainerView] = Field(default_factory=list)


class NodeView(Model):
    name: str
    pod_cidrs: list[str] = Field(default_factory=list)
    addresses: dict[str, list[str]] = Field(default_factory=dict, description="type (InternalIP, Hostname...) -> values")


class ClusterDns(Model):
    service: ServiceView | None = None
    pods: list[PodView] = Field(default_factory=list)
    corefile: str | None = None
    log_enabled: bool | None = Field(default=None, description="the Corefile enables the `log` plugin")
    log_members: list[str] = Field(default_factory=list, description="CoreDNS log excerpts kept")


class KubeProxyConfig(Model):
    mode: str | None = Field(default=None, description="as configured; empty means the platform default")
    conntrack: dict[str, object] = Field(default_factory=dict)
    daemonset_ready: str | None = Field(default=None, description="numberReady/desiredNumberScheduled")


class PodVantage(Model):
    """How a pod named on the command line became (or did not become) a vantage."""

    pod: str
    outcome: str = Field(description="added, host_network, other_node, not_found, no_process, not_visible")
    detail: str = ""
    pid: int | None = None
    vantage: str | None = None


def target_port(port: ServicePortView, slices: list[EndpointSliceView]) -> int | None:
    """The port a Service port reaches on its endpoints: the EndpointSlice's port of the same name (it resolves a
    named targetPort), else a numeric targetPort. `slices` are that Service's own."""
    named = next((sp.port for v in slices for sp in v.ports if sp.port and (sp.name or None) == port.name), None)
    if named is not None:
        return named
    return int(port.target_port) if port.target_port and port.target_port.isdigit() else None


class KubeSlice(Model):
    server: str
    context: str | None = None
    calls: list[ApiCall]
    services: list[ServiceView] = Field(default_factory=list)
    endpoint_slices: list[EndpointSliceView] = Field(default_factory=list)
    pods: list[PodView] = Field(default_factory=list)
    nodes: list[NodeView] = Field(default_factory=list)
    cluster_dns: ClusterDns | None = None
    kube_proxy: KubeProxyConfig | None = None
    network_policies: dict[str, int] = Field(default_factory=dict, description="namespace -> NetworkPolicies")
    policies: list[NetworkPolicyView] = Field(default_factory=list, description="the NetworkPolicies of the "
                                              "namespaces involved (the client's, the Services', kube-system)")
    namespaces: list[NamespaceView] = Field(default_factory=list, description="the namespaces involved, with the "
                                            "labels namespaceSelectors match")
    other_policies: dict[str, int] = Field(default_factory=dict, description="policy APIs beside NetworkPolicy this "
                                           "cluster serves (AdminNetworkPolicy, Calico, Cilium): resource -> objects, "
                                           "kept raw")
    admin_policies: list[AdminPolicyView] = Field(default_factory=list, description="AdminNetworkPolicies and the "
                                                  "BaselineAdminNetworkPolicy, read to be evaluated")
    pod_vantages: list[PodVantage] = Field(default_factory=list)
    truncated: bool = Field(default=False, description="the overall budget cut the calls short")
