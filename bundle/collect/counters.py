"""Counters slice: the kernel's SNMP and extended counters of the netns (what `nstat -az` prints), at the start
of the window (before any probe), every interval while the other slices run, and at the end. Reading them
changes nothing; a drop the kernel counts is evidence even where no capture looks."""

from __future__ import annotations

import time
from pathlib import Path

from bundle.collect import policychains
from bundle.collect.base import Artifact, Collector, SliceContext, SliceResult
from bundle.models import CounterSample, CountersSlice, MediaType, SliceStatus
from bundle.models.counters import PolicyChainWindow

# /proc/net is the reading process's netns: the agent runs inside the vantage's.
SOURCES = ("/proc/net/snmp", "/proc/net/netstat", "/proc/net/snmp6")
# Counters that mean a packet was lost without a word (or that time was lost waiting for one): sampled through
# the window, and the ones the analysis reads.
WATCHED = (
    "TcpExtIPReversePathFilter", "TcpExtListenOverflows", "TcpExtListenDrops", "IpInNoRoutes", "IpOutNoRoutes",
    "Ip6InNoRoutes", "Ip6OutNoRoutes", "IpInAddrErrors", "IpInDiscards", "IpOutDiscards", "UdpRcvbufErrors",
    "UdpInErrors", "UdpNoPorts", "Udp6RcvbufErrors", "Udp6InErrors", "Udp6NoPorts", "TcpExtTCPTimeouts",
    "TcpRetransSegs", "TcpExtTCPSynRetrans", "TcpAttemptFails", "TcpOutRsts", "IcmpOutDestUnreachs",
    "IcmpInDestUnreachs", "Icmp6OutDestUnreachs", "Icmp6InDestUnreachs", "TcpExtTCPBacklogDrop",
    "TcpExtPAWSEstab", "TcpExtTCPACKSkippedSeq", "TcpExtTCPRcvQDrop", "IpExtInNoRoutes", "IpReasmFails",
    "IpFragFails", "Ip6FragFails", "Ip6InTooBigErrors", "Icmp6InPktTooBigs", "IcmpInErrors",
)
DEFAULT_INTERVAL_S = 1.0


def parse(text: str) -> dict[str, int]:
    """One /proc/net file as nstat names it. snmp and netstat pair a header line with a value line, each
    starting with its group ("Tcp:", "TcpExt:"), and nstat joins group and field (TcpExtListenDrops); snmp6
    lists "Ip6InReceives   12" one a line, already named. A value that is not a whole number is skipped."""
    out: dict[str, int] = {}
    header: tuple[str, list[str]] | None = None
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if not parts[0].endswith(":"):  # snmp6: "Ip6InReceives  12"
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
            continue
        group = parts[0][:-1]
        if header is not None and header[0] == group:
            for name, value in zip(header[1], parts[1:], strict=False):
                if value.lstrip("-").isdigit():
                    out[group + name] = int(value)
            header = None
        else:
            header = (group, parts[1:])
    return out


def read_all(sources: tuple[str, ...] = SOURCES) -> tuple[dict[str, int], dict[str, str]]:
    """(every counter, file -> why it could not be read)."""
    values: dict[str, int] = {}
    unreadable: dict[str, str] = {}
    for path in sources:
        try:
            values.update(parse(Path(path).read_text()))
        except OSError as exc:
            unreadable[path] = exc.strerror or str(exc)
    return values, unreadable


class CountersCollector(Collector):
    name = "counters"
    description = "kernel SNMP/extended counters (nstat -az) at the start, through and at the end of the window"
    spans_window = True

    def collect(self, ctx: SliceContext) -> SliceResult:
        started = time.monotonic()
        interval = max(0.2, ctx.options.counter_interval or DEFAULT_INTERVAL_S)
        start, unreadable = read_all()
        if not start:
            return SliceResult(status=SliceStatus.FAILED, reason="no counter file could be read: " + "; ".join(
                f"{p}: {why}" for p, why in unreadable.items()))
        samples = [_sample(start, started)]
        chains_start, chain_problems = policychains.read()
        ctx.probe_gate()  # the first reading holds none of the probes' packets
        wake = started
        if ctx.alone:  # nothing to span: one interval between the readings
            time.sleep(max(0.0, min(interval, ctx.remaining() - 0.5)))
        while not ctx.alone and not ctx.peers_done() and time.monotonic() < ctx.deadline - 0.5:
            wake += interval
            while time.monotonic() < min(wake, ctx.deadline - 0.5) and not ctx.peers_done():
                time.sleep(0.05)
            samples.append(_sample(read_all()[0], started))
        end, more = read_all()
        unreadable.update(more)
        samples.append(_sample(end, started))
        chains_end, more_problems = policychains.read() if chains_start else ([], [])
        at_end = {(c.backend, c.family, c.chain): c for c in chains_end}
        doc = CountersSlice(
            sources=[p for p in SOURCES if p not in unreadable], unreadable=unreadable,
            window_s=round(time.monotonic() - started, 3), start=start, end=end,
            delta={k: v - start[k] for k, v in end.items() if k in start and v != start[k]},
            watched=[w for w in WATCHED if w in start], samples=samples,
            policy_chains=[PolicyChainWindow(start=c, end=at_end.get((c.backend, c.family, c.chain)))
                           for c in chains_start],
            policy_chains_unreadable=list(dict.fromkeys(chain_problems + more_problems)))
        status = SliceStatus.PARTIAL if unreadable else SliceStatus.COMPLETE
        return SliceResult(status=status, reason="; ".join(f"{p}: {w}" for p, w in unreadable.items()) or None,
                           artifacts=[Artifact.document("counters.json", doc, MediaType.COUNTERS,
                                                        "/proc/net/snmp, /proc/net/netstat, /proc/net/snmp6",
                                                        started)])


def _sample(values: dict[str, int], started: float) -> CounterSample:
    now = time.monotonic()
    return CounterSample(at_s=round(now - started, 3), monotonic_ns=time.monotonic_ns(),
                         values={w: values[w] for w in WATCHED if w in values})
