"""A semantic comparison of two bundles — a failing node against a healthy one — vantage by vantage, paired by
role. Differences that can explain a fault (an MTU, a link down, a route gone, a neighbor FAILED or static,
rp_filter, a resolver option, another DNS answer, a listener missing, a service endpoint changed, conntrack
filling up, another proxy mode) come first, weighted; differences every two machines have (their own addresses,
pod IPs, counters' absolute values) are recognised and grouped apart as expected."""

from __future__ import annotations

from dataclasses import dataclass, field

from bundle.analyze._common import VantageDocs
from bundle.analyze.nat import DROP_COUNTERS, conntrack_rises
from bundle.models import (
    STATIC_NEIGHBOR_STATES,
    UNRESOLVED_NEIGHBOR_STATES,
    DnsSlice,
    NatSlice,
    RouteSlice,
    SocketsSlice,
    Unavailable,
)


@dataclass(frozen=True)
class Difference:
    area: str  # links, routes, neighbors, sysctls, resolv.conf, dns, listeners, sockets, conntrack, proxy, services
    key: str
    failing: str
    healthy: str
    weight: int  # higher: more likely to explain the fault
    expected: bool = False  # differs between any two machines; not a lead
    pair: str = ""


@dataclass
class DiffReport:
    pairs: list[tuple[str, str]]
    unpaired: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def leads(self) -> list[Difference]:
        return sorted((d for d in self.differences if not d.expected), key=lambda d: (-d.weight, d.area, d.key))

    @property
    def expected(self) -> list[Difference]:
        return [d for d in self.differences if d.expected]


def role(vantage_id: str) -> str:
    """The role a vantage plays: its id's last dash-separated word (netns-nb-mtu-pod -> pod; host -> host)."""
    return vantage_id.rsplit("-", 1)[-1]


def pair_vantages(failing: list[str], healthy: list[str],
                  overrides: dict[str, str] | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """(failing, healthy) pairs: the operator's overrides first, then by role; what found no partner."""
    pairs: list[tuple[str, str]] = []
    left = list(healthy)
    for f, h in (overrides or {}).items():
        if f in failing and h in left:
            pairs.append((f, h))
            left.remove(h)
    for f in failing:
        if any(p[0] == f for p in pairs):
            continue
        match = next((h for h in left if role(h) == role(f)), None)
        if match is None and len(failing) == 1 and len(left) == 1:
            match = left[0]
        if match is not None:
            pairs.append((f, match))
            left.remove(match)
    unpaired = [f for f in failing if all(p[0] != f for p in pairs)] + left
    return pairs, unpaired


def _val(v: object) -> str:
    if isinstance(v, Unavailable):
        return f"unreadable ({v.unavailable.value})"
    return "absent" if v is None else str(v)


def diff(failing: list[VantageDocs], healthy: list[VantageDocs], overrides: dict[str, str] | None = None) -> DiffReport:
    by_f = {s.vantage: s for s in failing}
    by_h = {s.vantage: s for s in healthy}
    pairs, unpaired = pair_vantages(list(by_f), list(by_h), overrides)
    report = DiffReport(pairs=pairs, unpaired=unpaired)
    for f_id, h_id in pairs:
        f, h = by_f[f_id], by_h[h_id]
        label = f"{f_id} ~ {h_id}"
        out = report.differences
        if f.route is not None and h.route is not None:
            out += _route(f.route, h.route, label)
        if f.dns is not None and h.dns is not None:
            out += _dns(f.dns, h.dns, label)
        if f.sockets is not None and h.sockets is not None:
            out += _sockets(f.sockets, h.sockets, label)
        if f.nat is not None and h.nat is not None:
            out += _nat(f.nat, h.nat, label)
        if f.ruleset is not None and h.ruleset is not None:
            out += _rules(f.ruleset, h.ruleset, label)
    return report


def rules(text: str) -> set[str]:
    """`table … chain …: rule` lines of an nft ruleset, without counters, handles or comments on tables."""
    import re

    out: set[str] = set()
    table = chain = ""
    for raw in text.splitlines():
        line = re.sub(r"\s*counter packets \d+ bytes \d+", " counter", raw.strip())
        line = re.sub(r"\s*# handle \d+$", "", line)
        if not line or line.startswith("#") or line == "}":
            continue
        if line.startswith("table "):
            table, chain = line.rstrip(" {"), ""
        elif line.startswith("chain "):
            chain = line.rstrip(" {")
        elif chain and not line.startswith(("type ", "policy ", "comment ")):
            out.add(f"{table} {chain}: {line}")
    return out


def _rules(f: str, h: str, pair: str) -> list[Difference]:
    fr, hr = rules(f), rules(h)
    out = []
    for rule in sorted(fr - hr):
        weight = 8 if rule.endswith(("drop", "reject")) or " drop" in rule or " reject" in rule else 5
        out.append(Difference("nft rules", rule, "present", "absent", weight, pair=pair))
    for rule in sorted(hr - fr):
        out.append(Difference("nft rules", rule, "absent", "present", 4, pair=pair))
    return out


# UNKNOWN is a link whose driver reports no operational state (lo, dummy, tun, a bridge as its ports come up): it
# passes traffic as UP does, and two healthy nodes differ so
_PASSING = {"UP", "UNKNOWN"}


def _route(f: RouteSlice, h: RouteSlice, pair: str) -> list[Difference]:
    out: list[Difference] = []
    fl, hl = {x.name: x for x in f.links}, {x.name: x for x in h.links}
    for name in sorted(set(fl) | set(hl)):
        a, b = fl.get(name), hl.get(name)
        if a is None or b is None:
            out.append(Difference("links", name, "present" if a else "absent", "present" if b else "absent", 5,
                                  pair=pair))
            continue
        if a.mtu != b.mtu:
            out.append(Difference("links", f"{name} mtu", str(a.mtu), str(b.mtu), 9, pair=pair))
        if a.operstate != b.operstate and {a.operstate, b.operstate} != _PASSING:
            out.append(Difference("links", f"{name} state", a.operstate, b.operstate, 8, pair=pair))
        if a.address != b.address:
            out.append(Difference("links", f"{name} MAC", _val(a.address), _val(b.address), 0, True, pair))
    fa = {(x.ifname, f"{x.address}/{x.prefixlen}") for x in f.addresses}
    ha = {(x.ifname, f"{x.address}/{x.prefixlen}") for x in h.addresses}
    for dev, addr in sorted(fa ^ ha):
        out.append(Difference("addresses", f"{dev} {addr}", "present" if (dev, addr) in fa else "absent",
                              "present" if (dev, addr) in ha else "absent", 0, True, pair))

    def routes(doc: RouteSlice) -> dict[tuple[int, str, str], str]:
        return {(r.table, r.type, r.dst): f"{r.type} via {r.gateway or '-'} dev {r.dev or '-'}"
                + (f" mtu {r.mtu}" if r.mtu else "") for r in doc.routes if r.type not in ("local", "broadcast")}

    fr, hr = routes(f), routes(h)
    for key in sorted(set(fr) | set(hr), key=str):
        if fr.get(key) != hr.get(key):
            table, _type, dst = key
            local = dst.startswith(("fe80", "ff00"))
            out.append(Difference("routes", f"table {table} {dst}", fr.get(key, "absent"), hr.get(key, "absent"),
                                  7 if dst in ("0.0.0.0/0", "::/0") else 4, local, pair))
    fn = {(n.dev, n.dst): n.states for n in f.neighbors}
    hn = {(n.dev, n.dst): n.states for n in h.neighbors}
    for (dev, dst), states in sorted(fn.items(), key=lambda item: item[0]):
        text, other = ",".join(s.value for s in states), hn.get((dev, dst))
        other_text = ",".join(s.value for s in other) if other is not None else "absent"
        unresolved = bool(UNRESOLVED_NEIGHBOR_STATES & set(states)) and other_text != text
        turned_static = other is not None and bool(STATIC_NEIGHBOR_STATES & set(states)) and \
            not STATIC_NEIGHBOR_STATES & set(other)  # never re-resolved: a MAC that changed stays wrong
        if unresolved or turned_static:
            out.append(Difference("neighbors", f"{dst} on {dev}", text, other_text, 6, pair=pair))
    fs, hs = f.sysctls, h.sysctls
    for name, fv, hv in (("net.ipv4.ip_forward", fs.ip_forward, hs.ip_forward),
                         ("rp_filter all", fs.rp_filter_all, hs.rp_filter_all)):
        if _val(fv) != _val(hv):
            out.append(Difference("sysctls", name, _val(fv), _val(hv), 6, pair=pair))
    fi, hi = {i.name: i for i in fs.interfaces}, {i.name: i for i in hs.interfaces}
    for name in sorted(set(fi) & set(hi)):
        if _val(fi[name].rp_filter_effective) != _val(hi[name].rp_filter_effective):
            out.append(Difference("sysctls", f"{name} rp_filter (effective)", _val(fi[name].rp_filter_effective),
                                  _val(hi[name].rp_filter_effective), 6, pair=pair))
    return out


def _dns(f: DnsSlice, h: DnsSlice, pair: str) -> list[Difference]:
    out: list[Difference] = []
    fc, hc = f.resolv_conf, h.resolv_conf
    if fc is not None and hc is not None:
        for key, a, b in (("nameservers", " ".join(fc.nameservers), " ".join(hc.nameservers)),
                          ("search", " ".join(fc.search), " ".join(hc.search)),
                          ("options", fc.options.model_dump_json(), hc.options.model_dump_json())):
            if a != b:
                out.append(Difference("resolv.conf", key, a or "-", b or "-", 7, pair=pair))
    fa = {r.name: r.resolution for r in f.names}
    ha = {r.name: r.resolution for r in h.names}
    for name in sorted(set(fa) & set(ha)):
        fr, hr = fa[name], ha[name]
        if fr.outcome != hr.outcome:
            out.append(Difference("dns", name, fr.outcome.value, hr.outcome.value, 8, pair=pair))
        elif sorted(fr.addresses) != sorted(hr.addresses):
            out.append(Difference("dns", f"{name} answers", ", ".join(fr.addresses), ", ".join(hr.addresses), 5,
                                  pair=pair))
    return out


def _sockets(f: SocketsSlice, h: SocketsSlice, pair: str) -> list[Difference]:
    out: list[Difference] = []
    fl = {(x.protocol, x.lport): x for x in f.listeners}
    hl = {(x.protocol, x.lport): x for x in h.listeners}
    for key in sorted(set(fl) | set(hl)):
        a, b = fl.get(key), hl.get(key)
        name = f"{key[0]} port {key[1]}"
        if a is None or b is None:
            out.append(Difference("listeners", name, f"{a.local} ({a.scope.value})" if a else "absent",
                                  f"{b.local} ({b.scope.value})" if b else "absent", 8, pair=pair))
        elif a.scope != b.scope:
            out.append(Difference("listeners", name, f"{a.local} ({a.scope.value})", f"{b.local} ({b.scope.value})",
                                  8, pair=pair))
    fs, hs = (f.samples[-1].tcp if f.samples else {}), (h.samples[-1].tcp if h.samples else {})
    for state in ("SYN-SENT", "CLOSE-WAIT", "SYN-RECV"):
        if fs.get(state, 0) != hs.get(state, 0):
            out.append(Difference("sockets", f"TCP {state}", str(fs.get(state, 0)), str(hs.get(state, 0)),
                                  5 if fs.get(state, 0) > hs.get(state, 0) else 1, pair=pair))
    return out


def _nat(f: NatSlice, h: NatSlice, pair: str) -> list[Difference]:
    out: list[Difference] = []
    if f.proxy.mode != h.proxy.mode:
        out.append(Difference("proxy", "mode", f.proxy.mode, h.proxy.mode, 7, pair=pair))

    def ratio(doc: NatSlice) -> float | None:
        count, cmax = (doc.samples[-1].count if doc.samples else None), doc.settings.max
        return count / cmax if isinstance(count, int) and isinstance(cmax, int) and cmax else None

    fr, hr = ratio(f), ratio(h)
    if fr is not None and hr is not None and abs(fr - hr) >= 0.1:
        out.append(Difference("conntrack", "usage (count/max)", f"{fr:.0%}", f"{hr:.0%}", 8 if fr > hr else 2,
                              pair=pair))

    def rising(doc: NatSlice) -> int:
        return sum(conntrack_rises(doc).values())

    if rising(f) != rising(h):
        out.append(Difference("conntrack", "drops during the window", f"+{rising(f)}", f"+{rising(h)}",
                              8 if rising(f) > rising(h) else 1, pair=pair))
    for k in DROP_COUNTERS:
        a = f.samples[-1].totals.get(k) if f.samples else None
        b = h.samples[-1].totals.get(k) if h.samples else None
        if a != b:
            out.append(Difference("conntrack", f"{k} (since boot)", _val(a), _val(b), 0, True, pair))

    def services(doc: NatSlice) -> dict[str, str]:
        return {f"{s.service} {s.kind} {s.address or '*'}:{s.port}/{s.protocol}":
                ("REJECT" if s.reject else ", ".join(f"{e.address}:{e.port} ({e.share:.0%})" for e in s.endpoints))
                for s in doc.services}

    fs, hs = services(f), services(h)
    for key in sorted(set(fs) | set(hs)):
        if fs.get(key) != hs.get(key):
            # a frontend both nodes program, translated differently, is the likeliest lead (stale DNAT)
            weight = 10 if key in fs and key in hs else 7
            out.append(Difference("services", key, fs.get(key, "absent"), hs.get(key, "absent"), weight, pair=pair))
    return out
