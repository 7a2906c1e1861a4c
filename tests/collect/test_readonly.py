"""The read-only guarantee, for every lab scenario: a full collect (every slice, probes and capture on) leaves
rules, routes, policy rules, links, addresses, sysctls, neighbors and the conntrack table of every lab netns as
it found them — except the neighbor and conntrack entries its own probes make, which are listed."""

from __future__ import annotations

import os
import sys

import pytest

from bundle.lab import scenarios
from tests import readonly
from tests.conftest import netbundle

pytestmark = pytest.mark.privileged


def _collect_unchanged(info, tmp_path) -> readonly.Changes:
    namespaces = sorted(info.namespaces.values())
    before = readonly.snapshot(namespaces)
    out = tmp_path / f"{info.scenario}.tar.zst"
    proc = netbundle(*info.collect_argv()[1:], "-o", str(out))
    assert proc.returncode in (0, 5), proc.stderr
    after = readonly.snapshot(namespaces)
    changes = readonly.compare(before, after)
    assert changes.mutations == [], changes.mutations
    # say what the probes made, so the list is read, not assumed
    sys.stdout.write(f"{info.scenario}: {len(changes.probe_made)} entries made by probes: "
                     f"{changes.probe_made[:8]}\n")
    return changes


@pytest.mark.parametrize("scenario", sorted(set(scenarios.SCENARIOS) - {"conntrack-full"}))
def test_collect_changes_nothing(lab, tmp_path, scenario):
    _collect_unchanged(lab(scenario), tmp_path)


def test_collect_changes_nothing_conntrack_full(tmp_path):
    """Its own lab: it lowers the machine-wide nf_conntrack_max (put back on teardown)."""
    with scenarios.running("conntrack-full", f"nbt-rocf-{os.getpid() % 100000}") as info:
        _collect_unchanged(info, tmp_path)


def test_the_snapshot_sees_a_mutation(lab):
    """The comparison is not blind: an added route, a changed sysctl, a new nft table and a deleted conntrack
    entry are each caught."""
    info = lab("stale-dnat")
    ns = info.namespaces["node"]
    # An assured entry no traffic touches: a live flow's entry would come back with its next packet.
    flow = ["-p", "tcp", "-s", "10.244.9.1", "-d", "10.244.9.2", "--sport", "1111", "--dport", "2222"]
    readonly.in_netns(ns, "conntrack", "-I", *flow, "--state", "ESTABLISHED", "-t", "600", "-u", "ASSURED")
    before = readonly.snapshot([ns])
    [victim] = [k for k in before.conntrack[ns] if k[0] == 6 and "10.244.9.1" in k and 1111 in k]
    readonly.in_netns(ns, "conntrack", "-D", *flow)
    readonly.in_netns(ns, "ip", "route", "add", "10.244.9.0/24", "dev", "lo")
    old_rp = readonly.in_netns(ns, "sysctl", "-n", "net.ipv4.conf.all.rp_filter").strip()
    readonly.in_netns(ns, "sysctl", "-qw", f"net.ipv4.conf.all.rp_filter={2 if old_rp != '2' else 1}")
    readonly.in_netns(ns, "nft", "add", "table", "inet", "nbt_probe")
    try:
        changes = readonly.compare(before, readonly.snapshot([ns]))
    finally:
        readonly.in_netns(ns, "nft", "delete", "table", "inet", "nbt_probe")
        readonly.in_netns(ns, "sysctl", "-qw", f"net.ipv4.conf.all.rp_filter={old_rp}")
        readonly.in_netns(ns, "ip", "route", "del", "10.244.9.0/24", "dev", "lo")
    text = "\n".join(changes.mutations)
    assert "routes" in text and "sysctls" in text and "nft" in text, text
    assert f"conntrack entry gone: {victim}" in text, text
