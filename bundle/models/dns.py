"""The DNS slice: resolv.conf as the vantage sees it, the query plan a glibc client follows, what came back."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from bundle.models._base import Model, Unavailable


class ResolvOptions(Model):
    ndots: int = 1
    timeout: int = 5
    attempts: int = 2
    rotate: bool = False
    single_request: bool = False
    single_request_reopen: bool = False
    edns0: bool = False
    use_vc: bool = False
    trust_ad: bool = False
    no_aaaa: bool = False
    no_tld_query: bool = False


class ResolvConf(Model):
    """Parsed as glibc's res_init parses it."""

    path: str
    nameservers: list[str] = Field(description="at most 3 are used (MAXNS); glibc's default is 127.0.0.1")
    ignored_nameservers: list[str] = []
    search: list[str]
    options: ResolvOptions
    unknown_options: list[str] = []
    defaulted_nameserver: bool = Field(default=False, description="no nameserver line: glibc uses 127.0.0.1")


class Answer(Model):
    name: str
    type: str
    ttl: int
    data: str


class DnsQuery(Model):
    qname: str = Field(description="without the trailing dot")
    qtype: str
    server: str
    rcode: str | None = Field(default=None, description="NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ...; None on timeout")
    answers: list[Answer] = []
    latency_ms: float | None = None
    timeout: bool = False
    truncated_retried_tcp: bool = False
    tries: int = 1


class Outcome(StrEnum):
    ANSWERED = "answered"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    SERVFAIL = "servfail"
    REFUSED = "refused"
    ERROR = "error"
    CUT = "cut"


class Candidate(Model):
    name: str = Field(description="the name as queried, without trailing dot")
    qtypes: list[str]


class Resolution(Model):
    """One name through glibc's search logic, sent for real."""

    name: str
    candidates: list[Candidate] = Field(description="the full plan glibc would follow if every step failed")
    expected_queries: int = Field(description="queries in the full plan: candidates x query types")
    queries: list[DnsQuery] = Field(description="what was really sent, in order, stopping where glibc stops")
    outcome: Outcome
    answered_by: str | None = Field(default=None, description="the candidate that answered")
    addresses: list[str] = []
    total_ms: float


class DirectCheck(Model):
    """The fully-qualified form asked directly (no search), optionally of another server."""

    fqdn: str
    server: str
    queries: list[DnsQuery]
    outcome: Outcome
    addresses: list[str] = []
    total_ms: float


class NameReport(Model):
    name: str
    resolution: Resolution
    fqdn: DirectCheck | None = None
    alternate: DirectCheck | None = Field(default=None, description="the FQDN asked of --dns-server")


class DnsSlice(Model):
    resolv_conf: ResolvConf | None
    resolv_conf_unavailable: Unavailable | None = None
    query_families: list[str] = Field(description="A and/or AAAA: what getaddrinfo(AI_ADDRCONFIG) asks in this netns")
    nodelocal: str | None = Field(default=None, description="why a NodeLocal DNSCache is suspected, if it is")
    names: list[NameReport]
    active_probes: bool
