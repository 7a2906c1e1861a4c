"""The kernel's own counters of one netns (`nstat -az`: /proc/net/snmp, /proc/net/netstat, /proc/net/snmp6),
read at the start and the end of the collection window and at each sample in between. The kernel counts most
silent drops (reverse-path filter, listen overflows, no route, UDP buffer errors); their deltas over the window
are the evidence that a packet was dropped where no capture looks."""

from __future__ import annotations

from pydantic import Field

from bundle.models._base import Model


class CounterSample(Model):
    at_s: float = Field(description="seconds since the slice started")
    monotonic_ns: int
    values: dict[str, int] = Field(description="the watched counters only (nstat names)")


class CountersSlice(Model):
    sources: list[str] = Field(description="the files read, e.g. /proc/net/snmp")
    unreadable: dict[str, str] = Field(default_factory=dict, description="file -> why it could not be read")
    window_s: float = Field(description="seconds between the first and the last reading")
    start: dict[str, int] = Field(description="every counter at the start, by its nstat name (IpInReceives, "
                                              "TcpExtIPReversePathFilter, Ip6InNoRoutes, ...)")
    end: dict[str, int] = Field(description="every counter at the end")
    delta: dict[str, int] = Field(description="end - start for the counters that changed")
    watched: list[str] = Field(description="the counters sampled in between (silent loss)")
    samples: list[CounterSample]
