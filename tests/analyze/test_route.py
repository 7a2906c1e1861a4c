"""Route-layer findings, computed from bundles the lab really produced."""

from __future__ import annotations

import subprocess

import pytest

from bundle.analyze import route_findings
from bundle.archive import read_bundle
from tests.conftest import netbundle

pytestmark = pytest.mark.privileged


def _findings(path):
    b = read_bundle(path)
    return {v.id: route_findings(v, b.route(v.id)) for v in b.manifest.vantages if b.route(v.id)}


def test_mtu_blackhole_is_pinned_to_the_pod(tmp_path, mtu_lab):
    out = tmp_path / "b.tar.zst"
    assert netbundle("collect", "--target", mtu_lab.targets[0], "--netns", mtu_lab.namespaces["pod"], "--netns",
                     mtu_lab.namespaces["node"], "-o", str(out)).returncode == 0
    found = _findings(out)
    pod = found[f"netns-{mtu_lab.namespaces['pod']}"]
    assert [f.id for f in pod] == ["mtu.blackhole"]
    assert pod[0].evidence[0].pointer == "mtu_sweeps[0]" and "1400" in pod[0].summary
    assert pod[0].next_command.startswith(f"ip netns exec {mtu_lab.namespaces['pod']} ping -c 2 -M do -s 1373")
    assert found[f"netns-{mtu_lab.namespaces['node']}"] == []


def test_healthy_lab_has_no_findings(tmp_path, healthy_lab):
    out = tmp_path / "b.tar.zst"
    argv = ["collect", "-o", str(out), "--netns", healthy_lab.namespaces["pod"], "--netns", healthy_lab.namespaces["node"]]
    for t in healthy_lab.targets:
        argv += ["--target", t]
    assert netbundle(*argv).returncode == 0
    assert all(f == [] for f in _findings(out).values())


def test_unanswered_neighbor_and_silent_host(tmp_path, mtu_lab):
    node = mtu_lab.namespaces["node"]
    # A peer that does not exist: ARP goes unanswered, the entry turns INCOMPLETE then FAILED.
    subprocess.run(["ip", "netns", "exec", node, "ping", "-c", "1", "-W", "1", "10.244.0.99"], capture_output=True)
    out = tmp_path / "b.tar.zst"
    assert netbundle("collect", "--target", "10.244.0.99", "--netns", node, "-o", str(out)).returncode == 0
    ids = {f.id: f for f in _findings(out)[f"netns-{node}"]}
    assert "neighbor.failed" in ids and ids["neighbor.failed"].target == "10.244.0.99"
    assert "icmp.no_reply" in ids
