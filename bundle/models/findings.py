"""Findings: what analysis concludes, with the evidence and the next read-only command; the ladder per target
(decided for the client vantage, shown per vantage) and the explanations that tie symptoms to their causes.

Every value code needs again is a field (the target a finding is about, its layer, its vantage, which finding
explains which): nothing is parsed back from the prose of a summary."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from bundle.models._base import Model
from bundle.models.policy import FlowDecision


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


class Layer(StrEnum):
    """The ladder's layers, in the order they are asked."""

    ROUTE = "route"
    TRANSPORT = "transport"
    DNS = "dns"
    SERVICE = "service"


class Role(StrEnum):
    """What a vantage is to one target's flow."""

    CLIENT = "client"    # the one whose traffic fails: the verdict is decided for it
    PATH = "path"        # forwards the client's traffic toward the target (a node, a router)
    SERVER = "server"    # holds the target's address (or a ready endpoint's)
    CONTEXT = "context"  # none of these: its failures are its own, never the client's owner


class Evidence(Model):
    member: str
    pointer: str  # a field path inside the member, e.g. mtu_sweeps[0].largest_pass


class FindingTarget(Model):
    """What a finding is about, as fields: an address (and port) it saw, a name it asked, or both."""

    address: str | None = None
    port: int | None = Field(default=None, ge=0, le=65535)
    name: str | None = None


class Finding(Model):
    id: str
    severity: Severity
    layer: Layer
    vantage: str
    target: FindingTarget | None = Field(default=None, description="null: about the vantage as a whole")
    summary: str
    evidence: list[Evidence]
    next_command: str | None = None
    count: int = Field(default=1, ge=1, description="repeated symptoms of one kind, vantage and target")


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    INCONCLUSIVE = "inconclusive"
    NOT_APPLICABLE = "not applicable"  # collected, but the layer does not apply (no name; not a Service)
    NOT_COLLECTED = "not collected"


class Explanation(Model):
    """One finding (the cause) explains others (its symptoms), by a named rule."""

    rule: str = Field(description="the rule's name, listed in docs/findings.md")
    cause: int = Field(ge=0, description="index into the report's findings")
    effects: list[int] = Field(description="indexes into the report's findings")
    because: str = Field(description="the evidence that ties them, in a sentence")


class LayerVerdict(Model):
    layer: Layer = Field(description="route, transport, dns or service, in that order")
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)
    findings: list[int] = Field(default_factory=list, description="indexes into the report's findings")
    evidence: list[str] = Field(default_factory=list, description="member and field, e.g. vantages/X/route.json lookups[0]")
    explained_by: list[int] = Field(default_factory=list,
                                    description="findings (indexes) that explain this layer's failure")
    noise: bool = Field(default=False, description="after the owner: noise until the owner is explained")


class VantageLadder(Model):
    """One vantage's own view of a target, shown beside the client's (host vs pod parity)."""

    vantage: str
    role: Role
    layers: list[LayerVerdict]


class TargetLadder(Model):
    target: str
    client: str | None = Field(default=None, description="the vantage the verdict is decided for")
    layers: list[LayerVerdict] = Field(description="the client's ladder, with causes from its path")
    owner: Layer | None = Field(description="the layer of the cause of the client's failure; null: nothing fails "
                                            "or nothing was proven (see proven)")
    cause: int | None = Field(default=None, description="the finding (index) that owns it")
    proven: bool = Field(default=True, description="false: nothing was collected that could prove any layer")
    vantages: list[VantageLadder] = Field(default_factory=list)


class FindingsReport(Model):
    """findings.json: what analysis concludes from the bundle, written at collect time and recomputed by
    `netbundle analyze`."""

    findings: list[Finding]
    explanations: list[Explanation] = Field(default_factory=list)
    ladders: list[TargetLadder]
    summary: list[str] = Field(description="at most five sentences for the incident channel")
    proof: list[str] = Field(description="the members that prove it (at most three)")
    capture: str | None = Field(default=None, description="the capture to open first")
    policy: list[FlowDecision] = Field(default_factory=list, description="the NetworkPolicies' verdict on each of the "
                                       "client pod's flows (Service endpoints, cluster DNS), when the API was read")
