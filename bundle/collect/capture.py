"""Capture slice: a kernel-filtered, bounded capture inside the vantage's netns, written as pcapng, analysed.

AF_PACKET socket, BPF compiled by libpcap from a tcpdump-syntax expression (default: the targets' hosts and
ports, ICMP errors, DNS when names are asked, never port 22). Hard limits — packets, bytes written, seconds,
snaplen — are checked before every write. The capture starts before any slice sends a probe and ends when
the vantage's other slices are done (or at a limit), so its window covers their samples and probes.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time
from datetime import UTC, datetime
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bundle.analyze.pcap import analyze_capture
from bundle.collect.dns import load_conf
from bundle.collect.base import Artifact, Collector, Needs, ResolvedTarget, SliceContext, SliceResult
from bundle.models import CaptureAnalysis, CaptureLimits, CaptureRun, MediaType, MissingReason, Provenance, SliceStatus, StopReason, Unavailable
from bundle.pcap import pcapng
from bundle.pcap.bpf import BpfError, attach, attach_drop_all, compile_filter

ETH_P_ALL = 0x0003
LINKTYPE_LINUX_SLL = 113
DLT_RAW = 12  # libpcap's DLT for raw IP on Linux (the file link type would be 101)
_SLL = struct.Struct("!HHH8sH")
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_TIMESTAMPNS = 35
DEFAULT_PACKETS = 10_000
DEFAULT_BYTES = 8 << 20
DEFAULT_SECONDS = 10.0
DEFAULT_SNAPLEN = 128
PACKET_OUTGOING = 4  # sockaddr_ll.sll_pkttype of a frame this host sent
ARPHRD_LOOPBACK = 772
DISK_FLOOR = 64 << 20
RTN_LOCAL = 2  # rtm_type of a route to an address of this netns
MAX_INTERFACES = 4  # one capture socket per egress interface of the targets and nameservers, at most this many
MAX_HOSTS = 256  # addresses counted in hosts_seen
_ARPHRD_LINKTYPE = {1: 1, 772: 1, 65534: 101, 776: 101}  # ethernet, loopback (ethernet framing), none/tun, sit


def default_filter(targets: tuple[ResolvedTarget, ...], dns: bool, ssh: str | None = None) -> str | None:
    """The targets' hosts and ports, ICMP errors about anything, DNS when names matter. `ssh` is the operator's
    own session ($SSH_CONNECTION: client, client port, server, server port): its packets are left out, and only
    they — a target on port 22 is captured like any other."""
    parts = []
    for t in targets:
        host = f"host {t.address}"
        parts.append(f"({host} and (port {t.port} or icmp or icmp6))" if t.port else f"({host})")
    if not parts and not dns:
        return None
    parts.append("icmp[icmptype] == icmp-unreach or icmp[icmptype] == icmp-timxceed")
    parts.append("(icmp6 and (ip6[40] == 1 or ip6[40] == 2 or ip6[40] == 3))")
    if dns:
        parts.append("port 53")
    expr = f"({' or '.join(parts)})"
    session = _ssh_session(ssh)
    return f"{expr} and not ({session})" if session else expr


def _ssh_session(value: str | None) -> str | None:
    """'host C and host S and port CP and port SP' of an SSH_CONNECTION value, None when it is not one."""
    parts = (value or "").split()
    if len(parts) != 4 or not parts[1].isdigit() or not parts[3].isdigit():
        return None
    try:
        client, server = (str(ipaddress.ip_address(a.split("%")[0])) for a in (parts[0], parts[2]))
    except ValueError:
        return None
    return f"tcp and host {client} and host {server} and port {int(parts[1])} and port {int(parts[3])}"


def _egress(addresses: list[str]) -> list[tuple[str, int]]:
    """The interfaces `route get` picks for the addresses (each once, in order), with their link types. An address
    of this netns routes to lo, where only its own connects pass: the interface holding it is taken too, where
    the other machines' packets to it arrive."""
    out: dict[str, int] = {}
    with IPRoute() as ipr:
        names = {m["index"]: (m.get_attr("IFLA_IFNAME"), m["ifi_type"]) for m in ipr.get_links()}
        for address in addresses:
            try:
                msg = list(ipr.route("get", dst=address))[0]
            except NetlinkError:
                continue
            oif = msg.get_attr("RTA_OIF")
            if oif in names:
                out.setdefault(names[oif][0], _ARPHRD_LINKTYPE.get(names[oif][1], 1))
            if msg["type"] == RTN_LOCAL:
                for held in ipr.get_addr(address=address):
                    index = held["index"]
                    if index in names and names[index][0] != "lo":
                        out.setdefault(names[index][0], _ARPHRD_LINKTYPE.get(names[index][1], 1))
    return list(out.items())[:MAX_INTERFACES]


def open_packet_socket(name: str, program: bytes, cooked: bool = False, rcvbuf: int = 4 << 20) -> socket.socket:
    """An AF_PACKET socket on one interface (or, cooked, on every one) that delivers only what `program`
    accepts, with kernel timestamps and its statistics reset. libpcap's order: drop everything, bind, drain what
    slipped in, then the real filter — so no packet the filter refuses is ever read."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM if cooked else socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        attach_drop_all(sock)
        if not cooked:
            sock.bind((name, ETH_P_ALL))
        sock.setblocking(False)
        while True:
            try:
                sock.recv(65535)
            except BlockingIOError:
                break
        attach(sock, program)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)  # reading resets the counters
    except BaseException:
        sock.close()
        raise
    return sock


def _linktype_of(ifname: str) -> int | None:
    with IPRoute() as ipr:
        for m in ipr.get_links():
            if m.get_attr("IFLA_IFNAME") == ifname:
                return _ARPHRD_LINKTYPE.get(m["ifi_type"], 1)
    return None


class CaptureCollector(Collector):
    name = "capture"
    description = "bounded, kernel-filtered capture on the egress interface, written as pcapng and analysed"
    needs = Needs(capabilities=("CAP_NET_RAW",))
    spans_window = True

    def collect(self, ctx: SliceContext) -> SliceResult:
        started = time.monotonic()
        o = ctx.options
        limits = CaptureLimits(packets=o.capture_packets or DEFAULT_PACKETS, bytes=o.capture_bytes or DEFAULT_BYTES,
                               seconds=o.capture_seconds or DEFAULT_SECONDS, snaplen=o.snaplen or DEFAULT_SNAPLEN)
        expr = ctx.options.capture_filter
        source = "operator" if expr else "default"
        names = bool(ctx.options.dns_names) or any(t.name for t in ctx.targets)
        expr = expr or default_filter(ctx.targets, names, os.environ.get("SSH_CONNECTION"))
        chosen = ctx.options.capture_iface
        run = CaptureRun(interface=chosen, filter=expr or "", filter_source=source, limits=limits)

        def stop(status: SliceStatus, reason: str, why: MissingReason = MissingReason.SKIPPED) -> SliceResult:
            run.unavailable = Unavailable(unavailable=why, detail=reason)
            return SliceResult(status=status, reason=reason, artifacts=[
                Artifact.document("capture.json", run, MediaType.CAPTURE, "AF_PACKET capture", started)])

        if expr is None:
            return stop(SliceStatus.SKIPPED, "no target or name to filter on (give --capture-filter EXPR)",
                        MissingReason.NOT_APPLICABLE)
        free = ctx.disk_free
        if free is not None and int(free) < limits.bytes * 2 + DISK_FLOOR:
            return stop(SliceStatus.SKIPPED, f"only {int(free) >> 20} MiB free where the bundle is written")
        cooked = chosen == "any"
        ifaces: list[tuple[str, int]]
        if cooked:
            ifaces = [("any", LINKTYPE_LINUX_SLL)]  # every interface: cooked headers rebuilt from each address
        elif chosen:
            linktype = _linktype_of(chosen)
            if linktype is None:
                return stop(SliceStatus.FAILED, f"no interface {chosen} in this netns", MissingReason.ERROR)
            ifaces = [(chosen, linktype)]
        else:
            # every interface a target's route takes, and a nameserver's when names are resolved here
            toward = [t.address for t in ctx.targets]
            if names:
                _, _, conf, _ = load_conf(ctx.vantage_kind, ctx.vantage_ref)
                toward += conf.nameservers if conf else []
            ifaces = _egress(toward)
            if not ifaces:
                return stop(SliceStatus.SKIPPED, "no route to any target: no interface to capture on",
                            MissingReason.NOT_APPLICABLE)
        run.interface, run.linktype = ifaces[0]
        run.interfaces = [name for name, _ in ifaces]
        try:
            # Compiled for the largest snaplen: a BPF program's return value trims the packet in the kernel,
            # and the original length would be lost (libpcap fixes its programs up the same way).
            # A cooked (SOCK_DGRAM) socket hands the filter the network header first: compile it for raw IP.
            programs = {lt: compile_filter(expr, DLT_RAW if cooked else lt) for lt in {lt for _, lt in ifaces}}
        except BpfError as exc:
            return stop(SliceStatus.FAILED, f"capture filter: {exc}", MissingReason.ERROR)
        socks: list[socket.socket] = []
        try:
            for name, linktype in ifaces:
                try:
                    socks.append(open_packet_socket(name, programs[linktype], cooked))
                except PermissionError as exc:
                    return stop(SliceStatus.SKIPPED, f"AF_PACKET socket: {exc.strerror}",
                                MissingReason.NOT_PERMITTED)
            run.started = datetime.now(UTC)
            run.monotonic_start_ns = time.monotonic_ns()
            start_wall_ns = time.time_ns()
            vantage = f"{ctx.vantage_id} (netns inode {os.stat('/proc/self/ns/net').st_ino})"
            out = bytearray(pcapng.section_header())
            for name, linktype in ifaces:  # one interface description each: packets name theirs by index
                out += pcapng.interface(linktype, limits.snaplen, name, vantage, expr)
            ctx.probe_gate()  # from here on, other slices may send probes: we are listening
            run.stopped_by = self._loop(ctx, socks, out, limits, run, cooked)
            stats = [struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        run.kernel_received, run.kernel_dropped = sum(r for r, _ in stats), sum(d for _, d in stats)
        run.finished = datetime.now(UTC)
        run.monotonic_end_ns = time.monotonic_ns()
        for i, (received, dropped) in enumerate(stats):
            block = pcapng.statistics(i, time.time_ns(), start_wall_ns, received, dropped)
            if len(out) + len(block) <= limits.bytes:
                out += block
        run.bytes_written = len(out)
        run.analysis = _analyse(bytes(out))
        reasons = []
        if run.kernel_dropped:
            reasons.append(f"the kernel dropped {run.kernel_dropped} packets (receive buffer full)")
        if run.stopped_by is StopReason.INTERFACE_GONE:
            reasons.append(f"an interface went down or away during the capture ({run.interface_error}); "
                           f"the {run.packets_written} packets before are kept")
        where = ", ".join(run.interfaces)
        art = Artifact(name="capture.pcapng", data=bytes(out), media_type=MediaType.PCAPNG,
                       provenance=Provenance(source=f"AF_PACKET on {where}, snaplen {limits.snaplen}, "
                                                    f"{limits.packets} packets / {limits.bytes} bytes / "
                                                    f"{limits.seconds:g} s at most, BPF: {expr}",
                                             truncated=run.stopped_by in (StopReason.PACKETS, StopReason.BYTES),
                                             duration_s=round(time.monotonic() - started, 6)))
        return SliceResult(status=SliceStatus.PARTIAL if reasons else SliceStatus.COMPLETE,
                           reason="; ".join(reasons) or None,
                           artifacts=[art, Artifact.document("capture.json", run, MediaType.CAPTURE,
                                                             "capture window, limits, kernel statistics, analysis",
                                                             started)])

    def _loop(self, ctx: SliceContext, socks: list[socket.socket], out: bytearray, limits: CaptureLimits,
              run: CaptureRun, cooked: bool) -> StopReason:
        end = time.monotonic() + limits.seconds
        at_least = time.monotonic() + (ctx.options.capture_min_seconds or 0.0)
        anc = socket.CMSG_SPACE(16)
        view = memoryview(bytearray(limits.snaplen))  # cooked: the header is added in front, then cut again
        index = {sock.fileno(): i for i, sock in enumerate(socks)}
        grace_until: float | None = None
        while True:
            now = time.monotonic()
            if now >= end:
                return StopReason.DURATION
            if now >= ctx.deadline - 0.3:
                return StopReason.DEADLINE
            if ctx.peers_done() and now >= at_least:
                # keep listening a moment for the last answers to the other slices' probes
                grace_until = grace_until or now + 0.3
                if now >= grace_until:
                    return StopReason.SLICES_DONE
            ready, _, _ = select.select(socks, [], [], 0.05)
            for sock in ready:
                iface = index[sock.fileno()]
                while True:
                    try:
                        # MSG_TRUNC: the kernel returns the frame's true length while copying only snaplen bytes
                        origlen, ancdata, _flags, addr = sock.recvmsg_into([view], anc, socket.MSG_TRUNC)
                    except BlockingIOError:
                        break
                    except OSError as exc:  # ENETDOWN, ENXIO: the interface went down or away; keep what we have
                        run.interface_error = exc.strerror or str(exc)
                        return StopReason.INTERFACE_GONE
                    if addr[2] == PACKET_OUTGOING and addr[3] == ARPHRD_LOOPBACK:
                        continue  # loopback hands every packet over twice, sent and received: keep it once
                    ts = _timestamp(ancdata)
                    data = bytes(view[: min(origlen, limits.snaplen)])
                    if cooked:  # the Linux cooked (SLL) header, from the packet's sockaddr_ll
                        _ifname, proto, pkttype, hatype, hwaddr = addr
                        head = _SLL.pack(pkttype, hatype, len(hwaddr), hwaddr[:8].ljust(8, b"\0"), proto)
                        data, origlen = (head + data)[: limits.snaplen], origlen + len(head)
                    block = pcapng.packet(iface, ts, data, origlen)
                    if run.packets_written >= limits.packets:
                        return StopReason.PACKETS
                    if len(out) + len(block) > limits.bytes:
                        return StopReason.BYTES
                    out += block
                    run.packets_written += 1
                    _count_hosts(run, data, cooked, 16 if cooked else 0 if addr[3] in (65534, 776) else 14)


def _count_hosts(run: CaptureRun, data: bytes, cooked: bool, at: int) -> None:
    """Count a written packet under its source and destination addresses (at most MAX_HOSTS addresses), so a
    target the capture never saw is said, not guessed. `at`: where the IP header starts (after the Ethernet or
    cooked header; 0 for raw IP)."""
    if at == 14 and not cooked and len(data) >= 18 and data[12:14] == b"\x81\x00":  # one VLAN tag
        at += 4
    if len(data) < at + 20:
        return
    version = data[at] >> 4
    if version == 4:
        pair = (data[at + 12:at + 16], data[at + 16:at + 20])
    elif version == 6 and len(data) >= at + 40:
        pair = (data[at + 8:at + 24], data[at + 24:at + 40])
    else:
        return
    seen = run.hosts_seen
    for raw in pair:
        host = str(ipaddress.ip_address(raw))
        if host in seen:
            seen[host] += 1
        elif len(seen) < MAX_HOSTS:
            seen[host] = 1


def _timestamp(ancdata: list[tuple[int, int, bytes]]) -> int:
    for level, kind, value in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
            sec, nsec = struct.unpack("qq", value[:16])
            return int(sec) * 1_000_000_000 + int(nsec)
    return time.time_ns()


def _analyse(data: bytes) -> CaptureAnalysis:
    """Analyse the capture from memory (a memfd): a full or read-only TMPDIR must not cost the analysis."""
    fd = os.memfd_create("netbundle-capture", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as fh:
            fh.write(data)
        return analyze_capture(Path(f"/proc/self/fd/{fd}"), "capture.pcapng")
    finally:
        os.close(fd)
