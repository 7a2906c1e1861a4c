"""The NAT/conntrack slice: conntrack usage and counters over time, the entries that touch the targets, which
proxy datapath programs the node, and the service map it programs, beside the EndpointSlices it should match."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from bundle.models._base import Model, Unavailable


class ConntrackSettings(Model):
    """/proc/sys/net/netfilter as this netns sees it (nf_conntrack_max is machine-wide, read here as shown)."""

    max: int | Unavailable
    buckets: int | Unavailable
    timeouts: dict[str, int] = Field(default_factory=dict, description="nf_conntrack_<proto>_timeout* in seconds")


class ConntrackSample(Model):
    """One reading of the count and of the per-CPU statistics (/proc/net/stat/nf_conntrack)."""

    monotonic_ns: int
    count: int | Unavailable
    totals: dict[str, int] = Field(default_factory=dict, description="summed over CPUs: insert_failed, drop, ...")
    per_cpu: list[dict[str, int]] = Field(default_factory=list)


class ConntrackTuple(Model):
    proto: str
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None


class ConntrackEntry(Model):
    original: ConntrackTuple
    reply: ConntrackTuple
    tcp_state: str | None = None
    timeout_s: int | None = None
    status: list[str] = Field(default_factory=list)
    mark: int = 0
    dnat: bool = Field(description="the reply comes from somewhere else than the original destination")


class ConntrackTable(Model):
    """Exact totals over the whole table; entries only for the addresses that matter (targets, ClusterIPs,
    their endpoints), bounded."""

    total: int
    by_protocol: dict[str, int]
    by_tcp_state: dict[str, int]
    watched: list[str] = Field(description="addresses an entry had to touch to be kept")
    matched: int
    entries: list[ConntrackEntry]
    truncated: bool
    inconsistent: bool = Field(default=False, description="the kernel marked every dump try interrupted "
                                                          "(NLM_F_DUMP_INTR): the totals are approximate")


class Datapath(StrEnum):
    IPTABLES_LEGACY = "iptables-legacy"
    IPTABLES_NFT = "iptables-nft"
    NFTABLES = "nftables"
    IPVS = "ipvs"


class DatapathCheck(Model):
    """What one read-only look at one datapath found."""

    datapath: Datapath
    command: str
    programmed: bool | None = Field(description="kube-proxy's chains or table found; None when it could not look")
    detail: str = ""
    unavailable: Unavailable | None = None


class ProxyMode(Model):
    mode: str = Field(description="iptables, nftables, ipvs, none (nothing programmed) or ambiguous")
    backend: Datapath | None = None
    checks: list[DatapathCheck]
    reported: str | Unavailable = Field(description="kube-proxy's own answer at 127.0.0.1:10249/proxyMode")


class DataplaneEndpoint(Model):
    address: str
    port: int
    probability: float | None = Field(default=None, description="as written in the rule (iptables statistic)")
    share: float = Field(description="the fraction of new connections this endpoint receives")
    weight: int | None = Field(default=None, description="IPVS weight")
    chain: str | None = None


class ServiceEntry(Model):
    """One frontend the dataplane translates: ClusterIP, external or load-balancer IP, node port, hostPort."""

    service: str = Field(description="namespace/name:port-name, from kube-proxy's rule comment")
    kind: str = Field(description="cluster IP, external IP, loadbalancer IP, nodeport; hostport (the CNI portmap "
                                  "plugin's DNAT to a pod, not kube-proxy's); virtual server (IPVS)")
    protocol: str
    address: str | None = Field(description="None for a node port on any local address")
    port: int
    endpoints: list[DataplaneEndpoint] = Field(default_factory=list)
    reject: bool = Field(default=False, description="a REJECT/DROP rule says it has no endpoints")
    session_affinity_s: int | None = Field(default=None, description="ClientIP affinity timeout, when set")
    source_ranges: list[str] = Field(default_factory=list, description="loadBalancerSourceRanges as programmed "
                                     "(iptables KUBE-FW chain): only these sources are translated, the rest dropped")
    source: str = Field(description="where it was read: iptables nat/filter, nft table, IPVS")


class SliceEndpoint(Model):
    addresses: list[str]
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None
    node: str | None = None
    zone: str | None = None
    for_zones: list[str] | None = Field(default=None, description="hints.forZones: topology-aware routing sends "
                                        "this endpoint the traffic of nodes in these zones (1.5; null: no hint)")
    for_nodes: list[str] | None = Field(default=None, description="hints.forNodes: ... of these nodes "
                                        "(PreferSameNode; 1.5; null: no hint)")


class SlicePort(Model):
    name: str | None = None
    port: int | None = None
    protocol: str = "TCP"


class EndpointSliceView(Model):
    """What an EndpointSlice says a Service's endpoints are (from the Kubernetes slice or --endpointslices)."""

    namespace: str
    name: str
    service: str
    address_type: str | None = Field(default=None, description="IPv4, IPv6 or FQDN (null before 1.2: IPv4)")
    ports: list[SlicePort]
    endpoints: list[SliceEndpoint]


class NatSlice(Model):
    settings: ConntrackSettings
    samples: list[ConntrackSample]
    table: ConntrackTable | Unavailable
    proxy: ProxyMode
    services: list[ServiceEntry]
    endpoint_slices: list[EndpointSliceView] | None = Field(
        default=None, description="None when no EndpointSlices were given: agreement cannot be judged")
    endpoint_slices_source: str | None = None
    raw: dict[str, str] = Field(default_factory=dict, description="datapath -> member holding its raw dump")
