"""Transport findings: each lab scenario yields its finding from a fresh collect; the healthy lab none."""

from __future__ import annotations

import pytest

from bundle.archive import read_bundle
from bundle.render.view import build_view
from tests.conftest import netbundle

pytestmark = pytest.mark.privileged

TRANSPORT = {"transport.refused", "transport.no_listener", "transport.loopback_only", "transport.connect_timeout",
             "transport.syn_sent_stuck", "transport.syn_sent_rising", "transport.close_wait",
             "transport.unreachable", "transport.owners_hidden"}


def _collect(tmp_path, info):
    out = tmp_path / f"{info.scenario}.tar.zst"
    argv = ["collect", "-o", str(out)]
    for t in info.targets:
        argv += ["--target", t]
    for role in info.vantages:
        argv += ["--netns", info.namespaces[role]]
    proc = netbundle(*argv)
    assert proc.returncode == 0, proc.stderr
    return build_view(read_bundle(out)).findings


def _by_id(findings):
    out = {}
    for f in findings:
        out.setdefault(f.id, []).append(f)
    return out


def test_healthy_lab_yields_no_transport_finding(tmp_path, lab):
    found = _collect(tmp_path, lab("healthy"))
    assert not [f for f in found if f.id in TRANSPORT], [f.summary for f in found]


def test_no_listener(tmp_path, lab):
    info = lab("no-listener")
    found = _by_id(_collect(tmp_path, info))
    assert {f.vantage for f in found["transport.refused"]} >= {f"netns-{info.namespaces['pod']}"}
    [nl] = found["transport.no_listener"]
    assert nl.vantage == f"netns-{info.namespaces['server']}" and "8080" in nl.summary
    assert "transport.loopback_only" not in found


def test_syn_drop(tmp_path, lab):
    info = lab("syn-drop")
    found = _by_id(_collect(tmp_path, info))
    pod = f"netns-{info.namespaces['pod']}"
    assert [f.vantage for f in found["transport.connect_timeout"]] == [pod]  # the node's own connects pass
    [stuck] = found["transport.syn_sent_stuck"]
    assert stuck.vantage == pod and "SYN-SENT" in stuck.summary
    assert "transport.refused" not in found and "transport.no_listener" not in found


def test_loopback_listener(tmp_path, lab):
    info = lab("loopback-listener")
    found = _by_id(_collect(tmp_path, info))
    [lo] = found["transport.loopback_only"]
    assert lo.vantage == f"netns-{info.namespaces['server']}"
    assert "127.0.0.1" in lo.summary and "in-netns connect to 127.0.0.1:8080 connected" in lo.summary
    assert f"netns-{info.namespaces['pod']}" in {f.vantage for f in found["transport.refused"]}
    assert "transport.no_listener" not in found


@pytest.mark.parametrize("uid, command", [(0, "ss -tanpe"), (65534, "sudo ss -tanp")])
def test_hidden_owners_next_command_fits_who_ran(uid, command):
    """Owners hidden from a process already running as root live in another PID namespace: `sudo` would add
    nothing, so the next command shows the sockets' inodes and uids instead (issue 16)."""
    from bundle.analyze.transport import VantageEvidence, transport_findings
    from bundle.models import OwnerScan, SocketsSlice, StateSample, Vantage, VantageKind

    doc = SocketsSlice(sockets=[], total=3, kept=3, dropped=0, row_limit=20000, counts={"tcp ESTAB": 3},
                       owners_hidden=3, close_wait_owners={}, listeners=[],
                       samples=[StateSample(at_s=0.0, tcp={"ESTAB": 3}, udp={}, retransmits=0)],
                       owner_scan=OwnerScan(processes=10, denied=4, uid=uid, complete=False), active_probes=False)
    v = Vantage(id="host", kind=VantageKind.HOST, entered=True)
    [f] = [f for f in transport_findings([VantageEvidence(v, None, doc)], []) if f.id == "transport.owners_hidden"]
    assert f.next_command == command


@pytest.mark.parametrize("bound, target, expected", [
    ("127.0.0.1", "127.0.0.1", False),  # a sidecar's port, asked about at the loopback address: served
    ("::1", "::1", False),
    ("127.0.0.1", "10.244.1.3", True),  # the pod's address: only the netns itself reaches it
    ("::1", "fd00::3", True),
])
def test_loopback_listener_serves_a_loopback_target(bound, target, expected):
    """A listener bound to 127.0.0.1 is the loopback_only fault for a target at the pod's address, and nothing
    at all for a target that is 127.0.0.1 itself (seen on a healthy local proxy: a critical finding said the
    listener was 'not reachable at 127.0.0.1')."""
    from bundle.analyze.transport import VantageEvidence, transport_findings
    from bundle.models import BindScope, Listener, OwnerScan, SocketsSlice, Target, Vantage, VantageKind

    doc = SocketsSlice(sockets=[], total=1, kept=1, dropped=0, row_limit=20000, counts={"tcp LISTEN": 1},
                       owners_hidden=0, close_wait_owners={}, samples=[], active_probes=False,
                       owner_scan=OwnerScan(processes=10, denied=0, uid=0, complete=True),
                       listeners=[Listener(protocol="tcp", local=bound, lport=8080, scope=BindScope.LOOPBACK,
                                           recv_q=0, send_q=128)])
    v = Vantage(id="host", kind=VantageKind.HOST, entered=True)
    spec = f"[{target}]:8080" if ":" in target else f"{target}:8080"
    found = {f.id for f in transport_findings([VantageEvidence(v, None, doc)],
                                              [Target(spec=spec, address=target, port=8080)])}
    assert ("transport.loopback_only" in found) is expected


@pytest.mark.parametrize("held, frontend, expected", [
    # IPVS: every ClusterIP sits on the node's kube-ipvs0 and the kernel's virtual server takes the SYN
    ("10.96.0.10", ("10.96.0.10", 53, "TCP"), False),
    ("fd00:96::a", ("fd00:96::a", 53, "TCP"), False),
    # a node port: on any address the node holds (kube-proxy keeps no socket on it)
    ("10.244.0.1", (None, 53, "TCP"), False),
    # the frontend is for UDP only, or another port, or none at all: nothing takes the TCP SYN
    ("10.96.0.10", ("10.96.0.10", 53, "UDP"), True),
    ("10.96.0.10", ("10.96.0.10", 9153, "TCP"), True),
    ("10.96.0.10", None, True),
])
def test_a_translated_frontend_needs_no_listener(held, frontend, expected):
    """A node that holds the target's address but has no socket on its port is `transport.no_listener` — unless
    its own dataplane translates that address:port (an IPVS ClusterIP on kube-ipvs0, a node port): what answers
    there is the kernel's rewrite, on every healthy IPVS node."""
    from bundle.analyze.transport import VantageEvidence, transport_findings
    from bundle.models import (Address, OwnerScan, RouteSlice, ServiceEntry, SocketsSlice, Sysctls, Target,
                               Vantage, VantageKind)

    family = 6 if ":" in held else 4
    route = RouteSlice(links=[], rules=[], routes=[], neighbors=[], lookups=[], active_probes=False,
                       addresses=[Address(ifindex=7, ifname="kube-ipvs0", family=family, address=held,
                                          prefixlen=128 if family == 6 else 32, scope="global")],
                       sysctls=Sysctls(ip_forward=1, rp_filter_all=0, rp_filter_default=0, interfaces=[]))
    doc = SocketsSlice(sockets=[], total=0, kept=0, dropped=0, row_limit=20000, counts={}, owners_hidden=0,
                       close_wait_owners={}, samples=[], active_probes=False, listeners=[],
                       owner_scan=OwnerScan(processes=10, denied=0, uid=0, complete=True))
    fronts = () if frontend is None else (ServiceEntry(service="kube-system/kube-dns:dns-tcp", kind="cluster IP",
                                                       protocol=frontend[2], address=frontend[0], port=frontend[1],
                                                       source="IPVS"),)
    v = Vantage(id="host", kind=VantageKind.HOST, entered=True)
    spec = f"[{held}]:53" if family == 6 else f"{held}:53"
    found = {f.id for f in transport_findings([VantageEvidence(v, route, doc, fronts)],
                                              [Target(spec=spec, address=held, port=53)])}
    assert ("transport.no_listener" in found) is expected
