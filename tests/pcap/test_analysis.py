"""Capture analysis on the corpus' real captures, and on small captures written here for the signatures
no corpus file shows (lab captures come with the capture slice)."""

from __future__ import annotations

import socket
from pathlib import Path

import dpkt
import pytest

from bundle.analyze.pcap import analyze_capture
from bundle.models import Handshake
from tests.conftest import corpus_file
from tests.pcap.test_reader import ROWS


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["path"])
def test_every_corpus_capture_is_analysed_to_the_end(row):
    a = analyze_capture(corpus_file(row["path"]))
    if row["packets_by_tcpdump"]:
        assert a.packets == int(row["packets_by_tcpdump"])
    decoded = a.ip_packets + a.non_ip + a.unsupported_linktype
    assert decoded <= a.packets and a.packets - decoded <= a.malformed  # every packet is accounted for
    assert a.complete == (not a.problems)


def test_real_handshakes_and_dns():
    hs = analyze_capture(corpus_file("tcpdump/tcp-handshake-nano.pcap"))
    assert [f.handshake for f in hs.flows] == [Handshake.COMPLETED]
    http = analyze_capture(corpus_file("other/dpkt/http.pcap"))
    assert any(t.qname == "pagead2.googlesyndication.com" and t.rcode == "NOERROR" for t in http.dns)
    two = analyze_capture(corpus_file("other/zeek/dns-two-responses.pcap"))
    assert [(t.qname, t.rcode, t.answers) for t in two.dns] == [("www.cmu.edu", "NOERROR", 4)]
    sll2 = analyze_capture(corpus_file("other/zeek/linux_dlt_sll2.pcap"))
    assert sll2.linktypes == {"276": 6} and sll2.malformed == 0


C, S = "10.244.1.2", "10.244.0.2"


def _tcp(src, dst, sport, dport, flags, seq=0, ack=0, payload=b"", mss=None):
    opts = b"" if mss is None else bytes([2, 4]) + mss.to_bytes(2, "big")
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=65535, opts=opts, data=payload)
    t.off = (20 + len(opts)) // 4
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=t)
    ip.len = 20 + len(bytes(t))
    return dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)


def _write(tmp_path: Path, frames) -> Path:
    path = tmp_path / "t.pcap"
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, frame in enumerate(frames):
            w.writepkt(bytes(frame), ts=1_700_000_000 + i * 0.2)
    return path


def test_syn_rst_and_unanswered(tmp_path):
    SYN, ACK, RST = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_RST
    frames = [_tcp(C, S, 40000, 8080, SYN, seq=1, mss=1460), _tcp(S, C, 8080, 40000, RST | ACK, ack=2)]
    frames += [_tcp(C, S, 40001, 9090, SYN, seq=7) for _ in range(3)]
    a = analyze_capture(_write(tmp_path, frames))
    by = {f.server: f for f in a.flows}
    assert by[f"{S}:8080"].handshake is Handshake.SYN_RST and by[f"{S}:8080"].mss == [1460]
    assert by[f"{S}:9090"].handshake is Handshake.SYN_UNANSWERED and by[f"{S}:9090"].syn_retransmits == 2


def test_blackhole_signature(tmp_path):
    """Small segments are acknowledged; a full-size one is sent again and again and never is."""
    SYN, ACK = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK
    frames = [_tcp(C, S, 40000, 8080, SYN, seq=100, mss=1460), _tcp(S, C, 8080, 40000, SYN | ACK, seq=5000, ack=101),
              _tcp(C, S, 40000, 8080, ACK, seq=101, ack=5001),
              _tcp(S, C, 8080, 40000, ACK, seq=5001, ack=101, payload=b"h" * 100),
              _tcp(C, S, 40000, 8080, ACK, seq=101, ack=5101)]
    frames += [_tcp(S, C, 8080, 40000, ACK, seq=5101, ack=101, payload=b"x" * 1448) for _ in range(4)]
    a = analyze_capture(_write(tmp_path, frames))
    [flow] = a.flows
    assert flow.handshake is Handshake.COMPLETED and flow.blackhole and flow.largest_unacked_retransmitted == 1448
    assert flow.retransmits == 3
    healthy = frames[:6] + [_tcp(C, S, 40000, 8080, ACK, seq=101, ack=6549)]
    [ok] = analyze_capture(_write(tmp_path, healthy)).flows
    assert not ok.blackhole and ok.retransmits == 0


def test_icmp_error_is_tied_to_its_flow(tmp_path):
    inner = _tcp(C, S, 40000, 8080, dpkt.tcp.TH_ACK, payload=b"x" * 1448).data
    icmp = dpkt.icmp.ICMP(type=3, code=4, data=dpkt.icmp.ICMP.Unreach(mtu=1400, data=bytes(inner)[:28]))
    ip = dpkt.ip.IP(src=socket.inet_aton("10.244.0.1"), dst=socket.inet_aton(C), p=1, data=icmp)
    ip.len = 20 + len(bytes(icmp))
    a = analyze_capture(_write(tmp_path, [dpkt.ethernet.Ethernet(type=0x0800, data=ip)]))
    [ev] = a.icmp
    assert (ev.description, ev.mtu, ev.source) == ("fragmentation needed", 1400, "10.244.0.1")
    assert ev.quoted == f"tcp {C}:40000 > {S}:8080"


def test_garbage_frames_are_counted_not_fatal(tmp_path):
    frames = [b"\x00" * 10, b"\x02" * 12 + b"\x08\x00\x45" + b"\x00" * 5, bytes(_tcp(C, S, 1, 2, dpkt.tcp.TH_SYN))[:40]]
    a = analyze_capture(_write(tmp_path, frames))
    assert a.packets == 3 and a.malformed == 3 and len(a.malformed_examples) == 3


def _dns_frame(src, dst, sport, dport, qid, name, response):
    msg = dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_AAAA)])
    if response:
        msg.qr, msg.rcode = 1, dpkt.dns.DNS_RCODE_NXDOMAIN
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=bytes(msg))
    u.ulen = 8 + len(bytes(msg))
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=17, data=u)
    ip.len = 20 + len(bytes(u))
    return dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)


def test_fast_path_agrees_with_the_general_decoder(tmp_path):
    """Untagged Ethernet/IPv4 takes the one-unpack fast path; the same IP packets behind another link header
    (raw IP, a VLAN tag) take the general decoder. Every verdict must be the same."""
    SYN, ACK, RST, PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH
    frames = [_tcp(C, S, 40000, 8080, SYN, seq=100, mss=1460), _tcp(S, C, 8080, 40000, SYN | ACK, seq=5000, ack=101, mss=1400),
              _tcp(C, S, 40000, 8080, ACK, seq=101, ack=5001),
              _tcp(S, C, 8080, 40000, ACK, seq=5001, ack=101, payload=b"h" * 100),
              _tcp(C, S, 40000, 8080, ACK, seq=101, ack=5101)]
    frames += [_tcp(S, C, 8080, 40000, ACK | PSH, seq=5101, ack=101, payload=b"x" * 1448) for _ in range(3)]
    frames += [_tcp(C, S, 40001, 9090, SYN, seq=7), _tcp(S, C, 9090, 40001, RST | ACK, ack=8)]
    zero = _tcp(C, S, 40002, 443, ACK, seq=1, ack=1)
    zero.data.data.win = 0
    frames += [zero, _tcp(S, C, 443, 40002, ACK, seq=1, ack=1, payload=b"y" * 10)]
    frames += [_dns_frame(C, "10.96.0.10", 53000, 53, 77, "payments.default.svc.cluster.local", False),
               _dns_frame("10.96.0.10", C, 53, 53000, 77, "payments.default.svc.cluster.local", True),
               _dns_frame(C, "10.96.0.10", 53001, 53, 78, "unanswered.example", False)]
    eth = analyze_capture(_write(tmp_path, frames))

    raw = tmp_path / "raw.pcap"
    with open(raw, "wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_RAW)
        for i, frame in enumerate(frames):
            w.writepkt(bytes(frame.data), ts=1_700_000_000 + i * 0.2)
    vlan = tmp_path / "vlan.pcap"
    with open(vlan, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for i, frame in enumerate(frames):
            b = bytes(frame)
            w.writepkt(b[:12] + b"\x81\x00\x00\x07" + b[12:], ts=1_700_000_000 + i * 0.2)

    assert eth.flows[0].blackhole and len(eth.dns) == 2 and eth.dns_unanswered == 1  # the fixture is sane
    assert {f.server: f.mss for f in eth.flows}[f"{S}:8080"] == [1400, 1460]
    assert [f.zero_windows for f in eth.flows if f.server.endswith(":443")] == [1]
    for other in (analyze_capture(raw), analyze_capture(vlan)):
        skip = {"file", "linktypes"}
        assert other.model_dump(exclude=skip) == eth.model_dump(exclude=skip)


def test_a_syn_at_the_captures_end_is_not_unanswered(tmp_path):
    """A SYN sent in the capture's last second, not retransmitted, proves nothing: its SYN-ACK may simply come
    after the capture stopped (a packet limit, the window's end, a busy server's next client). One sent earlier
    and never answered within the capture is the finding; so is a SYN retransmitted at the end."""
    from bundle.analyze.capture import capture_findings

    SYN, ACK = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK
    early = [_tcp(C, S, 40010, 8080, SYN, seq=1)]
    chatter = [_tcp(C, S, 40020, 8080, SYN, seq=1), _tcp(S, C, 8080, 40020, SYN | ACK, ack=2)]
    chatter += [_tcp(C, S, 40020, 8080, ACK, seq=2, ack=1) for _ in range(8)]  # 10 frames, 0.2 s apart
    late = [_tcp(C, S, 40030, 8080, SYN, seq=1)]
    late_again = [_tcp(C, S, 40040, 8080, SYN, seq=1), _tcp(C, S, 40040, 8080, SYN, seq=1)]

    def unanswered(frames) -> set[str]:
        a = analyze_capture(_write(tmp_path, frames))
        out = set()
        for f in capture_findings("operator", "c.json", a):
            if f.id == "capture.syn_unanswered":
                out |= {a.flows[int(e.pointer.split("[")[1].rstrip("]"))].client for e in f.evidence}
        return out

    assert unanswered(early + chatter) == {f"{C}:40010"}
    assert unanswered(chatter + late) == set()
    assert unanswered(chatter + late_again) == {f"{C}:40040"}
