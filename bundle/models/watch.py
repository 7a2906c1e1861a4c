"""The flight recorder's record (`watch.json`): what `netbundle watch` probed and sampled before the bundle was
written, what fired, and how much of the capture ring it kept. The ring's packets are the bundle's
`captures/…watch-ring…` member, analysed like any capture."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from bundle.models._base import Model


class ProbeResult(Model):
    at: datetime
    kind: str = Field(description="connect or dns")
    target: str = Field(description="IP:port for connect, the name for dns")
    ok: bool
    latency_ms: float | None = None
    outcome: str = Field(description="connect: connected, refused, timeout, unreachable, ...; dns: answered, "
                                     "timeout, nxdomain, servfail, ...")


class ProbeTotals(Model):
    kind: str
    target: str
    sent: int = 0
    failed: int = 0
    slow: int = 0
    first_failure: datetime | None = None
    last_failure: datetime | None = None


class CounterReading(Model):
    at: datetime
    deltas: dict[str, int] = Field(description="rises since the previous reading, only the counters that rose")


class SocketCounts(Model):
    at: datetime
    tcp: dict[str, int] = Field(description="TCP sockets per state (ss's names) in the watched netns")
    to_targets: dict[str, dict[str, int]] = Field(default_factory=dict, description="target -> state -> sockets")


class Trigger(Model):
    at: datetime
    kind: str = Field(description="connect_failed, connect_slow, dns_failed, dns_slow, counter_rise, icmp_error, "
                                  "command_failed, exit (--bundle-on-exit)")
    target: str | None = None
    detail: str


class RingStats(Model):
    interfaces: list[str] = Field(default_factory=list)
    filter: str = ""
    seconds: float = Field(description="--ring-seconds: packets older than this are let go")
    bytes_limit: int = Field(description="--ring-bytes: the oldest packets are let go beyond this")
    packets_kept: int = 0
    bytes_kept: int = 0
    packets_seen: int = 0
    packets_evicted: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None
    kernel_received: int | None = Field(default=None, description="PACKET_STATISTICS tp_packets, whole watch")
    kernel_dropped: int | None = Field(default=None, description="PACKET_STATISTICS tp_drops, whole watch: packets "
                                                                 "the ring never saw")
    unavailable: str | None = Field(default=None, description="why there is no ring (no target, no capability)")


class WatchRecord(Model):
    started: datetime
    written: datetime
    vantage: str = Field(description="the vantage probed and captured in")
    every_s: float
    post_trigger_s: float = Field(description="capture kept after the trigger before the ring was frozen")
    trigger: Trigger
    triggers_seen: int = Field(description="triggers since the watch began, this one included (cooldown and "
                                           "--max-bundles hold back the bundles, not the counting)")
    bundle_index: int = Field(ge=1, description="1 for the first bundle this watch wrote")
    totals: list[ProbeTotals] = Field(default_factory=list, description="every probe since the watch began")
    probes: list[ProbeResult] = Field(default_factory=list, description="the most recent probes (bounded)")
    probes_dropped: int = Field(default=0, description="older probe results let go (the totals keep counting)")
    counters: list[CounterReading] = Field(default_factory=list, description="readings where a watched counter "
                                                                             "rose (bounded)")
    sockets: list[SocketCounts] = Field(default_factory=list, description="socket state counts every "
                                                                          "few seconds (bounded)")
    ring: RingStats
    ring_member: str | None = Field(default=None, description="the bundle member holding the ring's analysis "
                                                               "(captures/…/analysis.json)")
