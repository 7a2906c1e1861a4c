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


class PolicyChain(Model):
    """One CNI policy chain of the filter table (Calico's cali-, kube-router's KUBE-NWPLCY-), its counters summed."""

    backend: str = Field(description="iptables-nft or iptables-legacy")
    family: int
    chain: str
    engine: str = Field(description="calico or kube-router, by the chain's prefix")
    rules: int = 0
    packets: int = 0
    bytes: int = 0
    drop_packets: int = Field(default=0, description="packets counted by the chain's DROP and REJECT rules")
    interfaces: list[str] = Field(default_factory=list, description="the interfaces its rules name (-i/-o)")


class PolicyChainWindow(Model):
    """A policy chain at the start and the end of the window."""

    start: PolicyChain
    end: PolicyChain | None = Field(default=None, description="None when the chain was gone at the end")


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
    policy_chains: list[PolicyChainWindow] = Field(default_factory=list, description="the CNI's NetworkPolicy chains "
                                                   "with their counters at the start and the end (iptables-save -c)")
    policy_chains_unreadable: list[str] = Field(default_factory=list, description="tool: why it could not be read")
