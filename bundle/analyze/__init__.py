"""Analysis: pure functions from a bundle's models to findings. Nothing here prints."""

from bundle.analyze.capture import capture_findings
from bundle.analyze.dns import dns_findings
from bundle.analyze.nat import nat_findings
from bundle.analyze.route import neighbor_findings, route_findings
from bundle.analyze.transport import VantageEvidence, transport_findings

__all__ = ["VantageEvidence", "capture_findings", "dns_findings", "nat_findings", "neighbor_findings",
           "route_findings", "transport_findings"]
