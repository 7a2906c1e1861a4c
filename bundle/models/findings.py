"""Findings: what analysis concludes, with the evidence and the next read-only command."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from bundle.models._base import Model


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


class Evidence(Model):
    member: str
    pointer: str  # a field path inside the member, e.g. mtu_sweeps[0].largest_pass


class Finding(Model):
    id: str
    severity: Severity
    layer: str
    vantage: str
    target: str | None = None
    summary: str
    evidence: list[Evidence]
    next_command: str | None = None


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    INCONCLUSIVE = "inconclusive"
    NOT_COLLECTED = "not collected"


class LayerVerdict(Model):
    layer: str = Field(description="route, transport, dns or service, in that order")
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)
    finding_ids: list[str] = Field(default_factory=list)
    evidence: list[str] = Field(default_factory=list, description="member and field, e.g. vantages/X/route.json lookups[0]")
    noise: bool = Field(default=False, description="after the owner: noise until the owner is explained")


class TargetLadder(Model):
    target: str
    layers: list[LayerVerdict]
    owner: str | None = Field(description="the first failing layer: it owns the incident")


class FindingsReport(Model):
    """findings.json: what analysis concludes from the bundle, written at collect time and recomputed by
    `netbundle analyze`."""

    findings: list[Finding]
    ladders: list[TargetLadder]
    summary: list[str] = Field(description="at most five sentences for the incident channel")
    proof: list[str] = Field(description="the members that prove it (at most three)")
    capture: str | None = Field(default=None, description="the capture to open first")
