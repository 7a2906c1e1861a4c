"""Findings: what analysis concludes, with the evidence and the next read-only command."""

from __future__ import annotations

from enum import StrEnum

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
