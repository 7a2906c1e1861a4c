"""Route/neighbor slice: links, addresses, rules, all route tables, neighbors,
`route get` per target, rp_filter/forwarding, and bounded ICMP/MTU probes.

Everything comes from netlink in the current netns, never from `ip`: pyroute2 for the small tables
(links, addresses, rules, neighbors), `bundle.netlink.rtnl` for the route dump, which can be tens of
thousands of routes and which pyroute2 decodes ~150x slower.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, NamedTuple

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bundle.collect import icmp, tracepath
from bundle.collect.base import Artifact, Collector, SliceContext, SliceResult
from bundle.netlink.rtnl import RawRoute, dump_routes
from bundle.models import (
    Address,
    InterfaceSysctls,
    Link,
    LinkStats,
    MediaType,
    MissingReason,
    Neighbor,
    NeighborState,
    Nexthop,
    Route,
    PathTrace,
    RouteLookup,
    RouteSlice,
    Rule,
    SliceStatus,
    Sysctls,
    Unavailable,
)

_IFF = [
    (0x1, "UP"), (0x2, "BROADCAST"), (0x4, "DEBUG"), (0x8, "LOOPBACK"), (0x10, "POINTOPOINT"),
    (0x20, "NOTRAILERS"), (0x80, "NOARP"), (0x100, "PROMISC"), (0x200, "ALLMULTI"), (0x400, "MASTER"),
    (0x800, "SLAVE"), (0x1000, "MULTICAST"), (0x2000, "PORTSEL"), (0x4000, "AUTOMEDIA"),
    (0x8000, "DYNAMIC"), (0x10000, "LOWER_UP"), (0x20000, "DORMANT"), (0x40000, "ECHO"),
]
_NUD = [
    (0x01, NeighborState.INCOMPLETE), (0x02, NeighborState.REACHABLE), (0x04, NeighborState.STALE),
    (0x08, NeighborState.DELAY), (0x10, NeighborState.PROBE), (0x20, NeighborState.FAILED),
    (0x40, NeighborState.NOARP), (0x80, NeighborState.PERMANENT),
]
_RTN = {0: "unspec", 1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
        7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat", 11: "xresolve"}
_PROTO = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra", 10: "mrt",
          11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp", 18: "keepalived",
          42: "babel", 99: "openr", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp"}
_SCOPE = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
_RULE_ACTION = {1: "lookup", 2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
_FAMILY = {2: 4, 10: 6}


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _link(msg: Any, names: dict[int, str]) -> Link:
    info = _attr(msg, "IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    st = _attr(msg, "IFLA_STATS64") or _attr(msg, "IFLA_STATS")
    stats = None
    if st is not None:
        stats = LinkStats(**{k: int(st[k]) for k in LinkStats.model_fields})
    master = _attr(msg, "IFLA_MASTER")
    parent = _attr(msg, "IFLA_LINK")
    return Link(
        index=msg["index"],
        name=_attr(msg, "IFLA_IFNAME"),
        kind=kind,
        operstate=_attr(msg, "IFLA_OPERSTATE") or "UNKNOWN",
        flags=[n for bit, n in _IFF if msg["flags"] & bit],
        mtu=_attr(msg, "IFLA_MTU"),
        address=_attr(msg, "IFLA_ADDRESS"),
        master=names.get(master) if master else None,
        parent_index=parent if parent and parent != msg["index"] else None,
        stats=stats,
    )


def _iface_sysctls(msg: Any, all_rp: int | Unavailable) -> InterfaceSysctls:
    name = _attr(msg, "IFLA_IFNAME")
    spec = _attr(msg, "IFLA_AF_SPEC")
    conf = spec.get_attr("AF_INET") if spec is not None else None
    missing = Unavailable(unavailable=MissingReason.NOT_APPLICABLE, detail="no IPv4 configuration on this link")
    v6 = _ipv6_conf(name)
    if not conf:
        return InterfaceSysctls(name=name, rp_filter=missing, forwarding=missing, rp_filter_effective=missing, **v6)
    rp = int(conf["rp_filter"])
    eff: int | Unavailable = max(rp, all_rp) if isinstance(all_rp, int) else all_rp
    return InterfaceSysctls(name=name, rp_filter=rp, forwarding=int(conf["forwarding"]), rp_filter_effective=eff,
                            **v6)


def _ipv6_conf(name: str) -> dict[str, int | Unavailable]:
    """The IPv6 settings of one link, from the netns's own /proc/sys (a link without IPv6 has none: absent)."""
    folder = Path("/proc/sys/net/ipv6/conf") / name
    if "/" in name or not folder.is_dir():
        missing = Unavailable(unavailable=MissingReason.NOT_APPLICABLE, detail="no IPv6 configuration on this link")
        return {"ipv6_forwarding": missing, "accept_ra": missing, "disable_ipv6": missing}
    return {"ipv6_forwarding": _read_sysctl(str(folder / "forwarding")),
            "accept_ra": _read_sysctl(str(folder / "accept_ra")),
            "disable_ipv6": _read_sysctl(str(folder / "disable_ipv6"))}


def _cidr(addr: str | None, plen: int, family: int) -> str:
    if addr is None:
        addr = "0.0.0.0" if family == 4 else "::"
    return f"{addr}/{plen}"


def _raw(msg: Any) -> RawRoute:
    """A route pyroute2 decoded (one `route get` answer), in the shape of the struct decoder's."""
    metrics = _attr(msg, "RTA_METRICS")
    return RawRoute(msg["family"], msg["dst_len"], _attr(msg, "RTA_TABLE") or msg["table"], msg["proto"],
                    msg["scope"], msg["type"], _attr(msg, "RTA_DST"), _attr(msg, "RTA_GATEWAY"), _attr(msg, "RTA_OIF"),
                    _attr(msg, "RTA_PREFSRC"), _attr(msg, "RTA_PRIORITY"),
                    metrics.get_attr("RTAX_MTU") if metrics is not None else None,
                    tuple((h.get_attr("RTA_GATEWAY"), h["oif"], h["hops"]) for h in _attr(msg, "RTA_MULTIPATH") or []))


def _route(r: RawRoute, names: dict[int, str]) -> Route:
    fam = _FAMILY.get(r.family, 0)
    return Route(
        family=fam,
        table=r.table,
        type=_RTN.get(r.type, str(r.type)),
        dst=_cidr(r.dst, r.dst_len, fam),
        gateway=r.gateway,
        dev=names.get(r.oif) if r.oif else None,
        prefsrc=r.prefsrc,
        protocol=_PROTO.get(r.protocol, str(r.protocol)),
        scope=_SCOPE.get(r.scope, str(r.scope)),
        metric=r.priority,
        mtu=r.mtu or None,
        nexthops=[Nexthop(gateway=gw, dev=names.get(ifindex), weight=hops + 1) for gw, ifindex, hops in r.nexthops],
    )


def _rule(msg: Any) -> Rule:
    fam = _FAMILY.get(msg["family"], 0)
    src, dst = _attr(msg, "FRA_SRC"), _attr(msg, "FRA_DST")
    return Rule(
        family=fam,
        priority=_attr(msg, "FRA_PRIORITY") or 0,
        action=_RULE_ACTION.get(msg["action"], str(msg["action"])),
        table=_attr(msg, "FRA_TABLE") or msg["table"] or None,
        src=_cidr(src, msg["src_len"], fam) if src else None,
        dst=_cidr(dst, msg["dst_len"], fam) if dst else None,
        iif=_attr(msg, "FRA_IIFNAME"),
        oif=_attr(msg, "FRA_OIFNAME"),
        fwmark=_attr(msg, "FRA_FWMARK"),
        fwmask=_attr(msg, "FRA_FWMASK"),
    )


def _neighbor(msg: Any, names: dict[int, str]) -> Neighbor:
    state = msg["state"]
    return Neighbor(
        family=_FAMILY.get(msg["family"], 0),
        dev=names.get(msg["ifindex"], str(msg["ifindex"])),
        dst=_attr(msg, "NDA_DST"),
        lladdr=_attr(msg, "NDA_LLADDR"),
        states=[s for bit, s in _NUD if state & bit] or [NeighborState.NONE],
        router=bool(msg["flags"] & 0x80),
    )


def _scope_name(scope: int) -> str:
    return _SCOPE.get(scope, str(scope))


def _read_sysctl(path: str) -> int | Unavailable:
    try:
        return int(Path(path).read_text().strip())
    except PermissionError as exc:
        return Unavailable(unavailable=MissingReason.NOT_PERMITTED, detail=f"{path}: {exc.strerror}")
    except (OSError, ValueError) as exc:
        return Unavailable(unavailable=MissingReason.ERROR, detail=f"{path}: {exc}")


def route_get(ipr: Any, target: str, names: dict[int, str], links: dict[str, Link],
              source: str | None = None, iif: str | None = None) -> RouteLookup:
    """`ip route get TARGET [from SRC iif IF]` through RTM_GETROUTE."""
    kwargs: dict[str, Any] = {"dst": target}
    if source:
        kwargs["src"] = source
    if iif:
        link = links.get(iif)
        if link is None:
            return RouteLookup(target=target, source=source, iif=iif, ok=False, error=f"no such interface {iif}")
        kwargs["iif"] = link.index
    try:
        msg = list(ipr.route("get", **kwargs))[0]
    except NetlinkError as exc:
        return RouteLookup(target=target, source=source, iif=iif, ok=False, error=os.strerror(exc.code))
    route = _route(_raw(msg), names)
    mtu = route.mtu or (links[route.dev].mtu if route.dev in links else None)
    return RouteLookup(
        target=target, source=source, iif=iif, ok=True, type=route.type, dst=_attr(msg, "RTA_DST"),
        gateway=route.gateway, dev=route.dev, prefsrc=route.prefsrc, table=route.table, mtu=mtu,
    )


# A node fed a full BGP table holds ~1M routes: keep the first of them, count them all (per table).
MAX_ROUTES = 50_000
MAX_WALKS = 4  # targets whose path is walked
WALK_BUDGET_S = 8.0  # per walk


class Tables(NamedTuple):
    links: list[Link]
    addresses: list[Address]
    rules: list[Rule]
    routes: list[Route]
    routes_per_table: dict[str, int]
    routes_inconsistent: bool
    neighbors: list[Neighbor]
    sysctls: Sysctls
    ipr: Any  # the open IPRoute, for the lookups (the caller closes it)
    names: dict[int, str]


def snapshot() -> Tables:
    """Read the passive tables; returns the open IPRoute for lookups (caller closes it)."""
    ipr = IPRoute()
    link_msgs = list(ipr.get_links())
    names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in link_msgs}
    links = [_link(m, names) for m in link_msgs]
    addrs = []
    for m in ipr.get_addr():
        addr = m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")
        addrs.append(Address(ifindex=m["index"], ifname=names.get(m["index"], str(m["index"])),
                             family=_FAMILY.get(m["family"], 0), address=addr, prefixlen=m["prefixlen"],
                             scope=_scope_name(m["scope"])))
    rules = [_rule(m) for fam in (2, 10) for m in ipr.get_rules(family=fam)]
    raw, per_table, inconsistent = dump_routes(MAX_ROUTES)
    routes = [_route(r, names) for r in raw]
    neighbors = [_neighbor(m, names) for m in ipr.get_neighbours() if m["family"] in (2, 10)]
    all_rp = _read_sysctl("/proc/sys/net/ipv4/conf/all/rp_filter")
    sysctls = Sysctls(
        ip_forward=_read_sysctl("/proc/sys/net/ipv4/ip_forward"),
        rp_filter_all=all_rp,
        rp_filter_default=_read_sysctl("/proc/sys/net/ipv4/conf/default/rp_filter"),
        ipv6_forwarding=_read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding"),
        interfaces=[_iface_sysctls(m, all_rp) for m in link_msgs],
    )
    return Tables(links, addrs, rules, routes, {str(t): n for t, n in sorted(per_table.items())}, inconsistent,
                  neighbors, sysctls, ipr, names)


class RouteCollector(Collector):
    name = "route"
    description = "links, addresses, rules, route tables, neighbors, route get, rp_filter; ICMP and MTU probes"

    def collect(self, ctx: SliceContext) -> SliceResult:
        started = time.monotonic()
        tables = snapshot()
        names, ipr = tables.names, tables.ipr
        by_name = {link.name: link for link in tables.links}
        source, iif = ctx.options.route_from, ctx.options.route_iif
        addresses = list(dict.fromkeys(t.address for t in ctx.targets))  # one lookup per address, in order
        with ipr:
            lookups = [route_get(ipr, a, names, by_name) for a in addresses]
            if source or iif:
                # `ip route get DST from SRC iif IF`: the path a packet arriving from elsewhere would take.
                lookups += [route_get(ipr, a, names, by_name, source=source, iif=iif) for a in addresses]
        reasons: list[str] = []
        if tables.routes_inconsistent:
            reasons.append("the route table changed during every dump try (NLM_F_DUMP_INTR): counts approximate")
        pings = []
        sweeps = []
        paths: list[PathTrace] = []
        if not ctx.passive:
            ctx.probe_gate()
            for lookup in (lk for lk in lookups if lk.ok and lk.source is None and lk.iif is None):
                if ctx.remaining() < 1:
                    reasons.append("probes cut by the deadline")
                    break
                result = icmp.ping(lookup.target, count=2, timeout=min(1.0, ctx.remaining() / 4))
                pings.append(result)
                if result.unavailable is not None:
                    reasons.append(f"ICMP probes: {result.unavailable.detail}")
                    break
                if lookup.ok and lookup.mtu and lookup.type == "unicast" and result.received:
                    rtt = max(result.rtts_ms)
                    sweeps.append(icmp.mtu_sweep(lookup.target, lookup.mtu, lookup.dev,
                                                 budget_s=min(12.0, ctx.remaining() - 0.5), rtt_ms=rtt))
                    if sweeps[-1].status.value == "cut":
                        reasons.append(f"MTU sweep to {lookup.target} cut by its budget")
            paths = self._walk(ctx, lookups, reasons)
        doc = RouteSlice(links=tables.links, addresses=tables.addresses, rules=tables.rules, routes=tables.routes,
                         route_limit=MAX_ROUTES, routes_per_table=tables.routes_per_table,
                         routes_inconsistent=tables.routes_inconsistent, neighbors=tables.neighbors,
                         lookups=lookups, sysctls=tables.sysctls, pings=pings, mtu_sweeps=sweeps, paths=paths,
                         active_probes=not ctx.passive)
        art = Artifact.document("route.json", doc, MediaType.ROUTE,
                                "netlink RTM_GETLINK/GETADDR/GETRULE/GETROUTE/GETNEIGH dumps, RTM_GETROUTE per target, "
                                "/proc/sys/net/ipv4, raw ICMP probes", started)
        art.provenance.truncated = sum(tables.routes_per_table.values()) > len(tables.routes)
        status = SliceStatus.PARTIAL if reasons else SliceStatus.COMPLETE
        return SliceResult(status=status, artifacts=[art], reason="; ".join(reasons) or None)

    @staticmethod
    def _walk(ctx: SliceContext, lookups: list[RouteLookup], reasons: list[str]) -> list[PathTrace]:
        """Path discovery for the first MAX_WALKS targets reached through a gateway: ICMP once per address, and
        TCP to each port."""
        # a target on the link needs no walk: its first hop is itself
        routable = {lk.target for lk in lookups if lk.ok and lk.source is None and lk.iif is None and lk.gateway}
        wanted = list(dict.fromkeys((t.address, t.port) for t in ctx.targets if t.address in routable))[:MAX_WALKS]
        walks = list(dict.fromkeys([(a, None) for a, _ in wanted] + [(a, p) for a, p in wanted if p is not None]))
        out: list[PathTrace] = []
        for address, port in walks:  # ICMP once per address, then TCP per port
            if ctx.remaining() < 2:
                reasons.append("path discovery cut by the deadline")
                return out
            out.append(tracepath.trace(address, port, budget_s=min(WALK_BUDGET_S, ctx.remaining() - 1)))
            if out[-1].unavailable is not None:
                return out
        return out
