"""The route/neighbor slice: what one netns knows about reaching a destination."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from bundle.models._base import Model, Unavailable


class LinkStats(Model):
    rx_packets: int
    tx_packets: int
    rx_bytes: int
    tx_bytes: int
    rx_errors: int
    tx_errors: int
    rx_dropped: int
    tx_dropped: int


class Link(Model):
    index: int
    name: str
    kind: str | None = Field(default=None, description="veth, bridge, vxlan, ... (None for physical/loopback)")
    operstate: str
    flags: list[str]
    mtu: int
    address: str | None = None
    master: str | None = None
    parent_index: int | None = Field(default=None, description="IFLA_LINK: the peer or lower device index")
    stats: LinkStats | None = None


class Address(Model):
    ifindex: int
    ifname: str
    family: int = Field(description="4 or 6")
    address: str
    prefixlen: int
    scope: str


class Rule(Model):
    family: int
    priority: int
    action: str
    table: int | None = None
    src: str | None = None
    dst: str | None = None
    iif: str | None = None
    oif: str | None = None
    fwmark: int | None = None
    fwmask: int | None = None


class Nexthop(Model):
    gateway: str | None = None
    dev: str | None = None
    weight: int = 1


class Route(Model):
    family: int
    table: int
    type: str = Field(description="unicast, local, broadcast, unreachable, blackhole, ...")
    dst: str = Field(description="always CIDR: 0.0.0.0/0 for default")
    gateway: str | None = None
    dev: str | None = None
    prefsrc: str | None = None
    protocol: str
    scope: str
    metric: int | None = None
    mtu: int | None = Field(default=None, description="RTAX_MTU route metric, when set")
    nexthops: list[Nexthop] = []


class NeighborState(StrEnum):
    INCOMPLETE = "INCOMPLETE"
    REACHABLE = "REACHABLE"
    STALE = "STALE"
    DELAY = "DELAY"
    PROBE = "PROBE"
    FAILED = "FAILED"
    NOARP = "NOARP"
    PERMANENT = "PERMANENT"
    NONE = "NONE"


# Entries that deliver nothing (resolution failed or still pending), and entries the kernel never re-resolves
# (a MAC that changed stays wrong): what the analysis, the diff and the appendix single out.
UNRESOLVED_NEIGHBOR_STATES = frozenset({NeighborState.FAILED, NeighborState.INCOMPLETE})
STATIC_NEIGHBOR_STATES = frozenset({NeighborState.PERMANENT, NeighborState.NOARP})


class Neighbor(Model):
    family: int
    dev: str
    dst: str
    lladdr: str | None = None
    states: list[NeighborState]
    router: bool = False


class RouteLookup(Model):
    """`ip route get` for one target, as the kernel answered it."""

    target: str
    source: str | None = None
    iif: str | None = None
    ok: bool
    error: str | None = None
    type: str | None = None
    dst: str | None = None
    gateway: str | None = None
    dev: str | None = None
    prefsrc: str | None = None
    table: int | None = None
    mtu: int | None = Field(default=None, description="the route's RTAX_MTU, or the egress link MTU")


class InterfaceSysctls(Model):
    name: str
    rp_filter: int | Unavailable
    forwarding: int | Unavailable
    rp_filter_effective: int | Unavailable = Field(
        description="max(conf/all, conf/<if>): the mode the kernel applies"
    )
    ipv6_forwarding: int | Unavailable | None = Field(default=None, description="net.ipv6.conf.<if>.forwarding "
                                                      "(null before 1.2)")
    accept_ra: int | Unavailable | None = Field(default=None, description="net.ipv6.conf.<if>.accept_ra: 0 never, "
                                                "1 unless forwarding, 2 even when forwarding")
    disable_ipv6: int | Unavailable | None = Field(default=None, description="net.ipv6.conf.<if>.disable_ipv6")


class Sysctls(Model):
    ip_forward: int | Unavailable
    rp_filter_all: int | Unavailable
    rp_filter_default: int | Unavailable
    ipv6_forwarding: int | Unavailable | None = Field(default=None, description="net.ipv6.conf.all.forwarding "
                                                      "(null before 1.2)")
    interfaces: list[InterfaceSysctls]


class IcmpError(Model):
    source: str
    type: int
    code: int
    description: str
    mtu: int | None = Field(default=None, description="next-hop MTU in a 'fragmentation needed'/'packet too big'")


class PingResult(Model):
    target: str
    sent: int
    received: int
    rtts_ms: list[float]
    errors: list[IcmpError]
    unavailable: Unavailable | None = None


class MtuProbe(Model):
    payload: int = Field(description="ICMP echo payload bytes; the IP packet is payload + 28 (IPv4) or + 48 (IPv6)")
    passed: bool
    rtt_ms: float | None = None
    error: IcmpError | None = None


class SweepStatus(StrEnum):
    FOUND = "found"
    ALL_PASS = "all_pass"
    NO_REPLY = "no_reply"
    CUT = "cut"
    UNAVAILABLE = "unavailable"


class MtuSweep(Model):
    """A DF-set echo sweep: the largest size that passes bounds the path MTU."""

    target: str
    status: SweepStatus
    egress_dev: str | None = None
    egress_mtu: int | None = None
    largest_pass: int | None = Field(default=None, description="largest ICMP payload that got a reply")
    smallest_fail: int | None = Field(default=None, description="smallest ICMP payload that got none")
    path_mtu: int | None = None
    frag_needed: IcmpError | None = Field(default=None, description="a 'fragmentation needed' that did arrive")
    probes: list[MtuProbe] = []
    probe_timeout_s: float
    duration_s: float
    unavailable: Unavailable | None = None


class PathHop(Model):
    ttl: int
    responder: str | None = Field(default=None, description="who answered: a router's 'time exceeded' source, or "
                                                            "the target itself")
    kind: str = Field(description="time exceeded, reply (the target answered), unreachable, none (silence), error")
    rtt_ms: float | None = None
    detail: str | None = Field(default=None, description="SYN-ACK or RST for a TCP reply; the ICMP code or errno")


class PathTrace(Model):
    """TTL-stepped probes toward a target (`traceroute -n -I`, or `-T -p PORT` for protocol tcp)."""

    target: str
    protocol: str = Field(description="icmp or tcp")
    port: int | None = None
    hops: list[PathHop]
    reached: bool
    stopped: str = Field(description="reached, unreachable, N silent hops, max hops, time budget, error")
    duration_s: float
    unavailable: Unavailable | None = None
    icmp_id: int | None = Field(default=None, description="the echo identifier of an ICMP walk")
    tcp_sports: list[int] = Field(default_factory=list, description="the source ports of a TCP walk's SYNs")

    def last_responder(self) -> PathHop | None:
        """The farthest hop that answered before the target: where an unreached walk's packets die after."""
        return next((h for h in reversed(self.hops) if h.responder is not None), None)


class RouteSlice(Model):
    links: list[Link]
    addresses: list[Address]
    rules: list[Rule]
    routes: list[Route] = Field(description="in the kernel's dump order, at most route_limit")
    route_limit: int | None = Field(default=None, description="the most routes kept (null in 1.0: all were)")
    routes_per_table: dict[str, int] = Field(
        default_factory=dict, description="table id -> routes it holds, exact over all (also past route_limit)")
    routes_inconsistent: bool = Field(default=False, description="every route dump try came back marked "
                                                                 "interrupted (NLM_F_DUMP_INTR): counts approximate")
    neighbors: list[Neighbor]
    lookups: list[RouteLookup]
    sysctls: Sysctls
    pings: list[PingResult] = []
    mtu_sweeps: list[MtuSweep] = []
    paths: list[PathTrace] = Field(default_factory=list, description="path discovery per target (null before 1.2)")
    active_probes: bool
