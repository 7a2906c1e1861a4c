"""Analysis of a capture: flows and their handshakes, DNS transactions, ICMP errors, and what could not be read."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from bundle.models._base import Model, Unavailable


class Handshake(StrEnum):
    COMPLETED = "completed"
    SYN_RST = "syn_rst"  # answered with RST: nothing listens
    SYN_UNANSWERED = "syn_unanswered"
    SYN_ACK_ONLY = "syn_ack_only"  # the client never finished
    MID_STREAM = "mid_stream"  # the capture began after the handshake


class TcpFlow(Model):
    client: str = Field(description="IP:port of the side that sent the first SYN (or the first packet seen)")
    server: str
    first_ns: int
    last_ns: int
    packets: int
    bytes: int = Field(description="TCP payload bytes, from the IP lengths (true sizes even under a snaplen)")
    handshake: Handshake
    syn_sent: int
    syn_retransmits: int
    retransmits: int = Field(description="data segments sent again with the same sequence number and length")
    resets_from_client: int
    resets_from_server: int
    zero_windows: int
    mss: list[int] = []
    blackhole: bool = Field(description="full-size segments retransmitted, never acknowledged, while small ones are")
    largest_unacked_retransmitted: int | None = None


class DnsTransaction(Model):
    client: str
    server: str
    id: int
    qname: str
    qtype: str
    query_ns: int
    rcode: str | None = None
    latency_ms: float | None = None
    answers: int = 0


class IcmpEvent(Model):
    ts_ns: int
    source: str
    type: int
    code: int
    description: str
    mtu: int | None = None
    quoted: str | None = Field(default=None, description="the flow the error is about: 'proto src:port > dst:port', "
                                                         "or for an echo 'icmp src > dst id N seq M'")


class CaptureEvent(Model):
    """A moment worth a dot on the timeline."""

    ts_ns: int
    kind: str = Field(description="syn, synack, rst, retransmit or icmp")
    flow: str


class CaptureProblem(Model):
    offset: int
    message: str


class CaptureAnalysis(Model):
    file: str
    format: str
    linktypes: dict[str, int]
    packets: int
    ip_packets: int
    non_ip: int
    unsupported_linktype: int
    malformed: int
    malformed_examples: list[str] = []
    problems: list[CaptureProblem] = []
    complete: bool = Field(description="the file was read to its end without a problem")
    flows: list[TcpFlow]
    flows_total: int
    dns: list[DnsTransaction]
    dns_unanswered: int
    icmp: list[IcmpEvent]
    events: list[CaptureEvent] = Field(default_factory=list, description="at most 2,000, the first ones")


class StopReason(StrEnum):
    PACKETS = "packet_limit"
    BYTES = "byte_limit"
    DURATION = "time_limit"
    SLICES_DONE = "other_slices_done"
    DEADLINE = "deadline"
    INTERFACE_GONE = "interface_gone"  # the interface went down or away (a pod deleted mid-collect)


class CaptureLimits(Model):
    packets: int
    bytes: int
    seconds: float
    snaplen: int


class CaptureRun(Model):
    """One bounded capture in one vantage: where, with which filter and limits, and what stopped it."""

    interface: str | None = Field(description="the first interface captured on (see interfaces)")
    interfaces: list[str] = Field(default_factory=list, description="every interface captured on: each egress "
                                  "interface of the targets (and nameservers), one pcapng interface each (1.2)")
    hosts_seen: dict[str, int] = Field(default_factory=dict, description="packets captured per address (source "
                                       "or destination), at most 256 addresses: a target absent here was never "
                                       "seen (1.2)")
    linktype: int | None = None
    filter: str
    filter_source: str = Field(description="default (built from the targets) or operator (--capture-filter)")
    limits: CaptureLimits
    stopped_by: StopReason | None = None
    interface_error: str | None = Field(default=None, description="with interface_gone: the error the socket gave")
    started: datetime | None = None
    finished: datetime | None = None
    monotonic_start_ns: int | None = None
    monotonic_end_ns: int | None = None
    packets_written: int = 0
    bytes_written: int = Field(default=0, description="size of capture.pcapng")
    kernel_received: int | None = Field(default=None, description="PACKET_STATISTICS tp_packets")
    kernel_dropped: int | None = Field(default=None, description="PACKET_STATISTICS tp_drops")
    analysis: CaptureAnalysis | None = None
    unavailable: Unavailable | None = None
