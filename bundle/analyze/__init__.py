"""Analysis: pure functions from a bundle's models to findings. Nothing here prints."""

from bundle.analyze.route import route_findings
from bundle.analyze.transport import VantageEvidence, transport_findings

__all__ = ["VantageEvidence", "route_findings", "transport_findings"]
