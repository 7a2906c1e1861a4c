"""Traffic for bench/pcap.py's lab capture, run inside the lab's namespaces.

    python bench/labtraffic.py server ADDR          TCP on :8080 (send what is asked), DNS on :53 (UDP)
    python bench/labtraffic.py client ADDR SECONDS  threads: DNS queries (A and AAAA, some NXDOMAIN), then a
                                                    TCP request for a response of random size, over and over

Only for the bench: never pointed at anything but the lab's own addresses.
"""

from __future__ import annotations

import random
import socket
import socketserver
import struct
import sys
import threading
import time

import dpkt

PORT = 8080


class _Tcp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        head = self.request.recv(8)
        if len(head) < 8:
            return
        left = struct.unpack("!Q", head)[0]
        rng = random.Random(left)
        chunk = bytes(65536)
        while left > 0:
            n = min(left, rng.choice((1024, 4096, 16384, 65536)))
            self.request.sendall(chunk[:n])
            left -= n


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def _dns(addr: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, 53))
    while True:
        data, peer = sock.recvfrom(2048)
        try:
            msg = dpkt.dns.DNS(data)
            q = msg.qd[0]
        except (dpkt.UnpackError, IndexError):
            continue
        msg.qr, msg.ra = 1, 1
        if q.name.endswith(".svc.cluster.local") and q.type == dpkt.dns.DNS_A:
            msg.an = [dpkt.dns.DNS.RR(name=q.name, type=dpkt.dns.DNS_A, cls=1, ttl=30, rdata=socket.inet_aton("10.96.0.20"))]
        elif not q.name.endswith(".svc.cluster.local"):
            msg.rcode = dpkt.dns.DNS_RCODE_NXDOMAIN
        sock.sendto(bytes(msg), peer)


def server(addr: str) -> None:
    threading.Thread(target=_dns, args=(addr,), daemon=True).start()
    with _Server((addr, PORT), _Tcp) as srv:
        srv.serve_forever()


def _client(addr: str, until: float, seed: int) -> None:
    rng = random.Random(seed)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(0.5)
    while time.monotonic() < until:
        svc = f"svc{rng.randrange(200)}"
        # the search list a pod's resolver walks (ndots:5): NXDOMAIN twice, then the answer
        for name in (f"{svc}.default.svc.cluster.local.default.svc.cluster.local", f"{svc}.default.svc.cluster.local"):
            for qtype in (dpkt.dns.DNS_A, dpkt.dns.DNS_AAAA):
                q = dpkt.dns.DNS(id=rng.randrange(65536), rd=1, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
                udp.sendto(bytes(q), (addr, 53))
                try:
                    udp.recv(2048)
                except TimeoutError:
                    pass
        size = int(min(2_000_000, rng.lognormvariate(10, 1.5)))
        try:
            with socket.create_connection((addr, PORT), timeout=5) as tcp:
                tcp.sendall(struct.pack("!Q", size))
                got = 0
                while got < size:
                    data = tcp.recv(min(65536, rng.choice((2048, 8192, 65536))))
                    if not data:
                        break
                    got += len(data)
        except OSError:
            time.sleep(0.01)


def client(addr: str, seconds: float, threads: int = 6) -> None:
    until = time.monotonic() + seconds
    workers = [threading.Thread(target=_client, args=(addr, until, i)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2])
    else:
        client(sys.argv[2], float(sys.argv[3]))
