"""The flight recorder's capture ring: the capture slice's kernel-filtered AF_PACKET sockets, kept open for the
whole watch in their own thread (inside the vantage's netns), holding only the last `seconds` and at most
`max_bytes` of packets in memory. `snapshot()` copies the ring out as pcapng without stopping it; the kernel's
PACKET_STATISTICS say what the ring never saw."""

from __future__ import annotations

import collections
import ipaddress
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bundle._netns import setns_net
from bundle.collect.capture import (
    ARPHRD_LOOPBACK,
    PACKET_OUTGOING,
    PACKET_STATISTICS,
    SOL_PACKET,
    _egress,
    _timestamp,
    open_packet_socket,
)
from bundle.models.watch import RingStats
from bundle.pcap import pcapng
from bundle.pcap.bpf import BpfError, compile_filter

_ICMP4_ERRORS = {3, 11}  # destination unreachable, time exceeded
_ICMP6_ERRORS = {1, 2, 3}  # destination unreachable, packet too big, time exceeded


@dataclass
class _Packet:
    ts_ns: int
    iface: int
    data: bytes
    origlen: int


class Ring:
    """Start with start(); the thread ends with stop(). Everything it shares is under one lock."""

    def __init__(self, netns: Path | None, toward: list[str], expr: str, seconds: float, max_bytes: int,
                 snaplen: int = 128) -> None:
        self.netns, self.toward, self.expr = netns, toward, expr
        self.seconds, self.max_bytes, self.snaplen = seconds, max_bytes, snaplen
        self.stats = RingStats(filter=expr, seconds=seconds, bytes_limit=max_bytes)
        self._packets: collections.deque[_Packet] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._ifaces: list[tuple[str, int]] = []
        # (ts_ns, "src > dst type/code") since last taken: the first few (a flood of errors is one trigger)
        self._icmp_errors: list[tuple[int, str]] = []
        self._thread = threading.Thread(target=self._run, name="netbundle-ring", daemon=True)

    def start(self, wait_s: float = 5.0) -> None:
        self._thread.start()
        self._ready.wait(wait_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def take_icmp_errors(self) -> list[tuple[int, str]]:
        with self._lock:
            out, self._icmp_errors = self._icmp_errors, []
        return out

    def fill(self) -> tuple[int, int]:
        with self._lock:
            return len(self._packets), self._bytes

    def snapshot(self, vantage: str) -> tuple[bytes, RingStats]:
        """The ring as a pcapng file (the packets as they are now; the ring keeps running) and its figures."""
        with self._lock:
            packets = list(self._packets)
            stats = self.stats.model_copy()
        stats.packets_kept, stats.bytes_kept = len(packets), sum(len(p.data) for p in packets)
        if packets:
            stats.oldest = datetime.fromtimestamp(packets[0].ts_ns / 1e9, UTC)
            stats.newest = datetime.fromtimestamp(packets[-1].ts_ns / 1e9, UTC)
        out = bytearray(pcapng.section_header())
        for name, linktype in self._ifaces:
            out += pcapng.interface(linktype, self.snaplen, name, f"{vantage} (netbundle watch ring)", self.expr)
        for p in packets:
            out += pcapng.packet(p.iface, p.ts_ns, p.data, p.origlen)
        return bytes(out), stats

    # --- the thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        socks: list[socket.socket] = []
        try:
            if self.netns is not None:
                setns_net(self.netns)  # this thread only: the watch's other threads stay where they are
            self._ifaces = _egress(self.toward)
            if not self._ifaces:
                self.stats.unavailable = "no route to any target: no interface to capture on"
                return
            self.stats.interfaces = [n for n, _ in self._ifaces]
            programs = {lt: compile_filter(self.expr, lt) for lt in {lt for _, lt in self._ifaces}}
            for name, linktype in self._ifaces:
                socks.append(open_packet_socket(name, programs[linktype], rcvbuf=8 << 20))
        except (OSError, BpfError) as exc:
            self.stats.unavailable = f"capture ring: {exc}"
            for sock in socks:
                sock.close()
            return
        finally:
            self._ready.set()
        received = dropped = 0
        try:
            received, dropped = self._loop(socks)
        finally:
            for sock in socks:
                got = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
                received, dropped = received + got[0], dropped + got[1]
                sock.close()
            with self._lock:
                self.stats.kernel_received, self.stats.kernel_dropped = received, dropped

    def _loop(self, socks: list[socket.socket]) -> tuple[int, int]:
        anc = socket.CMSG_SPACE(16)
        view = memoryview(bytearray(self.snaplen))
        index = {s.fileno(): i for i, s in enumerate(socks)}
        received = dropped = 0
        last_stats = time.monotonic()
        while not self._stop.is_set():
            ready, _, _ = select.select(socks, [], [], 0.2)
            for sock in ready:
                while True:
                    try:
                        origlen, ancdata, _flags, addr = sock.recvmsg_into([view], anc, socket.MSG_TRUNC)
                    except BlockingIOError:
                        break
                    except OSError:  # the interface went away: the ring keeps what it has
                        return received, dropped
                    if addr[2] == PACKET_OUTGOING and addr[3] == ARPHRD_LOOPBACK:
                        continue  # loopback hands every packet over twice
                    data = bytes(view[: min(origlen, self.snaplen)])
                    self._keep(_Packet(_timestamp(ancdata), index[sock.fileno()], data, origlen),
                               0 if addr[3] in (65534, 776) else 14)
            now = time.monotonic()
            if now - last_stats >= 1.0:  # keep the kernel's counts up to date for the status line
                last_stats = now
                for sock in socks:
                    got = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
                    received, dropped = received + got[0], dropped + got[1]
                with self._lock:
                    self.stats.kernel_received, self.stats.kernel_dropped = received, dropped
            self._expire(time.time_ns())
        return received, dropped

    def _keep(self, p: _Packet, at: int) -> None:
        icmp = _icmp_error(p.data, at)
        with self._lock:
            self._packets.append(p)
            self._bytes += len(p.data)
            self.stats.packets_seen += 1
            if icmp and len(self._icmp_errors) < 64:
                self._icmp_errors.append((p.ts_ns, icmp))
            while self._bytes > self.max_bytes and self._packets:
                old = self._packets.popleft()
                self._bytes -= len(old.data)
                self.stats.packets_evicted += 1

    def _expire(self, now_ns: int) -> None:
        horizon = now_ns - int(self.seconds * 1e9)
        with self._lock:
            while self._packets and self._packets[0].ts_ns < horizon:
                old = self._packets.popleft()
                self._bytes -= len(old.data)
                self.stats.packets_evicted += 1


def _icmp_error(data: bytes, at: int) -> str | None:
    """'SRC > DST type T code C' for an ICMP/ICMPv6 error (unreachable, too big, time exceeded), else None."""
    if len(data) < at + 40:
        return None
    version = data[at] >> 4
    if version == 4 and data[at + 9] == 1:
        ihl = (data[at] & 0x0F) * 4
        kind, code = data[at + ihl], data[at + ihl + 1]
        if kind in _ICMP4_ERRORS:
            src, dst = ipaddress.ip_address(data[at + 12:at + 16]), ipaddress.ip_address(data[at + 16:at + 20])
            return f"{src} > {dst} icmp type {kind} code {code}"
    if version == 6 and data[at + 6] == 58 and len(data) >= at + 42:
        kind, code = data[at + 40], data[at + 41]
        if kind in _ICMP6_ERRORS:
            src, dst = ipaddress.ip_address(data[at + 8:at + 24]), ipaddress.ip_address(data[at + 24:at + 40])
            return f"{src} > {dst} icmp6 type {kind} code {code}"
    return None

