"""The capture follows the targets: one capture socket per egress interface a target's route (or a nameserver's)
takes, in one pcapng with an interface each; a target on port 22 is captured (only the operator's own SSH session
is left out, from $SSH_CONNECTION); the DNS slice's queries are in the capture; a target the capture never saw is
said so, and the summary does not offer that capture as proof about it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from bundle.archive import read_bundle
from bundle.lab.topology import Topology
from tests.conftest import netbundle

pytestmark = pytest.mark.privileged
SSH_PEER, WEB_PEER = "10.244.20.2", "10.244.21.2"
SESSION = "10.244.20.9 50022 10.244.20.1 22"  # the operator's own (pretend) SSH session into the client


@pytest.fixture(scope="module")
def two_links(tmp_path_factory):
    """client eth0 -> peer A (listens on 22), client eth1 -> peer B (listens on 8080, answers DNS)."""
    with Topology(f"nbt-cap2-{os.getpid() % 100000}") as t:
        for role in ("client", "a", "b"):
            t.add_netns(role)
        t.veth("client", "eth0", "a", "eth0")
        t.veth("client", "eth1", "b", "eth0")
        t.address("client", "eth0", "10.244.20.1/24")
        t.address("a", "eth0", f"{SSH_PEER}/24")
        t.address("client", "eth1", "10.244.21.1/24")
        t.address("b", "eth0", f"{WEB_PEER}/24")
        t.python("a", "bundle.lab.listener", "--port", "22", "--send", "16")
        t.python("b", "bundle.lab.listener", "--port", "8080", "--send", "16")
        run = t.run_dir()
        t.spawn("b", ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--listen-address={WEB_PEER}",
                      "--bind-interfaces", "--port=53", "--local=/#/", f"--pid-file={run / 'dnsmasq.pid'}",
                      "--user=root", "--group=root", "--host-record=web.example,10.244.21.2"])
        t.wait_listening("a", 22)
        t.wait_listening("b", 8080)
        t.wait_listening("b", 53)
        t.netns_file("client", "resolv.conf", f"nameserver {WEB_PEER}\noptions timeout:1 attempts:1\n")
        out = tmp_path_factory.mktemp("cap2") / "b.tar.zst"
        env = {**os.environ, "SSH_CONNECTION": SESSION}
        proc = subprocess.run([sys.executable, "-m", "bundle", "collect", "--netns", t.namespaces["client"],
                               "--target", f"{SSH_PEER}:22", "--target", f"{WEB_PEER}:8080", "--target",
                               "10.244.20.77:80", "--name", "web.example", "-o", str(out)],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode in (0, 5), proc.stderr
        yield t, out, read_bundle(out, extract_to=out.parent / "x")


def _tcpdump(bundle_dir, vid: str, *expr: str) -> str:
    pcap = bundle_dir / "x" / "vantages" / vid / "capture.pcapng"
    return subprocess.run(["tcpdump", "-nn", "-r", str(pcap), *expr], capture_output=True, text=True,
                          check=True).stdout


def test_one_capture_per_egress_interface(two_links):
    t, out, b = two_links
    [v] = b.manifest.vantages
    run = b.capture(v.id)
    assert run is not None and run.interfaces == ["eth0", "eth1"]
    tshark = subprocess.run(["tshark", "-r", str(out.parent / "x" / "vantages" / v.id / "capture.pcapng"), "-T",
                             "fields", "-e", "frame.interface_name"], capture_output=True, text=True, check=True)
    assert set(tshark.stdout.split()) == {"eth0", "eth1"}
    # each target's SYN and its answer, on its own interface
    for peer, port in ((SSH_PEER, 22), (WEB_PEER, 8080)):
        text = _tcpdump(out.parent, v.id, "tcp", "and", "host", peer)
        assert re.search(rf"> {re.escape(peer)}\.{port}: Flags \[S\]", text), text
        assert re.search(rf"{re.escape(peer)}\.{port} > .*Flags \[S\.\]", text), text
    # the operator's own session is what the filter leaves out, and only it
    assert "host 10.244.20.9 and host 10.244.20.1 and port 50022 and port 22" in run.filter
    assert "not port 22" not in run.filter


def test_the_dns_slice_queries_are_in_the_capture(two_links):
    _, out, b = two_links
    [v] = b.manifest.vantages
    sent = sum(len(r.resolution.queries) for r in b.dns(v.id).names)  # type: ignore[union-attr]
    assert sent >= 2
    queries = [line for line in _tcpdump(out.parent, v.id, "udp", "dst", "port", "53").splitlines()
               if "web.example" in line]
    assert len(queries) >= sent


def test_a_target_the_capture_never_saw_is_said(two_links):
    _, out, b = two_links
    report = b.findings()
    assert report is not None
    unseen = [f for f in report.findings if f.id == "capture.target_unseen"]
    assert [f.target.address for f in unseen] == ["10.244.20.77"]  # type: ignore[union-attr]
    run = b.capture(b.manifest.vantages[0].id)
    assert "10.244.20.77" not in run.hosts_seen and run.hosts_seen[SSH_PEER] > 0  # type: ignore[union-attr]
    summary = netbundle("summary", str(out), "--format", "text", check=True).stdout
    assert "holds no IP packet to or from 10.244.20.77" in summary
    # the failing target's row is the one owned; its capture never saw it, so no capture is offered as proof
    assert any(lad.owner is not None for lad in report.ladders if lad.target == "10.244.20.77:80")
    assert report.capture is None


def test_a_vantage_collected_about_its_own_address_captures_where_clients_arrive(tmp_path):
    """The server collected about itself: `route get` to its own address is lo, where only its own connects pass.
    The interface holding the address is captured too: a client's connections arriving there are in the pcapng
    (as tcpdump reads it), beside the vantage's own probe on lo."""
    with Topology(f"nbt-capself-{os.getpid() % 100000}") as t:
        t.add_netns("server")
        t.add_netns("client")
        t.veth("client", "eth0", "server", "eth0")
        t.address("client", "eth0", "10.244.22.1/24")
        t.address("server", "eth0", "10.244.22.2/24")
        t.python("server", "bundle.lab.listener", "--port", "8080", "--send", "16")
        t.wait_listening("server", 8080)
        t.python("client", "bundle.lab.client", "--target", "10.244.22.2:8080", "--interval", "0.2")
        out = tmp_path / "self.tar.zst"
        proc = netbundle("collect", "--netns", t.namespaces["server"], "--target", "10.244.22.2:8080",
                         "--slice", "capture", "--slice", "sockets", "--capture-seconds", "3", "-o", str(out))
        assert proc.returncode in (0, 5), proc.stderr
        vid = f"netns-{t.namespaces['server']}"
    b = read_bundle(out, extract_to=tmp_path / "x")
    run = b.capture(vid)
    assert run.interfaces == ["lo", "eth0"]
    arrived = _tcpdump(tmp_path, vid, "tcp[tcpflags] & tcp-syn != 0 and src host 10.244.22.1")
    assert "10.244.22.1." in arrived and "> 10.244.22.2.8080" in arrived
