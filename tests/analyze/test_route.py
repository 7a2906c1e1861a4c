"""Route-layer findings, computed from bundles the lab really produced."""

from __future__ import annotations

import json
import subprocess

import pytest

from bundle.analyze import route_findings
from bundle.archive import read_bundle
from tests.conftest import fresh, netbundle

pytestmark = pytest.mark.privileged


def _findings(path):
    b = read_bundle(path)
    return {v.id: route_findings(v, b.route(v.id)) for v in b.manifest.vantages if b.route(v.id)}


def test_mtu_blackhole_is_pinned_to_the_pod(tmp_path, mtu_lab):
    out = fresh(tmp_path)
    assert netbundle("collect", "--target", mtu_lab.targets[0], "--netns", mtu_lab.namespaces["pod"], "--netns",
                     mtu_lab.namespaces["node"], "-o", str(out)).returncode == 0
    found = _findings(out)
    pod = found[f"netns-{mtu_lab.namespaces['pod']}"]
    assert [f.id for f in pod] == ["mtu.blackhole"]
    assert pod[0].evidence[0].pointer == "mtu_sweeps[0]" and "1400" in pod[0].summary
    assert pod[0].next_command.startswith(f"ip netns exec {mtu_lab.namespaces['pod']} ping -c 2 -M do -s 1373")
    assert found[f"netns-{mtu_lab.namespaces['node']}"] == []


def test_healthy_lab_has_no_findings(tmp_path, healthy_lab):
    out = fresh(tmp_path)
    argv = ["collect", "-o", str(out), "--netns", healthy_lab.namespaces["pod"], "--netns", healthy_lab.namespaces["node"]]
    for t in healthy_lab.targets:
        argv += ["--target", t]
    assert netbundle(*argv).returncode == 0
    assert all(f == [] for f in _findings(out).values())


def test_unanswered_neighbor_and_silent_host(tmp_path, mtu_lab):
    node = mtu_lab.namespaces["node"]
    # A peer that does not exist: ARP goes unanswered, the entry turns INCOMPLETE then FAILED.
    # A second one no target goes through: everyday residue (a deleted pod's address), info only.
    for gone in ("10.244.0.99", "10.244.0.98"):
        subprocess.run(["ip", "netns", "exec", node, "ping", "-c", "1", "-W", "1", gone], capture_output=True)
    out = fresh(tmp_path)
    assert netbundle("collect", "--target", "10.244.0.99", "--netns", node, "-o", str(out)).returncode == 0
    found = _findings(out)[f"netns-{node}"]
    ids = {f.id: f for f in found}
    failed = {f.target.address: f.severity.value for f in found if f.id == "neighbor.failed"}
    assert failed == {"10.244.0.99": "warning", "10.244.0.98": "info"}, failed
    assert "icmp.no_reply" in ids


def test_neighbor_with_another_mac_than_its_owner(tmp_path, lab):
    """Across vantages: the node's static entry for the remote (the scenario's fault) is critical; a cached
    entry with a wrong MAC is a warning (the kernel re-checks it); an entry whose MAC is a collected interface's
    (proxy ARP: the node answering for the remote) is not reported."""
    from bundle.analyze import neighbor_findings
    from bundle.lab.scenarios import STALE_MAC

    info = lab("stale-neighbor")
    pod, node, remote = (info.namespaces[r] for r in ("pod", "node", "remote"))
    cbr0 = json.loads(subprocess.run(["ip", "-n", node, "-j", "link", "show", "cbr0"], capture_output=True,
                                     text=True, check=True).stdout)[0]["address"]
    added = [(pod, ["10.244.0.2", "lladdr", cbr0, "dev", "eth0", "nud", "permanent"]),
             # the remote never sends to the node here (its SYN-ACKs never get a SYN), so nothing re-resolves it
             (remote, ["10.244.0.1", "lladdr", "02:00:00:de:ad:02", "dev", "eth0", "nud", "stale"])]
    try:
        for ns, args in added:
            subprocess.run(["ip", "-n", ns, "neigh", "replace", *args], check=True)
        out = fresh(tmp_path)
        argv = ["collect", "--target", info.targets[0], "--slice", "route", "-o", str(out)]
        for role in ("pod", "node", "remote"):
            argv += ["--netns", info.namespaces[role]]
        assert netbundle(*argv).returncode == 0
    finally:
        for ns, args in added:
            subprocess.run(["ip", "-n", ns, "neigh", "del", args[0], "dev", args[4]], check=False)
    b = read_bundle(out)
    found = neighbor_findings([(v, b.route(v.id)) for v in b.manifest.vantages])
    got = sorted((f.vantage, f.target.address if f.target else None, f.severity.value) for f in found)
    assert got == [(f"netns-{node}", "10.244.0.2", "critical"), (f"netns-{remote}", "10.244.0.1", "warning")], got
    critical = next(f for f in found if f.severity.value == "critical")
    assert STALE_MAC in critical.summary and "never re-resolves" in critical.summary
    assert f"netns-{remote}" in critical.summary
    assert critical.next_command == f"ip netns exec {node} ip neigh show 10.244.0.2 dev eth0"


def test_an_unresolved_endpoint_behind_a_frontend_is_on_the_path():
    """The target is a ClusterIP: `route get` names the frontend's gateway, yet the node's frames go to the pod the
    frontend is translated to. That pod's FAILED neighbor entry is on the target's path (warning); the same entry
    with no target behind it is residue (info)."""
    from bundle.analyze.route import route_findings
    from bundle.models import Neighbor, NeighborState, RouteLookup, RouteSlice, Sysctls, Vantage, VantageKind

    doc = RouteSlice(links=[], addresses=[], rules=[], routes=[], active_probes=False,
                     neighbors=[Neighbor(family=4, dev="cbr0", dst="10.244.1.3", states=[NeighborState.FAILED])],
                     lookups=[RouteLookup(target="10.96.0.20", ok=True, gateway="10.244.0.1", dev="eth0")],
                     sysctls=Sysctls(ip_forward=1, rp_filter_all=0, rp_filter_default=0, interfaces=[]))
    v = Vantage(id="netns-node", kind=VantageKind.NETNS_NAME, ref="node", entered=True)

    def severity(endpoints: frozenset[str]) -> str:
        [f] = [f for f in route_findings(v, doc, endpoints) if f.id == "neighbor.failed"]
        return f.severity.value

    assert severity(frozenset({"10.244.1.3"})) == "warning"
    assert severity(frozenset()) == "info"
