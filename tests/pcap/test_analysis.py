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
