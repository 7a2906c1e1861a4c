"""The capture slice in lab namespaces: what it records, the limits it keeps, and files tshark/tcpdump read."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bundle.archive import read_bundle
from bundle.models import CaptureRun, Handshake, StopReason
from bundle.pcap import open_capture
from tests.conftest import fresh, netbundle

pytestmark = pytest.mark.privileged

_FLOOD = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
          "for i in range(int(sys.argv[1])):\n    s.sendto(b'x'*900,('10.244.1.3',9999))\n")


def _run(tmp_path, info, *argv: str, roles=("pod",)):
    out = fresh(tmp_path)
    args = ["collect", "-o", str(out), *argv]
    for role in roles:
        args += ["--netns", info.namespaces[role]]
    proc = netbundle(*args)
    assert proc.returncode in (0, 5), proc.stderr
    return read_bundle(out, extract_to=tmp_path / "x")


def test_no_listener_capture_shows_syn_rst(tmp_path, lab):
    info = lab("no-listener")
    b = _run(tmp_path, info, "--target", "10.244.1.3:8080")
    run = b.document(f"vantages/netns-{info.namespaces['pod']}/capture.json", CaptureRun)
    assert run.interface == "eth0" and run.interfaces == ["eth0"] and run.filter_source == "default"
    assert "port 22" not in run.filter  # no SSH session of the operator's here: nothing is left out
    assert run.hosts_seen.get("10.244.1.3", 0) >= 2 and run.hosts_seen.get("10.244.1.2", 0) >= 2
    assert run.stopped_by is StopReason.SLICES_DONE and run.kernel_dropped == 0
    # the capture window covers the other slices' samples and probes (the manifest keeps monotonic windows)
    runs = {s.slice: s for s in b.manifest.slices}
    assert run.monotonic_start_ns <= runs["sockets"].monotonic_end_ns <= run.monotonic_end_ns
    assert run.monotonic_start_ns <= runs["route"].monotonic_end_ns <= run.monotonic_end_ns
    assert "snaplen 128" in b.member(f"vantages/netns-{info.namespaces['pod']}/capture.pcapng").provenance.source
    flows = {f.server: f for f in run.analysis.flows}
    assert flows["10.244.1.3:8080"].handshake is Handshake.SYN_RST
    pcap = tmp_path / "x" / "vantages" / f"netns-{info.namespaces['pod']}" / "capture.pcapng"
    tcpdump = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True)
    assert tcpdump.returncode == 0 and "Flags [S]" in tcpdump.stdout and "Flags [R.]" in tcpdump.stdout
    assert tcpdump.stderr.strip().startswith("reading from file") and tcpdump.stderr.count("\n") == 1
    tshark = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "frame.interface_name",
                             "-e", "frame.interface_description"], capture_output=True, text=True)
    assert tshark.returncode == 0
    assert f"eth0\tnetns-{info.namespaces['pod']}" in tshark.stdout
    assert "warning" not in tshark.stderr.lower()
    info_out = subprocess.run(["capinfos", str(pcap)], capture_output=True, text=True).stdout
    assert "icmp-unreach" in info_out and "Ethernet" in info_out  # the filter travels with the file
    assert [e.kind for e in run.analysis.events if e.kind in ("syn", "rst")] == ["syn", "rst"]
    from bundle.render import render_html

    html = render_html(b)
    assert 'aria-label="capture timeline"' in html and "rst 10.244.1.2:" in html


def test_dns_transactions_match_the_dns_slice(tmp_path, lab):
    info = lab("dns-ndots")
    b = _run(tmp_path, info, "--name", "doesnotexist", "--name", "payments")
    run = b.document(f"vantages/netns-{info.namespaces['pod']}/capture.json", CaptureRun)
    dns = b.dns(f"netns-{info.namespaces['pod']}")
    sent = [(q.qname, q.qtype) for r in dns.names for q in r.resolution.queries]
    sent += [(q.qname, q.qtype) for r in dns.names if r.fqdn for q in r.fqdn.queries]
    seen = [(t.qname, t.qtype) for t in run.analysis.dns]
    assert sorted(seen) == sorted(sent) and len(seen) >= 10
    assert all(t.rcode in ("NXDOMAIN", "NOERROR") and t.latency_ms is not None for t in run.analysis.dns)


@pytest.mark.parametrize("limit, argv, reason", [
    ("packets", ["--capture-packets", "50"], StopReason.PACKETS),
    ("bytes", ["--capture-bytes", "20000"], StopReason.BYTES),
    ("seconds", ["--capture-seconds", "1"], StopReason.DURATION),
])
def test_limits_hold_under_a_flood(tmp_path, lab, limit, argv, reason):
    info = lab("healthy")
    count = "100000000" if limit != "seconds" else "30"  # flooding until killed: the capture may start late
    flood = subprocess.Popen(["ip", "netns", "exec", info.namespaces["pod"], sys.executable, "-c", _FLOOD, count])
    try:
        b = _run(tmp_path, info, "--slice", "capture", "--capture-filter", "udp port 9999", "--capture-iface",
                 "eth0", "--snaplen", "64", *argv)
    finally:
        flood.kill()
        flood.wait()
    run = b.document(f"vantages/netns-{info.namespaces['pod']}/capture.json", CaptureRun)
    assert run.stopped_by is reason and run.filter_source == "operator"
    pcap = tmp_path / "x" / "vantages" / f"netns-{info.namespaces['pod']}" / "capture.pcapng"
    reader = open_capture(pcap)
    packets = list(reader)
    assert not reader.problems and len(packets) == run.packets_written
    assert all(p.caplen <= 64 and p.origlen >= 900 for p in packets)  # snaplen on every record
    assert pcap.stat().st_size == run.bytes_written
    if limit == "packets":
        assert run.packets_written == 50
    if limit == "bytes":
        assert run.bytes_written <= 20000 and run.packets_written > 10
    if limit == "seconds":
        assert 0.9 <= (run.monotonic_end_ns - run.monotonic_start_ns) / 1e9 < 2.5


def test_bad_filter_is_refused_before_anything_starts(tmp_path):
    proc = netbundle("collect", "--capture-filter", "host and and", "-o", str(tmp_path / "b.tar.zst"))
    assert proc.returncode == 2 and "--capture-filter" in proc.stderr and proc.stderr.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_operator_pcaps_are_kept_and_analysed(tmp_path, lab):
    from tests.conftest import corpus_file

    info = lab("healthy")
    good = corpus_file("tcpdump/tcp-handshake-nano.pcap")
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(corpus_file("tcpdump/print-flags.pcap").read_bytes()[:300])
    b = _run(tmp_path, info, "--passive", "--slice", "route", "--pcap", str(good), "--pcap", str(cut))
    docs = [a for _, a in b.operator_captures()]
    assert [d.file for d in docs] == ["tcp-handshake-nano.pcap", "cut.pcap"]
    assert docs[0].flows[0].handshake is Handshake.COMPLETED and docs[0].complete
    assert not docs[1].complete and "ends" in docs[1].problems[0].message
    kept = tmp_path / "x" / "captures" / "0-tcp-handshake-nano.pcap" / "tcp-handshake-nano.pcap"
    assert kept.read_bytes() == good.read_bytes()
    from bundle.render.view import build_view

    assert "capture.unreadable_parts" in {f.id for f in build_view(b).findings}
    missing = netbundle("collect", "--pcap", str(tmp_path / "nope.pcap"), "-o", str(tmp_path / "n.tar.zst"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_mtu_lab_bulk_transfer_shows_the_blackhole_signature(tmp_path, mtu_lab):
    """The pod keeps downloading 64 KiB from the remote; captured on the remote's side, full-size segments go
    out again and again and are never acknowledged, while the handshake's small packets got through."""
    import time as _time

    _time.sleep(2)  # let the lab's client start a few downloads
    b = _run(tmp_path, mtu_lab, "--target", mtu_lab.targets[0], "--capture-iface", "eth0", roles=("remote",))
    run = b.document(f"vantages/netns-{mtu_lab.namespaces['remote']}/capture.json", CaptureRun)
    holes = [f for f in run.analysis.flows if f.blackhole]
    assert holes, [(f.handshake, f.retransmits) for f in run.analysis.flows]
    assert holes[0].handshake is Handshake.COMPLETED and holes[0].largest_unacked_retransmitted >= 1400
    assert holes[0].server == "10.244.0.2:8080"
    from bundle.render.view import build_view

    assert "capture.blackhole" in {f.id for f in build_view(b).findings}


def test_any_interface_writes_linux_cooked(tmp_path, lab):
    info = lab("no-listener")
    b = _run(tmp_path, info, "--target", "10.244.1.3:8080", "--capture-iface", "any")
    run = b.document(f"vantages/netns-{info.namespaces['pod']}/capture.json", CaptureRun)
    assert run.interface == "any" and run.linktype == 113
    pcap = tmp_path / "x" / "vantages" / f"netns-{info.namespaces['pod']}" / "capture.pcapng"
    packets = list(open_capture(pcap))
    assert packets and all(p.linktype == 113 for p in packets)
    assert {f.handshake for f in run.analysis.flows} == {Handshake.SYN_RST}
    out = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True)
    assert out.returncode == 0 and "LINUX_SLL" in out.stderr and "Flags [R.]" in out.stdout


def test_loopback_packets_are_kept_once(tmp_path):
    """Loopback hands AF_PACKET each frame twice (sent, then received); like libpcap we keep it once."""
    ns = f"nbt-capl-{tmp_path.name[-6:]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    sender = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        sender = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                                   "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                                   "for i in range(400):\n    s.sendto(b'seq%06d' % i, ('127.0.0.1', 9999))\n"
                                   "    time.sleep(0.01)\n"])
        out = fresh(tmp_path)
        proc = netbundle("collect", "--passive", "--slice", "capture", "--netns", ns, "--target", "127.0.0.1:9999",
                         "--capture-seconds", "2", "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        b = read_bundle(out, extract_to=tmp_path / "x")
    finally:
        if sender is not None:
            sender.kill()
            sender.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    run = b.document(f"vantages/netns-{ns}/capture.json", CaptureRun)
    assert run.interface == "lo"
    seqs = [bytes(p.data[-9:]) for p in open_capture(tmp_path / "x" / "vantages" / f"netns-{ns}" / "capture.pcapng")
            if p.data[23] == 17 and bytes(p.data[-9:]).startswith(b"seq")]  # UDP (port unreachables quote it)
    assert len(seqs) > 50 and len(seqs) == len(set(seqs)), len(seqs) - len(set(seqs))


def _tcpdump_flows(pcap, expression: str) -> tuple[dict[frozenset[str], int], dict[str, int]]:
    """Packets per TCP connection (its two endpoints, unordered) and per address, as `tcpdump -nn -r` prints
    them for the expression: IPv6 endpoints print as ADDR.PORT after `IP6 `."""
    out = subprocess.run(["tcpdump", "-nn", "-r", str(pcap), expression], capture_output=True, text=True,
                         check=True).stdout
    flows: dict[frozenset[str], int] = {}
    hosts: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        i = parts.index(">")
        a, b = parts[i - 1], parts[i + 1].rstrip(":")
        ends = []
        for end in (a, b):
            addr, _, port = end.rpartition(".")
            ends.append(f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}")
            hosts[addr] = hosts.get(addr, 0) + 1
        flows[frozenset(ends)] = flows.get(frozenset(ends), 0) + 1
    return flows, hosts


def test_ipv6_flows_equal_tcpdump(tmp_path, lab):
    """Dual-stack capture: the analysis's TCP flows (IPv4 and IPv6) and their packet counts equal what
    `tcpdump -nn -r` reads from the bundled file, per family (`ip6 and tcp`, `ip and tcp`), and the IPv6
    addresses seen are counted as tcpdump counts them."""
    from bundle.lab.scenarios import V6_POD, V6_SERVER

    info = lab("dualstack-healthy")
    b = _run(tmp_path, info, *[x for t in info.targets for x in ("--target", t)])
    pod = info.namespaces["pod"]
    run = b.document(f"vantages/netns-{pod}/capture.json", CaptureRun)
    pcap = tmp_path / "x" / "vantages" / f"netns-{pod}" / "capture.pcapng"
    ours = {frozenset((f.client, f.server)): f.packets for f in run.analysis.flows}
    six, hosts6 = _tcpdump_flows(pcap, "ip6 and tcp")
    four, _ = _tcpdump_flows(pcap, "ip and tcp")
    assert run.analysis.flows_total == len(run.analysis.flows) == len(six) + len(four)
    assert {k: v for k, v in ours.items() if any(e.startswith("[") for e in k)} == six
    assert {k: v for k, v in ours.items() if not any(e.startswith("[") for e in k)} == four
    # not vacuous: the pod's IPv6 connect to the server pod is in there, handshake and all
    assert any(f"[{V6_SERVER}]:8080" in k for k in six)
    v6_flow = next(f for f in run.analysis.flows if f.server == f"[{V6_SERVER}]:8080")
    assert v6_flow.handshake is Handshake.COMPLETED and v6_flow.client.startswith(f"[{V6_POD}]:")
    assert run.hosts_seen[V6_SERVER] >= hosts6[V6_SERVER]  # hosts_seen also counts ICMPv6 and UDP
