"""The Kubernetes phase of a collect: the API is asked before the netns vantages start — its Services become
targets, its EndpointSlices the NAT slice's reference, a named pod on this node a vantage (found by its UID)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from bundle._netns import effective_caps
from bundle.archive import StagedBundle
from bundle.collect import kube, podns
from bundle.collect import vantage as vantage_mod
from bundle.collect.kube import KubeRequest
from bundle.collect.request import CollectRequest, Progress
from bundle.collect.vantage import VantageSpec
from bundle.models import (
    MediaType,
    Privileges,
    Provenance,
    SliceRun,
    SliceStatus,
    Target,
    Vantage,
    VantageKind,
    endpoint_spec,
)
from bundle.models.kube import KubeSlice, PodVantage

KUBE_VANTAGE = "kubernetes-api"


@dataclass
class KubePhase:
    request: CollectRequest
    vantage: Vantage
    run: SliceRun
    slices_file: Path | None = None


def kube_first(req: CollectRequest, kreq: KubeRequest, staged: StagedBundle,
                progress: Callable[[Progress], None] | None, hostname: str) -> KubePhase:
    """Ask the API before the netns vantages start: its Services become targets (ClusterIP:port, endpoints, the
    Service's DNS name), its EndpointSlices the NAT slice's reference, and a named pod on this node a vantage."""
    started_wall, started = datetime.now(UTC), time.monotonic()
    cap_hex, caps = effective_caps()  # the API is asked from this process: its own identity and privileges
    vantage = Vantage(id=KUBE_VANTAGE, kind=VantageKind.KUBERNETES_API, entered=True,
                      privileges=Privileges(uid=os.getuid(), euid=os.geteuid(), cap_effective=cap_hex,
                                            capabilities=caps))
    run = SliceRun(slice="kube", vantage=KUBE_VANTAGE, status=SliceStatus.FAILED, started=started_wall)
    phase = KubePhase(request=req, vantage=vantage, run=run)
    try:
        client, server, context = kube.api_client(kreq.kubeconfig, kreq.context)
    except kube.KubeConfigError as exc:
        vantage.error = run.reason = str(exc)
        run.finished, run.duration_s = datetime.now(UTC), round(time.monotonic() - started, 3)
        return phase
    vantage.ref = server
    result = kube.collect_kube(kreq, client, server, context)
    doc = result.doc
    for path, data, media, source in result.members:
        staged.add_bytes(path, data, media, Provenance(vantage=KUBE_VANTAGE, slice="kube", source=source))
    addresses, names = kube.service_targets(doc)
    have = {(t.address, t.port) for t in req.targets}
    targets = list(req.targets) + [Target(spec=endpoint_spec(a, p), address=a, port=p) for a, p in addresses
                                   if (a, p) not in have]
    options = req.options.model_copy(update={"dns_names": list(dict.fromkeys([*req.options.dns_names, *names]))})
    raw = result.raw_endpoint_slices
    if raw and options.endpointslices is None:
        fd, name = tempfile.mkstemp(prefix="netbundle-endpointslices-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump({"apiVersion": "v1", "kind": "List", "items": raw}, fh)
        phase.slices_file = Path(name)
        options = options.model_copy(update={"endpointslices": name})
    specs = list(req.vantages)
    client = req.client
    for ns, pod_name in kreq.pods:
        pv, spec = pod_vantage(doc, ns, pod_name, hostname)
        doc.pod_vantages.append(pv)
        if spec is not None and all(s.ref != spec.ref for s in specs):
            specs.append(spec)
        client = client or (spec.id if spec is not None else None)  # the pod of --pod is the client
    staged.add_bytes(f"vantages/{KUBE_VANTAGE}/kube.json", doc.model_dump_json(indent=1).encode(), MediaType.KUBE,
                     Provenance(vantage=KUBE_VANTAGE, slice="kube", source=f"kubernetes API at {server}",
                                duration_s=round(time.monotonic() - started, 6)))
    failed = [c for c in doc.calls if c.outcome not in ("ok", "not_served")]  # not served: an API this cluster lacks
    run.status = SliceStatus.PARTIAL if failed or doc.truncated else SliceStatus.COMPLETE
    if failed:
        what = sorted({f"{c.verb} {c.resource}: {c.outcome}" for c in failed})
        run.reason = "; ".join(what[:6]) + (f" (+{len(what) - 6} more)" if len(what) > 6 else "")
    run.finished, run.duration_s = datetime.now(UTC), round(time.monotonic() - started, 3)
    if progress is not None:
        progress(Progress(vantage=KUBE_VANTAGE, slice="kube", status=run.status, duration_s=run.duration_s,
                          reason=run.reason))
    phase.request = replace(req, targets=targets, options=options, vantages=vantage_mod.dedupe(specs),
                            client=client)
    return phase


def pod_vantage(doc: KubeSlice, ns: str, name: str, hostname: str) -> tuple[PodVantage, VantageSpec | None]:
    """A named pod as a vantage: found by its UID in /proc/*/cgroup when it runs here."""
    label = f"{ns}/{name}"
    pod = next((p for p in doc.pods if p.namespace == ns and p.name == name), None)
    if pod is None or not pod.uid:
        return PodVantage(pod=label, outcome="not_found", detail="the API did not return this pod"), None
    if pod.host_network:
        return PodVantage(pod=label, outcome="host_network",
                          detail="hostNetwork: the pod uses its node's netns; collect from the node (--host)"), None
    found = podns.find_pod_process(pod.uid)
    if found is None:
        if pod.node and pod.node != hostname:
            return PodVantage(pod=label, outcome="other_node",
                              detail=f"the pod runs on node {pod.node}, this is {hostname}: the API view only"), None
        return PodVantage(pod=label, outcome="no_process",
                          detail=f"no process in a cgroup of pod UID {pod.uid} is visible here"), None
    spec = VantageSpec(id=vantage_mod.safe_id(f"pod-{ns}-{name}"), kind=VantageKind.NETNS_PID, ref=str(found.pid),
                       path=Path(f"/proc/{found.pid}/ns/net"))
    return PodVantage(pod=label, outcome="added", pid=found.pid, vantage=spec.id,
                      detail=f"pid {found.pid} in cgroup {found.cgroup}"), spec
