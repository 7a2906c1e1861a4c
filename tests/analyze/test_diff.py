"""`netbundle diff`: failing vs healthy, paired by role, the difference that explains the fault first."""

from __future__ import annotations

import json

import pytest

from bundle.analyze.diff import pair_vantages
from tests.conftest import netbundle


def test_vantages_pair_by_role_or_by_hand():
    pairs, unpaired = pair_vantages(["netns-nb-mtu-pod", "netns-nb-mtu-node", "host"],
                                    ["netns-nb-healthy-node", "netns-nb-healthy-pod"])
    assert pairs == [("netns-nb-mtu-pod", "netns-nb-healthy-pod"), ("netns-nb-mtu-node", "netns-nb-healthy-node")]
    assert unpaired == ["host"]
    pairs, _ = pair_vantages(["a-pod"], ["b-node", "b-pod"], {"a-pod": "b-node"})
    assert pairs == [("a-pod", "b-node")]


@pytest.mark.privileged
def test_mtu_lab_against_the_healthy_lab(lab, healthy_lab, tmp_path):
    mtu = lab("mtu")
    bundles = {}
    for name, info in (("mtu", mtu), ("healthy", healthy_lab)):
        out = tmp_path / f"{name}.tar.zst"
        proc = netbundle(*info.collect_argv()[1:], "--slice", "route", "--slice", "sockets", "-o", str(out))
        assert proc.returncode in (0, 5), proc.stderr
        bundles[name] = out
    report = json.loads(netbundle("diff", str(bundles["mtu"]), str(bundles["healthy"]), "--format", "json",
                                  check=True).stdout)
    assert [(p[0].rsplit("-", 1)[-1], p[1].rsplit("-", 1)[-1]) for p in report["pairs"]] == [("pod", "pod"),
                                                                                           ("node", "node")]
    first = report["leads"][0]
    assert (first["area"], first["key"], first["failing"], first["healthy"]) == ("links", "eth0 mtu", "1400", "1500")
    assert first["pair"].startswith(f"netns-{mtu.namespaces['node']}")
    assert {d["area"] for d in report["expected"]} <= {"links", "addresses", "routes"}  # MACs, link-local
    text = netbundle("diff", str(bundles["mtu"]), str(bundles["healthy"]), check=True).stdout
    from tests.render.test_html import fetches

    page = netbundle("diff", str(bundles["mtu"]), str(bundles["healthy"]), "--format", "html", check=True).stdout
    assert '<td class="mono">eth0 mtu</td><td class="mono">1400</td><td class="mono">1500</td>' in page
    assert fetches(page).found == [] and "default-src 'none'" in page
    lines = text.splitlines()
    assert "[links] eth0 mtu: 1400  vs  1500" in lines[lines.index("differences that can explain the fault, most telling first:") + 1]


@pytest.mark.privileged
def test_dns_drop_against_dns_ndots_leads_with_the_drop_rule(lab, tmp_path):
    """The node's nft ruleset (kept by the NAT slice) differs by the rule that drops DNS: it leads the diff."""
    bundles = {}
    for name in ("dns-drop", "dns-ndots"):
        info = lab(name)
        out = tmp_path / f"{name}.tar.zst"
        proc = netbundle(*info.collect_argv()[1:], "--slice", "nat", "-o", str(out))
        assert proc.returncode in (0, 5), proc.stderr
        bundles[name] = out
    report = json.loads(netbundle("diff", str(bundles["dns-drop"]), str(bundles["dns-ndots"]), "--format", "json",
                                  check=True).stdout)
    first = report["leads"][0]
    assert first["area"] == "nft rules" and first["failing"] == "present" and first["key"].endswith("drop")
    assert "udp dport 53 drop" in first["key"] or "tcp dport 53 drop" in first["key"]
    assert first["pair"].split(" ~ ")[0].endswith("-node")


def _bundle(info, tmp_path, name, roles=None, *extra):
    out = tmp_path / f"{name}.tar.zst"
    argv = ["collect", "-o", str(out), *extra]
    for t in info.targets:
        argv += ["--target", t]
    for role in roles or info.vantages:
        argv += ["--netns", info.namespaces[role]]
    if "endpointslices" in info.files:
        argv += ["--endpointslices", info.files["endpointslices"]]
    proc = netbundle(*argv)
    assert proc.returncode in (0, 5), proc.stderr
    return out


def _lead(failing, healthy):
    report = json.loads(netbundle("diff", str(failing), str(healthy), "--format", "json", check=True).stdout)
    return report["leads"][0]


@pytest.mark.privileged
@pytest.mark.parametrize("scenario,control,area,needle", [
    ("no-listener", "healthy", "listeners", "tcp port 8080"),
    ("syn-drop", "healthy", "nft rules", "tcp flags syn"),
    ("stale-dnat", "service-nft", "services", "default/payments:https"),
    ("stale-neighbor", "healthy", "neighbors", "10.244.0.2 on eth0"),
])
def test_each_fault_leads_its_diff(lab, tmp_path, scenario, control, area, needle):
    roles = ["pod", "node", "server"] if "server" in lab(scenario).namespaces else ["pod", "node", "remote"]
    failing = _bundle(lab(scenario), tmp_path, scenario, roles)
    healthy = _bundle(lab(control), tmp_path, control, roles)
    first = _lead(failing, healthy)
    assert first["area"] == area and needle in first["key"], first


@pytest.mark.privileged
def test_conntrack_full_leads_with_conntrack(healthy_lab, tmp_path):
    import os

    from bundle.lab import scenarios

    healthy = _bundle(healthy_lab, tmp_path, "healthy", ["pod", "node"], "--slice", "nat")
    with scenarios.running("conntrack-full", f"nbt-diffcf-{os.getpid() % 100000}") as info:
        failing = _bundle(info, tmp_path, "conntrack-full", ["pod", "node"], "--slice", "nat")
    first = _lead(failing, healthy)
    assert first["area"] == "conntrack", first


@pytest.mark.parametrize("failing, healthy, differs", [
    ("UNKNOWN", "UP", False),  # a bridge just after its ports came up, a dummy, a tun: passing traffic either way
    ("DOWN", "UP", True),
    ("LOWERLAYERDOWN", "UNKNOWN", True),
])
def test_link_state_unknown_is_not_a_difference_from_up(failing, healthy, differs):
    """Found on the stale-neighbor lab: the node's bridge read UNKNOWN where the healthy one read UP, and that
    outranked the stale neighbor entry. UNKNOWN only says the driver reports no operational state."""
    from bundle.analyze.diff import _route
    from bundle.models import Link, RouteSlice, Sysctls

    def doc(state: str) -> RouteSlice:
        return RouteSlice(links=[Link(index=3, name="cbr0", kind="bridge", operstate=state, flags=["UP"], mtu=1500)],
                          addresses=[], rules=[], routes=[], neighbors=[], lookups=[], active_probes=False,
                          sysctls=Sysctls(ip_forward=1, rp_filter_all=0, rp_filter_default=0, interfaces=[]))

    found = [d.key for d in _route(doc(failing), doc(healthy), "node ~ node")]
    assert ("cbr0 state" in found) is differs
