"""Analysis: pure functions from a bundle's models to findings. Nothing here prints."""

from bundle.analyze.route import route_findings

__all__ = ["route_findings"]
