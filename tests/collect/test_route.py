"""The route slice against the real kernel: equal to `ip -j` in the same netns, and the MTU sweep."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from bundle.archive import read_bundle
from bundle.models import RouteSlice, SweepStatus
from tests.conftest import fresh, ip_json, netbundle

pytestmark = pytest.mark.privileged

_TABLES = {"main": 254, "local": 255, "default": 253}


def _table(value: object) -> int:
    return _TABLES.get(str(value), None) or int(str(value))


def _cidr(dst: str, family: int) -> str:
    if dst == "default":
        return "0.0.0.0/0" if family == 4 else "::/0"
    return str(ipaddress.ip_network(dst, strict=False)) if "/" in dst else f"{dst}/{32 if family == 4 else 128}"


def _collect(tmp_path, lab, *extra: str):
    out = fresh(tmp_path)
    argv = ["collect", "-o", str(out), *extra]
    for t in lab.targets:
        argv += ["--target", t]
    for role in ("pod", "node"):
        argv += ["--netns", lab.namespaces[role]]
    proc = netbundle(*argv)
    assert proc.returncode == 0, proc.stderr
    return out, read_bundle(out)


def _ours(bundle, ns) -> RouteSlice:
    doc = bundle.route(f"netns-{ns}")
    assert doc is not None
    return doc


def _ip_view(ns: str, targets: list[str], routed_from: str | None = None) -> dict[str, object]:
    """What `ip -j` says, normalised to the shape our documents use."""
    links = {(l["ifindex"], l["ifname"], l["mtu"], l["operstate"], l.get("address"), l.get("master"),
              (l.get("linkinfo") or {}).get("info_kind"),
              frozenset(f for f in l["flags"] if f not in ("NO-CARRIER", "M-DOWN")))
             for l in ip_json(ns, "-d", "link", "show")}
    neigh = {(n["dst"], n["dev"], n.get("lladdr"), frozenset(n.get("state", ["NONE"])))
             for n in ip_json(ns, "neigh", "show", "nud", "all")}
    routes = set()
    for fam in (4, 6):
        for r in ip_json(ns, f"-{fam}", "route", "show", "table", "all"):
            routes.add((fam, _table(r.get("table", "main")), r.get("type", "unicast"), _cidr(r["dst"], fam),
                        r.get("gateway"), r.get("dev"), r.get("prefsrc")))
    addrs = {(a["ifname"], i["local"], i["prefixlen"], i["scope"])
             for a in ip_json(ns, "addr", "show") for i in a["addr_info"]}
    rules = {(fam, r["priority"], _table(r["table"]), r["src"] if r["src"] == "all" else _cidr(r["src"], fam))
             for fam in (4, 6) for r in ip_json(ns, f"-{fam}", "rule", "show")}
    gets = {}
    for t in targets:
        g = ip_json(ns, "route", "get", t)[0]
        gets[(t, None, None)] = (g["dst"], g.get("gateway"), g["dev"], g.get("prefsrc"))
    if routed_from and ns.endswith("-node"):  # the path a packet from the pod takes through the node
        for t in targets:
            g = ip_json(ns, "route", "get", t, "from", routed_from, "iif", "cbr0")[0]
            gets[(t, routed_from, "cbr0")] = (g["dst"], g.get("gateway"), g["dev"], g.get("prefsrc"))
    return {"links": links, "neigh": neigh, "routes": routes, "addrs": addrs, "rules": rules, "gets": gets}


def _our_view(doc: RouteSlice) -> dict[str, object]:
    links = {(l.index, l.name, l.mtu, l.operstate, l.address, l.master, l.kind, frozenset(l.flags)) for l in doc.links}
    neigh = {(n.dst, n.dev, n.lladdr, frozenset(s.value for s in n.states)) for n in doc.neighbors}
    routes = {(r.family, r.table, r.type, r.dst, r.gateway, r.dev, r.prefsrc) for r in doc.routes}
    addrs = {(a.ifname, a.address, a.prefixlen, a.scope) for a in doc.addresses}
    rules = {(r.family, r.priority, r.table, r.src or "all") for r in doc.rules}
    gets = {(lk.target, lk.source, lk.iif): (lk.dst, lk.gateway, lk.dev, lk.prefsrc) for lk in doc.lookups}
    return {"links": links, "neigh": neigh, "routes": routes, "addrs": addrs, "rules": rules, "gets": gets}


def _equal_to_ip(tmp_path, info, targets: list[str], pod_address: str) -> tuple[RouteSlice, RouteSlice]:
    """Collect the route slice from the lab's pod and node twice (plain, and with the node's lookups as if
    from the pod on cbr0) and compare every table with `ip -j` in the same netns. Neighbor states and
    counters move on their own, so a mismatch is retried with a fresh collection before it counts."""
    extra = [x for t in targets for x in ("--target", t)]
    for _attempt in range(3):
        # only the route slice: the snapshot and `ip` run within a fraction of a second of each other
        _, bundle = _collect(tmp_path, info, "--passive", "--slice", "route", *extra)
        _, routed = _collect(tmp_path, info, "--passive", "--slice", "route", "--route-from", pod_address,
                             "--route-iif", "cbr0", *extra)
        diffs = {}
        for role in ("pod", "node"):
            ns = info.namespaces[role]
            ours, theirs = _our_view(_ours(bundle, ns)), _ip_view(ns, targets, routed_from=pod_address)
            if role == "node":
                ours["gets"].update(_our_view(_ours(routed, ns))["gets"])
            diffs.update({f"{role}.{k}": (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]})
        if not diffs:
            break
    assert not diffs, diffs
    return _ours(bundle, info.namespaces["pod"]), _ours(bundle, info.namespaces["node"])


def test_route_slice_equals_ip_json(tmp_path, mtu_lab):
    """Differential: every table in the bundle equals `ip -j` run in the same netns."""
    targets = [t.split(":")[0] for t in mtu_lab.targets] + ["10.244.1.1", "10.244.0.1"]
    pod_doc, node = _equal_to_ip(tmp_path, mtu_lab, targets, "10.244.1.2")
    # Not vacuous: the lab's shape is really in there.
    pod = _our_view(pod_doc)
    assert (4, 254, "unicast", "0.0.0.0/0", "10.244.1.1", "eth0", None) in pod["routes"]
    assert {l.name: l.mtu for l in node.links}["eth0"] == 1400
    assert {l.name: l.kind for l in node.links}["cbr0"] == "bridge"


def test_ipv6_route_slice_equals_ip_6_json(tmp_path, lab):
    """The same differential on the dual-stack v6-mtu lab, with IPv6 targets: `ip -6 -j route show table all`,
    `ip -6 -j rule`, IPv6 addresses and neighbours, and `ip -j route get` of IPv6 destinations (from the pod's
    IPv6 address on cbr0 on the node)."""
    from bundle.lab.scenarios import V6_POD, V6_REMOTE

    info = lab("v6-mtu")
    targets = [V6_REMOTE, "fd00:10:244:1::1", "fd00:10:244::1"]
    pod_doc, node_doc = _equal_to_ip(tmp_path, info, targets, V6_POD)
    pod, node = _our_view(pod_doc), _our_view(node_doc)
    # Not vacuous: global IPv6 routes, addresses, neighbours and lookups are in the comparison.
    assert (6, 254, "unicast", "::/0", "fd00:10:244:1::1", "eth0", None) in pod["routes"]
    assert ("eth0", V6_POD, 64, "global") in pod["addrs"]
    assert any(n[0] == V6_REMOTE for n in node["neigh"])
    # (the routed lookups were compared above; ip's own answer shows what they hold)
    assert _ip_view(info.namespaces["node"], [V6_REMOTE], routed_from=V6_POD)["gets"][(V6_REMOTE, V6_POD, "cbr0")][2] == "eth0"
    assert pod["gets"][(V6_REMOTE, None, None)][1] == "fd00:10:244:1::1"


def test_mtu_sweep_finds_the_blackhole(tmp_path, mtu_lab):
    out, bundle = _collect(tmp_path, mtu_lab)
    pod = _ours(bundle, mtu_lab.namespaces["pod"])
    [sweep] = pod.mtu_sweeps
    assert sweep.status is SweepStatus.FOUND
    assert (sweep.largest_pass, sweep.smallest_fail, sweep.path_mtu) == (1372, 1373, 1400)
    assert sweep.egress_mtu == 1500 and sweep.frag_needed is None
    assert sweep.duration_s < 15
    run = next(s for s in bundle.manifest.slices if s.vantage == f"netns-{mtu_lab.namespaces['pod']}")
    assert run.duration_s < 15
    node = _ours(bundle, mtu_lab.namespaces["node"])
    assert node.mtu_sweeps[0].status is SweepStatus.ALL_PASS and node.mtu_sweeps[0].path_mtu == 1400
    assert pod.pings[0].received == 2
    listing = subprocess.run(["tar", "--zstd", "-tf", str(out)], capture_output=True, text=True, check=True).stdout
    assert listing.splitlines()[0] == f"{bundle.manifest.bundle_id}/manifest.json"


def test_healthy_path_has_no_blackhole(tmp_path, healthy_lab):
    _, bundle = _collect(tmp_path, healthy_lab)
    pod = _ours(bundle, healthy_lab.namespaces["pod"])
    by_target = {s.target: s for s in pod.mtu_sweeps}
    assert by_target["10.244.0.2"].status is SweepStatus.ALL_PASS and by_target["10.244.0.2"].path_mtu == 1500
    assert by_target["10.244.1.3"].path_mtu == 1500
    assert all(p.received == 2 for p in pod.pings)


@pytest.mark.privileged
def test_ipv6_sysctls_equal_sysctl(tmp_path):
    """The route slice reads each link's IPv6 settings (forwarding, accept_ra, disable_ipv6) and the netns's
    IPv6 forwarding: equal to `sysctl -n` in the same netns, with values set apart from the defaults."""
    import os

    from bundle.lab.topology import Topology

    with Topology(f"nbt-v6sys-{os.getpid() % 100000}") as t:
        ns = t.add_netns("node")
        t.add_netns("peer")
        t.veth("node", "eth0", "peer", "eth0")
        t.veth("node", "eth1", "peer", "eth1")
        t.sysctl("node", "net.ipv6.conf.eth0.accept_ra", "2")
        t.sysctl("node", "net.ipv6.conf.eth0.forwarding", "1")
        t.sysctl("node", "net.ipv6.conf.eth1.disable_ipv6", "1")
        out = fresh(tmp_path)
        assert netbundle("collect", "--passive", "--slice", "route", "--netns", ns, "-o", str(out)).returncode == 0
        doc = read_bundle(out).route(f"netns-{ns}")
        assert doc is not None

        def sysctl(key: str) -> int:
            return int(subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", key], capture_output=True,
                                      text=True, check=True).stdout)

        assert doc.sysctls.ipv6_forwarding == sysctl("net.ipv6.conf.all.forwarding")
        by_name = {i.name: i for i in doc.sysctls.interfaces}
        for name in ("lo", "eth0", "eth1"):
            for field, key in (("ipv6_forwarding", "forwarding"), ("accept_ra", "accept_ra"),
                               ("disable_ipv6", "disable_ipv6")):
                assert getattr(by_name[name], field) == sysctl(f"net.ipv6.conf.{name}.{key}"), (name, field)
        assert (by_name["eth0"].accept_ra, by_name["eth0"].ipv6_forwarding, by_name["eth1"].disable_ipv6) == (2, 1, 1)
