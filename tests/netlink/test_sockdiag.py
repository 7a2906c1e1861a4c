"""The struct decoder of inet_diag messages: known bytes in, known fields out; and live against ss."""

from __future__ import annotations

import socket
import struct

import pytest

from bundle.netlink import sockdiag


def _message(state: int, src: str, sport: int, dst: str, dport: int, *, family=socket.AF_INET, inode=4242,
             tcp_info: bytes | None = None) -> bytes:
    pad = 16 - (4 if family == socket.AF_INET else 16)
    s = socket.inet_pton(family, src) + b"\0" * pad
    d = socket.inet_pton(family, dst) + b"\0" * pad
    body = struct.pack("=BBBB", family, state, 1, 3) + struct.pack("!HH", sport, dport) + s + d
    body += struct.pack("=I", 2) + struct.pack("=II", 0x1234, 0x1) + struct.pack("=IIIII", 200, 7, 9, 1000, inode)
    if tcp_info is not None:
        body += struct.pack("=HH", 4 + len(tcp_info), sockdiag.INET_DIAG_INFO) + tcp_info
    return body


def _tcp_info(**u32: int) -> bytes:
    names = ["rto", "ato", "snd_mss", "rcv_mss", "unacked", "sacked", "lost", "retrans", "fackets",
             "last_data_sent", "last_ack_sent", "last_data_recv", "last_ack_recv", "pmtu", "rcv_ssthresh", "rtt",
             "rttvar", "snd_ssthresh", "snd_cwnd", "advmss", "reordering", "rcv_rtt", "rcv_space", "total_retrans"]
    head = bytes([1, 0, 2, 0, 0, 0, 0, 0])  # state, ca_state, retransmits=2, ...
    return head + struct.pack("=24I", *[u32.get(n, 0) for n in names]) + b"\0" * 128  # newer kernels: longer


def test_decodes_ipv4_with_tcp_info():
    raw = _message(1, "10.244.1.2", 43210, "10.244.1.3", 8080,
                   tcp_info=_tcp_info(snd_mss=1448, rcv_mss=536, rtt=1234, rttvar=56, snd_cwnd=10, pmtu=1500,
                                      total_retrans=5, unacked=1, lost=0))
    s = sockdiag.decode_message(raw, socket.IPPROTO_TCP)
    assert (s.family, s.state, s.local, s.lport, s.remote, s.rport) == (4, "ESTAB", "10.244.1.2", 43210, "10.244.1.3", 8080)
    assert (s.ifindex, s.timer, s.retrans, s.expires_ms, s.rqueue, s.wqueue, s.uid, s.inode) == (2, "on", 3, 200, 7, 9, 1000, 4242)
    assert s.cookie == (1 << 32) | 0x1234
    assert s.tcp is not None
    info = sockdiag.tcp_info(s.tcp)
    assert (info["snd_mss"], info["rcv_mss"], info["rtt_us"], info["rttvar_us"], info["snd_cwnd"], info["pmtu"]) == \
        (1448, 536, 1234, 56, 10, 1500)
    assert (info["total_retrans"], info["retransmits"], info["unacked"]) == (5, 2, 1)
    from bundle.models import SocketTcpInfo

    assert set(info) == set(SocketTcpInfo.model_fields)  # the names are the model's


def test_decodes_ipv6_udp_and_state_names():
    s = sockdiag.decode_message(_message(7, "::1", 53, "::", 0, family=socket.AF_INET6), socket.IPPROTO_UDP)
    assert (s.family, s.state, s.local, s.remote, s.tcp) == (6, "UNCONN", "::1", "::", None)
    assert sockdiag.decode_message(_message(12, "10.0.0.1", 1, "10.0.0.2", 2), 6).state == "SYN-RECV"
    assert sockdiag.decode_message(_message(10, "0.0.0.0", 80, "0.0.0.0", 0), 6).state == "LISTEN"


def test_truncated_attribute_is_ignored():
    raw = _message(1, "10.0.0.1", 1, "10.0.0.2", 2) + struct.pack("=HH", 200, sockdiag.INET_DIAG_INFO) + b"\0" * 8
    assert sockdiag.decode_message(raw, socket.IPPROTO_TCP).tcp is None


@pytest.mark.privileged
def test_live_dump_sees_a_listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    try:
        port = srv.getsockname()[1]
        found = [s for s in sockdiag.dump(socket.AF_INET, socket.IPPROTO_TCP) if s.lport == port]
        assert [(s.state, s.local) for s in found] == [("LISTEN", "127.0.0.1")]
        assert found[0].inode == __import__("os").fstat(srv.fileno()).st_ino
    finally:
        srv.close()
