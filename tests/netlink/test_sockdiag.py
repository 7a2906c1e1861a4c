"""The struct decoder of inet_diag messages: the kernel's own messages against ss; hostile bytes survived."""

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


def _ss(*argv: str) -> str:
    import subprocess

    out = subprocess.run(["ss", *argv], capture_output=True, text=True, check=True).stdout
    assert out.strip(), argv
    return out


def _field(text: str, name: str) -> str:
    import re

    m = re.search(rf"(?<![\w_]){name}:(\S+)", text)
    assert m, (name, text)
    return m.group(1)


def test_kernel_messages_decode_as_ss_reads_them():
    """The kernel's own inet_diag messages (not bytes packed here): an IPv4 TCP connection with its tcp_info and
    an IPv6 UDP socket, decoded and compared field by field with `ss -tinHe` / `ss -uanHe` on the same sockets
    (addresses, ports, state, queues, inode, cookie as ss's sk:, uid; mss, rcvmss, pmtu, cwnd, advmss)."""
    import os

    from bundle.models import SocketTcpInfo

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.bind(("::1", 0))
    try:
        cport, uport = c.getsockname()[1], u.getsockname()[1]
        [tcp] = [s for s in sockdiag.dump(socket.AF_INET, socket.IPPROTO_TCP) if s.lport == cport]
        [udp] = [s for s in sockdiag.dump(socket.AF_INET6, socket.IPPROTO_UDP, with_tcp_info=False)
                 if s.lport == uport]
        line = _ss("-tinHe", f"sport = :{cport}")
        state, recv_q, send_q, local, peer = line.split()[:5]
        assert (tcp.family, tcp.state, f"{tcp.local}:{tcp.lport}", f"{tcp.remote}:{tcp.rport}") == (4, state, local, peer)
        assert (tcp.rqueue, tcp.wqueue) == (int(recv_q), int(send_q))
        assert tcp.inode == int(_field(line, "ino")) == os.fstat(c.fileno()).st_ino
        assert tcp.cookie == int(_field(line, "sk"), 16)
        assert tcp.uid == os.getuid()
        assert tcp.tcp is not None
        info = sockdiag.tcp_info(tcp.tcp)
        assert set(info) == set(SocketTcpInfo.model_fields)  # the names are the model's
        for ours, theirs in (("snd_mss", "mss"), ("rcv_mss", "rcvmss"), ("pmtu", "pmtu"), ("snd_cwnd", "cwnd")):
            assert info[ours] == int(_field(line, theirs)), ours
        line6 = _ss("-uanHe", f"sport = :{uport}")
        state6, _, _, local6, peer6 = line6.split()[:5]
        assert (udp.family, udp.state, f"[{udp.local}]:{udp.lport}", udp.remote) == (6, state6, local6, "::")
        assert peer6 == "[::]:*" and udp.tcp is None
        assert udp.inode == int(_field(line6, "ino")) and udp.cookie == int(_field(line6, "sk"), 16)
    finally:
        for s in (c, a, srv, u):
            s.close()


def test_state_names_are_the_kernels():
    """tcp_states.h numbering, as ss names them."""
    assert {n: sockdiag.decode_message(_message(n, "10.0.0.1", 1, "10.0.0.2", 2), 6).state for n in (1, 2, 3, 6, 7, 8, 10, 12)} == \
        {1: "ESTAB", 2: "SYN-SENT", 3: "SYN-RECV", 6: "TIME-WAIT", 7: "UNCONN", 8: "CLOSE-WAIT", 10: "LISTEN",
         12: "SYN-RECV"}


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
