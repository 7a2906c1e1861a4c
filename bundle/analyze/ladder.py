"""The falsification ladder: per target, one verdict per layer in order — route (ICMP/route) -> transport -> DNS
-> service plane — decided for the client vantage, with each other vantage's own ladder beside it.

The client's ladder reads the client's own findings and probes, the server's facts about the target (nothing
listens) and the service plane of the client and its path (where the translation happens). A failure seen only
from another vantage is that vantage's, shown in its own ladder, never the client's owner. The owner is the layer
of the cause that explains the client's first failing layer (explain.py), or that layer itself when nothing
explains it. Nothing failing, a warning alone never owns when the client's own probes pass; nothing collected
that could prove a layer is "nothing proven", never "all clear".
"""

from __future__ import annotations

from bundle.analyze._common import VantageDocs
from bundle.analyze.explain import Case, explanations
from bundle.analyze.roles import Flow, frontends, place
from bundle.models import (
    Explanation,
    Finding,
    Layer,
    LayerVerdict,
    Manifest,
    Outcome,
    Role,
    Severity,
    SliceStatus,
    TargetLadder,
    VantageLadder,
    Verdict,
)

LAYERS = tuple(Layer)
_SLICE_OF = {Layer.ROUTE: "route", Layer.TRANSPORT: "sockets", Layer.DNS: "dns", Layer.SERVICE: "nat"}
SERVER_FACTS = frozenset({"transport.no_listener", "transport.loopback_only"})


def flows(manifest: Manifest, client: str | None, docs: list[VantageDocs]) -> list[Flow]:
    """One flow per target (and per name asked with --name that is no target): what the client dials."""
    translated = frontends(docs)
    resolved = {v.id: v.resolved for v in manifest.vantages}
    out = []
    for t in manifest.targets:
        addresses: set[str] = {t.address} if t.address else set()
        if t.name:
            mine = resolved.get(client or "", {}).get(t.name)
            addresses.update(mine if mine is not None else
                             [a for answers in resolved.values() for a in answers.get(t.name, [])])
        out.append(place(t.spec, client, addresses, {t.name} if t.name else set(), t.port, docs, translated))
    asked = [r.name for d in docs if d.dns is not None for r in d.dns.names]
    for name in dict.fromkeys(asked):
        if any(t.name == name for t in manifest.targets):
            continue
        answers = {a for d in docs if d.dns is not None and (d.vantage == client or client is None)
                   for r in d.dns.names if r.name == name for a in r.resolution.addresses}
        out.append(place(name, client, answers, {name}, None, docs, translated))
    return out


def _about(f: Finding, flow: Flow) -> bool:
    if f.target is None:
        return False
    if f.target.address is not None:
        return f.target.address in flow.addresses and (flow.port is None or f.target.port in (None, flow.port))
    return f.target.name is not None and f.target.name in flow.names


def target_ladders(manifest: Manifest, docs: list[VantageDocs], findings: list[Finding],
                   placed: list[Flow]) -> tuple[list[TargetLadder], list[Explanation]]:
    ladders: list[TargetLadder] = []
    merged: dict[tuple[str, int], Explanation] = {}
    by_id = {d.vantage: d for d in docs}
    for flow in placed:
        found = explanations(Case(flow, findings, by_id))
        for e in found:
            key = (e.rule, e.cause)
            if key in merged:
                merged[key].effects = sorted(set(merged[key].effects) | set(e.effects))
            else:
                merged[key] = e.model_copy(deep=True)
        ladders.append(_ladder(manifest, flow, docs, findings, found))
    return ladders, list(merged.values())


def _ladder(manifest: Manifest, flow: Flow, docs: list[VantageDocs], findings: list[Finding],
            found: list[Explanation]) -> TargetLadder:
    upstream = flow.upstream()
    client_doc = next((d for d in docs if d.vantage == flow.client), None)
    counted: dict[Layer, list[int]] = {layer: [] for layer in LAYERS}
    for i, f in enumerate(findings):
        own = f.vantage == flow.client and (_about(f, flow) or (f.target is None and f.layer is Layer.DNS))
        server_fact = f.id in SERVER_FACTS and f.vantage in flow.servers and _about(f, flow)
        # the client's own sweep toward the endpoint a frontend is translated to crosses the DNAT-ed path
        behind = f.id == "mtu.blackhole" and f.vantage == flow.client and f.target is not None \
            and f.target.address in flow.endpoints
        translated = f.layer is Layer.SERVICE and f.vantage in upstream and (f.target is None or _about(f, flow))
        if own or server_fact or translated or behind:
            counted[f.layer].append(i)
    mine = [client_doc] if client_doc else []
    plane = [d for d in docs if d.vantage in upstream]  # the translation happens on the client or its path
    verdicts = {layer: _layer(manifest, layer, flow, plane if layer is Layer.SERVICE else mine, findings,
                              counted[layer], flow.client) for layer in LAYERS}
    _icmp_filtered(verdicts, findings)
    _node_wide_while_working(verdicts, findings, flow)
    cause_of: dict[int, Explanation] = {}
    for x in found:  # the rules' order is their precedence: the first cause found for a symptom keeps it
        for e in x.effects:
            cause_of.setdefault(e, x)
    owner, cause = _owner(verdicts, findings, cause_of, flow, client_doc)
    if owner is not None and cause is not None:
        for layer in LAYERS:
            lv = verdicts[layer]
            explained = [cause_of[i].cause for i in lv.findings if i in cause_of]
            if layer is not owner and lv.verdict in (Verdict.FAIL, Verdict.WARN) and explained:
                lv.explained_by = sorted(set(explained))
                c = findings[explained[0]]
                lv.reasons.append(f"a symptom: explained by {c.id} in {c.vantage} ({cause_of[lv.findings[0]].rule})"
                                  if lv.findings and lv.findings[0] in cause_of else
                                  f"a symptom: explained by {c.id} in {c.vantage}")
        seen = False
        for layer in LAYERS:
            if seen and verdicts[layer].verdict in (Verdict.FAIL, Verdict.WARN) and not verdicts[layer].explained_by:
                verdicts[layer].noise = True
            seen = seen or layer is owner
    _place_loss(verdicts[Layer.TRANSPORT], flow, client_doc)
    vantages = [_vantage_ladder(manifest, flow, d, findings) for d in docs]
    if owner is not None and cause is not None and findings[cause].vantage == flow.client:
        _split_paths(verdicts[owner], flow, vantages)
    proven = any(lv.verdict in (Verdict.PASS, Verdict.FAIL, Verdict.WARN) for lv in verdicts.values())
    return TargetLadder(target=flow.spec, client=flow.client, layers=[verdicts[layer] for layer in LAYERS],
                        owner=owner, cause=cause, proven=proven, vantages=vantages)


def _place_loss(transport: LayerVerdict, flow: Flow, client_doc: VantageDocs | None) -> None:
    """A failing handshake placed on the path: the client's TCP walk to the target's port stops after the last
    hop that answered, while (when it did) its ICMP walk reached the target."""
    if transport.verdict is not Verdict.FAIL or client_doc is None or client_doc.route is None:
        return
    for i, p in enumerate(client_doc.route.paths):
        if p.protocol != "tcp" or p.port != flow.port or p.target not in flow.addresses or p.reached:
            continue
        last = p.last_responder()
        icmp = next((q for q in client_doc.route.paths if q.protocol == "icmp" and q.target == p.target), None)
        where = (f"after hop {last.ttl}, {last.responder}" if last is not None and last.kind == "time exceeded"
                 else "at the first hop (no hop answered)" if last is None else f"at hop {last.ttl}, {last.responder} "
                                                                   f"({last.kind}{', ' + last.detail if last.detail else ''})")
        also = (f"; ICMP reaches {p.target} in {len(icmp.hops)} hops: something past that hop drops TCP {p.port}"
                if icmp is not None and icmp.reached and last is not None and last.kind == "time exceeded" else "")
        transport.reasons.insert(0, f"the SYN dies {where}{also}")
        transport.evidence.append(f"vantages/{client_doc.vantage}/route.json paths[{i}]")


def _owner(verdicts: dict[Layer, LayerVerdict], findings: list[Finding], cause_of: dict[int, Explanation],
           flow: Flow, client_doc: VantageDocs | None) -> tuple[Layer | None, int | None]:
    """(owner layer, the finding that owns it): the root cause of the client's first failing layer."""
    first = next((layer for layer in LAYERS if verdicts[layer].verdict is Verdict.FAIL), None)
    if first is None:
        if _probes_pass(verdicts, flow):
            return None, None  # a warning alone never owns while the client's own probes pass
        first = next((layer for layer in LAYERS if verdicts[layer].verdict is Verdict.WARN), None)
        if first is None:
            return None, None
    idxs = [i for i in verdicts[first].findings if findings[i].severity is not Severity.INFO]
    if not idxs:
        return None, None
    for i in idxs:
        if i in cause_of:
            root = cause_of[i].cause
            seen = {i}
            while root in cause_of and root not in seen:  # a cause explained in turn (a route by a DNS answer)
                seen.add(root)
                root = cause_of[root].cause
            verdicts[first].explained_by = [root]
            return findings[root].layer, root
    critical = [i for i in idxs if findings[i].severity is Severity.CRITICAL]
    return first, (critical or idxs)[0]


def _probes_pass(verdicts: dict[Layer, LayerVerdict], flow: Flow) -> bool:
    if flow.port is not None:
        return verdicts[Layer.TRANSPORT].verdict is Verdict.PASS
    return verdicts[Layer.DNS].verdict is Verdict.PASS or verdicts[Layer.ROUTE].verdict is Verdict.PASS


def _node_wide_while_working(verdicts: dict[Layer, LayerVerdict], findings: list[Finding], flow: Flow) -> None:
    """A layer failed only by findings about no target (conntrack dropping some flows on a busy node, a table
    near full) does not fail a target whose own probes pass: it is said, as a warning, and owns nothing there."""
    if not _probes_pass(verdicts, flow):
        return
    for lv in verdicts.values():
        critical = [i for i in lv.findings if findings[i].severity is Severity.CRITICAL]
        if lv.verdict is Verdict.FAIL and critical and all(findings[i].target is None for i in critical):
            lv.verdict = Verdict.WARN
            lv.reasons.append("node-wide, about no target: this target's own probes pass, so it does not fail here")


def _icmp_filtered(verdicts: dict[Layer, LayerVerdict], findings: list[Finding]) -> None:
    route = verdicts[Layer.ROUTE]
    if route.verdict is Verdict.WARN and verdicts[Layer.TRANSPORT].verdict is Verdict.PASS and \
            all(findings[i].id == "icmp.no_reply" for i in route.findings):
        route.verdict = Verdict.INCONCLUSIVE
        route.reasons.append("ICMP gets no reply but TCP connects: ICMP is filtered, the route works")


def _vantage_ladder(manifest: Manifest, flow: Flow, d: VantageDocs, findings: list[Finding]) -> VantageLadder:
    layers = []
    for layer in LAYERS:
        own = [i for i, f in enumerate(findings) if f.vantage == d.vantage and f.layer is layer
               and (_about(f, flow) or (f.target is None and layer in (Layer.SERVICE, Layer.DNS)))]
        layers.append(_layer(manifest, layer, flow, [d], findings, own, d.vantage))
    return VantageLadder(vantage=d.vantage, role=flow.role(d.vantage), layers=layers)


def _split_paths(verdict: LayerVerdict, flow: Flow, vantages: list[VantageLadder]) -> None:
    """Fails from the client, works from another vantage that is not the target itself: the client's own path
    (its netns, routes, CNI attachment) owns it, not the target."""
    good = [v.vantage for v in vantages if v.role in (Role.PATH, Role.CONTEXT)
            and all(lv.verdict is not Verdict.FAIL for lv in v.layers)
            and next(lv for lv in v.layers if lv.layer is verdict.layer).verdict is Verdict.PASS]
    if good:
        verdict.reasons.append(f"fails from {flow.client} but works from {', '.join(good)}: the path from "
                               f"{flow.client} (its netns, routes, CNI attachment) owns it, not {flow.spec} itself")


def _layer(manifest: Manifest, layer: Layer, flow: Flow, docs: list[VantageDocs], findings: list[Finding],
           idxs: list[int], vantage: str | None) -> LayerVerdict:
    v = LayerVerdict(layer=layer, verdict=Verdict.NOT_COLLECTED)
    critical = [i for i in idxs if findings[i].severity is Severity.CRITICAL]
    warnings = [i for i in idxs if findings[i].severity is Severity.WARNING]
    for i in critical or warnings:
        v.reasons.append(f"{findings[i].id}: {findings[i].summary}")
        v.findings.append(i)
        v.evidence.append(_member(findings[i]))
    if critical:
        v.verdict = Verdict.FAIL
        return v
    positive, collected = _positive(layer, flow, docs)
    v.evidence += positive
    if warnings:
        v.verdict = Verdict.WARN
    elif positive:
        v.verdict = Verdict.PASS
        v.reasons.append({Layer.ROUTE: "a route to it exists", Layer.TRANSPORT: "a TCP connect to it succeeded",
                          Layer.DNS: "its name resolves", Layer.SERVICE: "its service map agrees"}[layer])
    elif collected:
        v.verdict = Verdict.INCONCLUSIVE
        v.reasons.append("collected, but nothing here proves this layer for this target")
    runs = [r for r in manifest.slices if r.slice == _SLICE_OF[layer] and r.vantage == vantage]
    limited = [r for r in runs if r.reason and ("needs CAP" in r.reason or "not permitted" in r.reason
                                                or "not_permitted" in r.reason)]
    if limited and v.verdict is Verdict.PASS:
        v.verdict = Verdict.INCONCLUSIVE
        v.reasons.append(f"privilege-limited in {limited[0].vantage}: {limited[0].reason}")
    if v.verdict is Verdict.NOT_COLLECTED:
        skipped = [r for r in runs if r.status is not SliceStatus.COMPLETE]
        ran = any(r.status is SliceStatus.COMPLETE for r in runs)
        if not skipped and ran and (layer is Layer.DNS and not flow.names or layer is Layer.SERVICE):
            v.verdict = Verdict.NOT_APPLICABLE  # the slice ran; the layer has nothing to say about this target
        v.reasons.append(skipped[0].reason or skipped[0].status.value if skipped else
                         {Layer.ROUTE: "no route slice", Layer.TRANSPORT: "no connect probe (no port, or --passive)",
                          Layer.DNS: "no name to resolve for this target",
                          Layer.SERVICE: "not a Service frontend here"}[layer])
    return v


def _member(f: Finding) -> str:
    return f"{f.evidence[0].member} {f.evidence[0].pointer}" if f.evidence else f.id


def _positive(layer: Layer, flow: Flow, docs: list[VantageDocs]) -> tuple[list[str], bool]:
    """(evidence that the layer works for the target, whether the layer was collected at all)."""
    proof: list[str] = []
    collected = False
    for d in docs:
        base = f"vantages/{d.vantage}"
        if layer is Layer.ROUTE and d.route is not None:
            collected = True
            proof += [f"{base}/route.json lookups[{i}]" for i, lk in enumerate(d.route.lookups)
                      if lk.ok and lk.target in flow.addresses and lk.source is None and lk.iif is None]
        elif layer is Layer.TRANSPORT and d.sockets is not None and flow.port is not None:
            for i, p in enumerate(d.sockets.probes):
                if p.address in flow.addresses and p.port == flow.port:
                    collected = True
                    if p.outcome.value == "connected":
                        proof.append(f"{base}/sockets.json probes[{i}]")
        elif layer is Layer.DNS and d.dns is not None and flow.names:
            for i, r in enumerate(d.dns.names):
                if r.name in flow.names:
                    collected = True
                    if r.resolution.outcome is Outcome.ANSWERED:
                        proof.append(f"{base}/dns.json names[{i}]")
        elif layer is Layer.SERVICE and d.nat is not None:
            for i, s in enumerate(d.nat.services):
                if s.address in flow.addresses and (flow.port is None or s.port == flow.port):
                    collected = True
                    if s.endpoints and not s.reject:
                        proof.append(f"{base}/nat.json services[{i}]")
    return proof, collected
