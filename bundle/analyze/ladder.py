"""The falsification ladder: per target, one verdict per layer in order — route (ICMP/route) -> transport -> DNS
-> service plane — each with its reasons and evidence; the first failing layer owns the incident, the layers after
it are noise until the owner is explained.

Verdicts come from the findings (a critical one fails the layer, a warning warns) and from positive evidence (a
route lookup that worked, a connect that connected, a name that resolved, a service map that agrees). Special
cases: ICMP fails but TCP connects -> route is inconclusive (ICMP filtered), not failed; a ClusterIP that hangs
while its endpoints answer -> the service plane owns it, the transport failure is its symptom; a slice cut by
missing privileges -> inconclusive, never pass; a layer that fails from one vantage (a pod) but works from another
(the node) -> the failing vantage's own path (its netns, CNI) is named, not the target.
"""

from __future__ import annotations

import ipaddress

from bundle.analyze._common import VantageDocs
from bundle.models import (
    Finding,
    LayerVerdict,
    Manifest,
    Outcome,
    Severity,
    SliceStatus,
    TargetLadder,
    Verdict,
)

LAYERS = ("route", "transport", "dns", "service")
_SLICE_OF = {"route": "route", "transport": "sockets", "dns": "dns", "service": "nat"}


def _address(target: str | None) -> str | None:
    """The address part of a finding's or target's 'IP', 'IP:port' or '[IPv6]:port'."""
    if not target:
        return None
    text = target.strip()
    if text.startswith("["):
        return text[1:text.index("]")] if "]" in text else None
    if text.count(":") == 1:
        text = text.split(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _member(f: Finding) -> str:
    return f"{f.evidence[0].member} {f.evidence[0].pointer}" if f.evidence else f.id


def target_ladders(manifest: Manifest, docs: list[VantageDocs], findings: list[Finding]) -> list[TargetLadder]:
    out = []
    for t in manifest.targets:
        addresses: set[str] = {t.address} if t.address else set()
        if t.name:
            for v in manifest.vantages:
                addresses.update(v.resolved.get(t.name, []))
        names = {t.name} if t.name else set()
        out.append(_ladder(manifest, t.spec, addresses, names, t.port, docs, findings))
    # every name asked with --name (or from a Service) gets its own row: what a client resolving it meets
    asked = [r.name for d in docs if d.dns is not None for r in d.dns.names]
    for name in dict.fromkeys(asked):
        if any(t.name == name for t in manifest.targets):
            continue
        resolved = {a for d in docs if d.dns is not None for r in d.dns.names if r.name == name
                    for a in r.resolution.addresses}
        out.append(_ladder(manifest, name, resolved, {name}, None, docs, findings))
    return out


def _ladder(manifest: Manifest, spec: str, addresses: set[str], names: set[str], port: int | None,
            docs: list[VantageDocs], findings: list[Finding]) -> TargetLadder:
    mine = [f for f in findings if _address(f.target) in addresses or (f.target and f.target in names)]
    general = [f for f in findings if not f.target]
    verdicts: dict[str, LayerVerdict] = {}
    for layer in LAYERS:
        verdicts[layer] = _layer(manifest, layer, addresses, names, port, docs,
                                 [f for f in mine if f.layer == layer], [f for f in general if f.layer == layer])
    owner = next((layer for layer in LAYERS if verdicts[layer].verdict is Verdict.FAIL), None)
    if owner is None:  # nothing fails: the first layer that warns is the one to look at
        owner = next((layer for layer in LAYERS if verdicts[layer].verdict is Verdict.WARN
                      and not verdicts[layer].finding_ids[0].startswith("icmp.")), None)
    # a ClusterIP that hangs while the service plane fails: the service plane owns it
    if owner == "transport" and verdicts["service"].verdict is Verdict.FAIL:
        verdicts["transport"].reasons.append("a symptom: the service plane translates this address wrongly")
        owner = "service"
    route = verdicts["route"]
    if route.verdict is Verdict.WARN and verdicts["transport"].verdict is Verdict.PASS and \
            all(r.startswith("icmp.no_reply") for r in route.finding_ids):
        route.verdict = Verdict.INCONCLUSIVE
        route.reasons.append("ICMP gets no reply but TCP connects: ICMP is filtered, the route works")
    if owner in ("route", "transport"):
        # a vantage vouches for the path only if nothing fails there and it is not the target itself
        doubtful = {f.vantage for f in mine if f.severity is Severity.CRITICAL} | {
            d.vantage for d in docs if d.route is not None and any(a.address in addresses for a in d.route.addresses)}
        _split_paths(verdicts[owner], [f for f in mine if f.layer == owner], spec,
                     _positive(owner, addresses, names, port, docs)[0], doubtful)
    if owner is not None:
        seen = False
        for layer in LAYERS:
            if seen and verdicts[layer].verdict in (Verdict.FAIL, Verdict.WARN):
                verdicts[layer].noise = True
            seen = seen or layer == owner
    return TargetLadder(target=spec, layers=[verdicts[layer] for layer in LAYERS], owner=owner)


def _split_paths(verdict: LayerVerdict, failing: list[Finding], spec: str, proof: list[str],
                 doubtful: set[str]) -> None:
    """Fails from one vantage, works from another (the host path fine, the pod path not): the failing vantage's
    own path owns it — its netns, routes, CNI attachment — not the target."""
    bad = sorted({f.vantage for f in failing if f.severity is Severity.CRITICAL})
    good = sorted({p.split("/")[1] for p in proof if p.startswith("vantages/")} - set(bad) - doubtful)
    if bad and good:
        verdict.reasons.append(f"fails from {', '.join(bad)} but works from {', '.join(good)}: the path from "
                               f"{', '.join(bad)} (its netns, routes, CNI attachment) owns it, not {spec} itself")


def _layer(manifest: Manifest, layer: str, addresses: set[str], names: set[str], port: int | None,
           docs: list[VantageDocs], own: list[Finding], general: list[Finding]) -> LayerVerdict:
    v = LayerVerdict(layer=layer, verdict=Verdict.NOT_COLLECTED)
    # general (target-less) findings decide a layer only where they are the service plane's or DNS's own
    counted = own + (general if layer in ("service", "dns") else [])
    critical = [f for f in counted if f.severity is Severity.CRITICAL]
    warnings = [f for f in counted if f.severity is Severity.WARNING]
    for f in critical or warnings:
        v.reasons.append(f"{f.id}: {f.summary}")
        v.finding_ids.append(f.id)
        v.evidence.append(_member(f))
    if critical:
        v.verdict = Verdict.FAIL
        return v
    positive, collected = _positive(layer, addresses, names, port, docs)
    v.evidence += positive
    if warnings:
        v.verdict = Verdict.WARN
    elif positive:
        v.verdict = Verdict.PASS
        v.reasons.append({"route": "a route to it exists", "transport": "a TCP connect to it succeeded",
                          "dns": "its name resolves", "service": "its service map agrees"}[layer])
    elif collected:
        v.verdict = Verdict.INCONCLUSIVE
        v.reasons.append("collected, but nothing here proves this layer for this target")
    limited = [r for r in manifest.slices if r.slice == _SLICE_OF[layer] and r.reason
               and ("needs CAP" in r.reason or "not permitted" in r.reason or "not_permitted" in r.reason)]
    if limited and v.verdict is Verdict.PASS:
        v.verdict = Verdict.INCONCLUSIVE
        v.reasons.append(f"privilege-limited in {limited[0].vantage}: {limited[0].reason}")
    if v.verdict is Verdict.NOT_COLLECTED:
        skipped = [r for r in manifest.slices if r.slice == _SLICE_OF[layer] and r.status is not SliceStatus.COMPLETE]
        v.reasons.append(skipped[0].reason or skipped[0].status.value if skipped else
                         {"route": "no route slice", "transport": "no connect probe (no port, or --passive)",
                          "dns": "no name to resolve for this target", "service": "not a Service frontend here"}[layer])
    return v


def _positive(layer: str, addresses: set[str], names: set[str], port: int | None,
              docs: list[VantageDocs]) -> tuple[list[str], bool]:
    """(evidence that the layer works for the target, whether the layer was collected at all)."""
    proof: list[str] = []
    collected = False
    for d in docs:
        base = f"vantages/{d.vantage}"
        if layer == "route" and d.route is not None:
            collected = True
            proof += [f"{base}/route.json lookups[{i}]" for i, lk in enumerate(d.route.lookups)
                      if lk.ok and lk.target in addresses and lk.source is None and lk.iif is None]
        elif layer == "transport" and d.sockets is not None and port is not None:
            for i, p in enumerate(d.sockets.probes):
                if p.address in addresses and p.port == port:
                    collected = True
                    if p.outcome.value == "connected":
                        proof.append(f"{base}/sockets.json probes[{i}]")
        elif layer == "dns" and d.dns is not None and names:
            for i, r in enumerate(d.dns.names):
                if r.name in names:
                    collected = True
                    if r.resolution.outcome is Outcome.ANSWERED:
                        proof.append(f"{base}/dns.json names[{i}]")
        elif layer == "service" and d.nat is not None:
            for i, s in enumerate(d.nat.services):
                if s.address in addresses and (port is None or s.port == port):
                    collected = True
                    if s.endpoints and not s.reject:
                        proof.append(f"{base}/nat.json services[{i}]")
    return proof, collected
