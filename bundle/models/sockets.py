"""The sockets slice: every TCP/UDP socket of one netns, owners, trends and connect probes."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from bundle.models._base import Model, Unavailable


class Owner(Model):
    pid: int
    command: str
    fd: int


class TcpInfo(Model):
    rtt_us: int
    rttvar_us: int
    retransmits: int
    total_retrans: int
    snd_cwnd: int
    snd_mss: int
    rcv_mss: int
    pmtu: int
    unacked: int
    lost: int


class Socket(Model):
    protocol: str = Field(description="tcp or udp")
    family: int
    state: str = Field(description="as ss names it: ESTAB, SYN-SENT, LISTEN, UNCONN, TIME-WAIT, ...")
    local: str
    lport: int
    remote: str
    rport: int
    recv_q: int
    send_q: int
    timer: str
    timer_expires_ms: int
    retransmits: int
    uid: int
    inode: int
    cookie: int
    interface: str | None = None
    owners: list[Owner] = []
    owner_unknown: Unavailable | None = Field(
        default=None, description="why owners is empty: not_permitted (hidden), not_applicable (no inode), ..."
    )
    tcp: TcpInfo | None = None


class BindScope(StrEnum):
    LOOPBACK = "loopback"  # reachable from this netns only
    WILDCARD = "wildcard"
    SPECIFIC = "specific"


class Listener(Model):
    protocol: str
    local: str
    lport: int
    scope: BindScope
    recv_q: int = Field(description="for LISTEN: current accept queue")
    send_q: int = Field(description="for LISTEN: the backlog")
    owners: list[Owner] = []
    owner_unknown: Unavailable | None = None


class StateSample(Model):
    at_s: float = Field(description="seconds since the slice started")
    tcp: dict[str, int]
    udp: dict[str, int]
    retransmits: int = Field(description="sum of tcp_info total_retrans over current TCP sockets")
    to_targets: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="per target 'IP:PORT' (or IP), TCP state counts of sockets to it"
    )


class ConnectOutcome(StrEnum):
    CONNECTED = "connected"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    PROHIBITED = "prohibited"
    ERROR = "error"


class ConnectAttempt(Model):
    outcome: ConnectOutcome
    latency_ms: float
    errno_name: str | None = None
    detail: str | None = None


class ConnectProbe(Model):
    target: str
    address: str
    port: int
    outcome: ConnectOutcome = Field(description="the best outcome over the attempts")
    attempts: list[ConnectAttempt]
    timeout_s: float


class OwnerScan(Model):
    """How far the /proc/*/fd walk could see: hidden owners must never read as 'no process'."""

    processes: int
    denied: int
    uid: int
    complete: bool


class SocketTable(Model):
    """Every kept row of one vantage, in its own member so the report need not parse 50,000 rows."""

    sockets: list[Socket]


class SocketsSlice(Model):
    sockets: list[Socket] = Field(
        description="the rows the analysis and the report read: rows of the targets first, then rows in states "
                    "that point at a fault (SYN-SENT, SYN-RECV, CLOSE-WAIT, LAST-ACK, FIN-WAIT-1, CLOSING), "
                    "at most focus_limit; every kept row is in the member named by table")
    focus_limit: int | None = Field(
        default=None, description="the most rows this document keeps (the table keeps row_limit); null in a 1.0 "
                                  "bundle, whose sockets holds every kept row")
    table: str | None = Field(default=None, description="bundle member holding every kept row "
                                                        "(socket-table.json); null when no row was kept, or in 1.0")
    total: int
    kept: int = Field(description="rows in the table")
    dropped: int = Field(description="rows left out of the table past the row limit; counts stay exact")
    row_limit: int
    counts: dict[str, int] = Field(description="exact '<proto> <state>' counts over all sockets")
    owners_hidden: int | None = Field(
        default=None, description="rows of the table whose owner could not be read (not_permitted); null in 1.0")
    close_wait_owners: dict[str, int] | None = Field(
        default=None, description="command -> CLOSE-WAIT sockets it holds, over the rows of the table; null in 1.0")
    listeners: list[Listener]
    samples: list[StateSample]
    probes: list[ConnectProbe] = []
    owner_scan: OwnerScan
    active_probes: bool
