"""Path discovery against the reference walkers on a three-router lab path (pod -> r1 -> r2 -> r3 -> server, r2
dropping SYNs to 8080): the hop lists equal `traceroute -n -I`, `tracepath -n` and `traceroute -n -T -p PORT` run
in the same netns, and the ladder names the hop after which the filtered SYN dies."""

from __future__ import annotations

import re
import subprocess

import pytest

from bundle.archive import read_bundle
from bundle.lab import scenarios
from tests.conftest import netbundle

pytestmark = pytest.mark.privileged
SERVER = scenarios.ROUTED_SERVER


def _traceroute(netns: str, *args: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", netns, "traceroute", "-n", "-q", "1", "-w", "1", *args, SERVER],
                         capture_output=True, text=True, check=True).stdout
    return [m.group(2) for m in re.finditer(r"^\s*(\d+)\s+(\S+)", out, flags=re.M)]


def _tracepath(netns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", netns, "tracepath", "-n", SERVER], capture_output=True, text=True,
                         check=True).stdout
    hops: dict[int, str] = {}
    for m in re.finditer(r"^\s*(\d+):\s+(\S+)", out, flags=re.M):
        hops.setdefault(int(m.group(1)), m.group(2))  # tracepath may print a hop twice (pmtu probing)
    return [hops[k] for k in sorted(hops)]


@pytest.fixture(scope="module")
def walked(lab, tmp_path_factory):
    info = lab("filtered-path")
    out = tmp_path_factory.mktemp("walk") / "b.tar.zst"
    proc = netbundle("collect", "--netns", info.namespaces["pod"], "--target", f"{SERVER}:{scenarios.OTHER_PORT}",
                     "--target", f"{SERVER}:{scenarios.LISTEN_PORT}", "-o", str(out))
    assert proc.returncode in (0, 5), proc.stderr
    b = read_bundle(out)
    [v] = b.manifest.vantages
    route = b.route(v.id)
    assert route is not None
    return info, {(p.protocol, p.port): p for p in route.paths}, b


def _hops(trace) -> list[str]:
    return [h.responder or "*" for h in trace.hops]


def test_icmp_walk_equals_traceroute_and_tracepath(walked):
    info, paths, _ = walked
    ours = paths[("icmp", None)]
    assert ours.reached and ours.icmp_id is not None
    assert _hops(ours) == ["10.244.1.1", "10.244.11.2", "10.244.12.2", SERVER]
    assert _hops(ours) == _traceroute(info.namespaces["pod"], "-I") == _tracepath(info.namespaces["pod"])


def test_tcp_walk_equals_traceroute_tcp(walked):
    info, paths, _ = walked
    open_port = paths[("tcp", scenarios.OTHER_PORT)]
    assert open_port.reached and open_port.hops[-1].detail == "SYN-ACK" and open_port.tcp_sports
    assert _hops(open_port) == _traceroute(info.namespaces["pod"], "-T", "-p", str(scenarios.OTHER_PORT))
    filtered = paths[("tcp", scenarios.LISTEN_PORT)]
    assert not filtered.reached and filtered.stopped == "3 silent hops"
    reference = _traceroute(info.namespaces["pod"], "-T", "-p", str(scenarios.LISTEN_PORT), "-m", "5")
    assert _hops(filtered) == reference == ["10.244.1.1", "10.244.11.2", "*", "*", "*"]


def test_the_ladder_names_the_hop_where_the_syn_dies(walked):
    _, _, b = walked
    report = b.findings()
    assert report is not None
    lad = next(lad for lad in report.ladders if lad.target == f"{SERVER}:{scenarios.LISTEN_PORT}")
    transport = lad.layers[1]
    assert lad.owner is not None and lad.owner.value == "transport"
    assert transport.reasons[0].startswith("the SYN dies after hop 2, 10.244.11.2; ICMP reaches")
    assert any(e.endswith("route.json paths[2]") for e in transport.evidence)
    # the walk's own TTL-limited SYNs and the 'time exceeded' they draw are not evidence: the open port is clean
    other = next(lad for lad in report.ladders if lad.target == f"{SERVER}:{scenarios.OTHER_PORT}")
    assert other.owner is None
    assert not [f for f in report.findings if f.id == "capture.icmp_error"]
