"""Analysis of a capture: flows and their handshakes, DNS transactions, ICMP errors, and what could not be read."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from bundle.models._base import Model


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
    quoted: str | None = Field(default=None, description="the flow the error is about: proto src:port > dst:port")


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
