"""The read-only guarantee, for every lab scenario: a full collect (every slice, probes and capture on) leaves
rules, routes, policy rules, links, addresses, sysctls, neighbors and the conntrack table of every lab netns as
it found them — except the neighbor and conntrack entries its own probes make, which are listed. The collects
are `lab score`'s (one run shared by the ladder's tests: conftest.lab_scores); the comparison itself is tested
below on deliberate mutations."""

from __future__ import annotations

import sys

import pytest

from bundle.lab import readonly, scenarios

pytestmark = pytest.mark.privileged


@pytest.mark.parametrize("scenario", sorted(scenarios.SCENARIOS))
def test_collect_changes_nothing(lab_scores, scenario):
    """`lab score --readonly` snapshots every netns of the scenario with the system's own tools before and after
    its real `netbundle collect` (the `flaky` one: `netbundle watch`, whose trigger runs the collection)."""
    result, _ = lab_scores
    [row] = [r for r in result["scores"] if r["scenario"] == scenario]
    ro = row["readonly"]
    assert ro["mutations"] == [], ro["mutations"]
    # say what the probes made, so the list is read, not assumed
    sys.stdout.write(f"{scenario}: {ro['probe_made_count']} entries made by probes: {ro['probe_made'][:8]}\n")


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
