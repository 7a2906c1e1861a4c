"""What every renderer shows, gathered once from a verified bundle."""

from __future__ import annotations

from dataclasses import dataclass, field

from bundle.analyze import route_findings
from bundle.archive import Bundle
from bundle.models import Finding, Manifest, NeighborState, RouteLookup, RouteSlice, SliceRun, Vantage

BAD_NEIGHBOR_STATES = {NeighborState.FAILED, NeighborState.INCOMPLETE, NeighborState.STALE}


@dataclass
class VantageView:
    vantage: Vantage
    route: RouteSlice | None
    slices: list[SliceRun]


@dataclass
class View:
    manifest: Manifest
    vantages: list[VantageView]
    findings: list[Finding]
    # target -> vantage id -> lookup: "route get" side by side, host vs pod
    lookups: dict[str, dict[str, RouteLookup]] = field(default_factory=dict)


def build_view(bundle: Bundle) -> View:
    m = bundle.manifest
    vantages = []
    findings: list[Finding] = []
    lookups: dict[str, dict[str, RouteLookup]] = {t.address: {} for t in m.targets}
    for v in m.vantages:
        doc = bundle.route(v.id)
        vantages.append(VantageView(v, doc, [s for s in m.slices if s.vantage == v.id]))
        if doc is not None:
            findings += route_findings(v, doc)
            for lk in doc.lookups:
                lookups.setdefault(lk.target, {})[v.id] = lk
    order = {"critical": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f.severity.value])
    return View(manifest=m, vantages=vantages, findings=findings, lookups=lookups)
