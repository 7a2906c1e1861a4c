"""The fleet's Kubernetes engine: one Job per node through the API operators already run, never a daemon of
our own. Every Job gets the same `collect` options and the same start time; its pod runs `netbundle collect`
pinned to its node (hostNetwork, hostPID, ALL capabilities dropped but the slices' five) and prints the bundle
on stdout in a framed base64 block (size and SHA-256 in the header) after collect's own words.

Why the pod log stream and not pods/exec + tar (what `kubectl cp` does): the log is a plain GET
(`pods/log`), so the fleet's Role holds no `pods/exec` (an exec into any pod of the namespace, a shell on
a privileged-ish node agent); the kubelet keeps the log after the container exits, so there is no race
between the container ending and the copy, and the container need not linger; the stream is read while
the pod runs (follow), so the kubelet's log rotation (containerLogMaxSize, 10 MiB by default) is followed
instead of cutting a large bundle. The frame's SHA-256 and size catch any line lost or altered on the way."""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from bundle.collect.fleet import (NETBUNDLE_MISSING, NodeResult, Running, judge_bundle, last_line, node_file,
                                  node_outcome, run_fleet)
from bundle.models.incidentset import NodeOutcome

# Exactly what the slices need (docs/deploy/collect-job.yaml says why each).
CAPABILITIES = ("NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH")
RUN_LABEL = "netbundle.io/run"
NODE_ANNOTATION = "netbundle.io/node"
CONTAINER = "netbundle"
FRAME_BEGIN = b"netbundle-frame-begin "
FRAME_END = b"netbundle-frame-end "
# Waiting reasons that never resolve by waiting, and those that may (an image pull retried with back-off).
_NEVER_STARTS = {"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError",
                 "RunContainerError"}
_PULLING = {"ErrImagePull", "ImagePullBackOff"}
_JOB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# The container's command: collect into its emptyDir, collect's words (stderr) first, then the bundle framed.
# "$@" are the collect options, as the Job's args show them.
NODE_SCRIPT = "\n".join([
    "umask 077",
    f"command -v netbundle >/dev/null 2>&1 || {{ echo 'netbundle is not installed in the image' >&2; "
    f"exit {NETBUNDLE_MISSING}; }}",
    'd=$(mktemp -d) || exit 1',
    'netbundle collect "$@" -o "$d/b.tar.zst" 2>"$d/err" >/dev/null; rc=$?',
    'cat "$d/err" >&2',
    'if [ -s "$d/b.tar.zst" ]; then',
    '  printf \'netbundle-frame-begin %s %s\\n\' "$(wc -c < "$d/b.tar.zst")" '
    '"$(sha256sum < "$d/b.tar.zst" | cut -c1-64)"',
    '  base64 -w 76 "$d/b.tar.zst"',
    '  echo "netbundle-frame-end $rc"',
    "fi",
    'rm -rf "$d"',
    "exit $rc",
])


@dataclass(frozen=True)
class KubeFleet:
    nodes: tuple[str, ...]
    collect_args: tuple[str, ...]
    run_id: str  # 8 lowercase hex: names and labels every object this run creates
    image: str
    namespace: str = "netbundle"
    service_account: str = "netbundle"
    parallel: int = 16
    node_timeout_s: float = 150.0  # from now: creating the Job to the bundle verified
    start_at: float | None = None
    pull_grace_s: float = 20.0  # an image still not pulled this long after the shared start cannot join the window
    poll_s: float = 1.0
    max_node_bytes: int = 1 << 30


def job_name(fleet: KubeFleet, index: int) -> str:
    return f"netbundle-{fleet.run_id}-{index:03d}"


def job_manifest(fleet: KubeFleet, node: str, index: int) -> dict[str, Any]:
    """The Job for one node: pinned by nodeName (no scheduler in the way, taints tolerated: a control-plane or
    cordoned node is still a node of the incident), the node's network and PIDs, a read-only root, deadlines
    the cluster enforces even if this coordinator dies, and labels tying it to this run."""
    labels = {"app.kubernetes.io/name": "netbundle", "app.kubernetes.io/component": "fleet-collect",
              RUN_LABEL: fleet.run_id}
    args = [*fleet.collect_args, *(["--start-at", f"{fleet.start_at:.3f}"] if fleet.start_at else [])]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(fleet, index), "namespace": fleet.namespace, "labels": labels,
                     "annotations": {NODE_ANNOTATION: node}},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": math.ceil(fleet.node_timeout_s) + 30,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": labels, "annotations": {NODE_ANNOTATION: node}},
                "spec": {
                    "nodeName": node, "hostNetwork": True, "hostPID": True,
                    "dnsPolicy": "ClusterFirstWithHostNet", "restartPolicy": "Never",
                    "serviceAccountName": fleet.service_account, "tolerations": [{"operator": "Exists"}],
                    "containers": [{
                        "name": CONTAINER, "image": fleet.image, "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", NODE_SCRIPT, "netbundle-fleet-node"], "args": args,
                        "securityContext": {
                            "runAsUser": 0, "privileged": False, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"], "add": list(CAPABILITIES)}},
                        "resources": {"limits": {"memory": "512Mi", "cpu": "1"},
                                      "requests": {"memory": "128Mi", "cpu": "100m"}},
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                         {"name": "netns", "mountPath": "/run/netns", "readOnly": True,
                                          "mountPropagation": "HostToContainer"}]}],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
                                {"name": "netns", "hostPath": {"path": "/run/netns"}}],
                }},
        },
    }


@dataclass
class Frame:
    size: int | None = None
    sha256: str | None = None
    exit_code: int | None = None
    written: int = 0
    error: str = ""
    other: deque[str] = field(default_factory=lambda: deque(maxlen=200))  # collect's words, the last lines

    @property
    def complete(self) -> bool:
        return self.exit_code is not None and not self.error and self.written == self.size


def decode_frame(chunks: Iterable[bytes], sink: BinaryIO, max_bytes: int) -> Frame:
    """The bundle out of a log stream, written to `sink` as it arrives (memory stays one chunk): lines before
    the frame are collect's words; inside it, base64 lines of a multiple of 4 characters decode alone."""
    frame = Frame()
    state = "before"
    pending = b""
    for chunk in chunks:
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        if len(pending) > 1 << 16 and state != "body":  # no line is that long: keep the head, say it
            frame.other.append(pending[:300].decode(errors="replace") + " …")
            pending = b""
        body: list[bytes] = []
        for line in lines:
            if state == "body":
                if line.startswith(FRAME_END):
                    state = "after"
                    try:
                        frame.exit_code = int(line[len(FRAME_END):].strip())
                    except ValueError:
                        frame.error = "the frame's end line is malformed"
                    continue
                body.append(line.strip())
                continue
            if state == "before" and line.startswith(FRAME_BEGIN):
                parts = line[len(FRAME_BEGIN):].split()
                if len(parts) != 2 or not parts[0].isdigit() or not re.fullmatch(rb"[0-9a-f]{64}", parts[1]):
                    frame.error = "the frame's header is malformed"
                    state = "after"
                    continue
                frame.size, frame.sha256 = int(parts[0]), parts[1].decode()
                if frame.size > max_bytes:
                    frame.error = f"the bundle is {frame.size} bytes, over the limit of {max_bytes}"
                    state = "after"
                    continue
                state = "body"
                continue
            frame.other.append(line.decode(errors="replace"))
        if body and not frame.error:
            try:
                data = base64.b64decode(b"".join(body), validate=True)
            except (binascii.Error, ValueError):
                frame.error = "the frame holds a line that is not base64"
                state = "after"
                continue
            frame.written += len(data)
            if frame.size is not None and frame.written > frame.size:
                frame.error = "the frame holds more bytes than its header says"
                state = "after"
                continue
            sink.write(data)
    if state == "body":
        frame.error = f"the stream ended inside the frame ({frame.written} of {frame.size} bytes)"
    return frame


def select_nodes(client: Any, services: Iterable[tuple[str, str]], pods: Iterable[tuple[str, str]],
                 timeout_s: float = 10.0) -> tuple[list[str], list[str]]:
    """The nodes of an incident as the API knows them: those holding a ready endpoint of each Service (an
    endpoint without the ready condition counts as ready, as the API documents), and each named pod's node.
    Returns (nodes in a stable order, what could not be resolved)."""
    from kubernetes import client as k
    from kubernetes.client.exceptions import ApiException

    disco: Any = k.DiscoveryV1Api(client)
    core: Any = k.CoreV1Api(client)
    nodes: list[str] = []
    notes: list[str] = []
    for ns, name in services:
        try:
            slices = disco.list_namespaced_endpoint_slice(ns, label_selector=f"kubernetes.io/service-name={name}",
                                                          _request_timeout=timeout_s).items
        except ApiException as exc:
            notes.append(f"service {ns}/{name}: endpoint slices not read ({exc.status} {exc.reason})")
            continue
        found = [ep.node_name for s in slices for ep in (s.endpoints or [])
                 if ep.node_name and (ep.conditions is None or ep.conditions.ready is not False)]
        if not found:
            notes.append(f"service {ns}/{name}: no ready endpoint with a node")
        nodes += sorted(set(found))
    for ns, name in pods:
        try:
            pod = core.read_namespaced_pod(name, ns, _request_timeout=timeout_s)
        except ApiException as exc:
            notes.append(f"pod {ns}/{name}: not read ({exc.status} {exc.reason})")
            continue
        if pod.spec.node_name:
            nodes.append(pod.spec.node_name)
        else:
            notes.append(f"pod {ns}/{name}: not scheduled on any node")
    return list(dict.fromkeys(nodes)), notes


def _waiting(pod: Any) -> tuple[str, str]:
    for cs in (pod.status.container_statuses or []) if pod.status else []:
        if cs.state and cs.state.waiting and cs.state.waiting.reason:
            return cs.state.waiting.reason, (cs.state.waiting.message or "")[:200]
    return "", ""


def _container(pod: Any) -> Any:
    for cs in (pod.status.container_statuses or []) if pod.status else []:
        if cs.name == CONTAINER:
            return cs
    return None


def _started(pod: Any) -> bool:
    cs = _container(pod)
    return bool(cs and cs.state and (cs.state.running or cs.state.terminated))


def collect_job(fleet: KubeFleet, client: Any, node: str, index: int, folder: Path, running: Running) -> NodeResult:
    """One node: create its Job, wait for its pod to start (naming why it does not), read the framed bundle
    from the log stream to disk, judge it as the SSH engine does, and delete the Job whatever happened."""
    from kubernetes import client as k
    from kubernetes.client.exceptions import ApiException

    batch: Any = k.BatchV1Api(client)
    core: Any = k.CoreV1Api(client)
    started = datetime.now(UTC)
    deadline = time.monotonic() + fleet.node_timeout_s
    name = job_name(fleet, index)
    ns = fleet.namespace
    out = node_file(folder, node)
    stream: list[Any] = []

    def stop() -> None:
        _delete(batch, name, ns)
        for resp in stream:
            resp.shutdown()

    def fail(outcome: str, detail: str, code: int | None = None) -> NodeResult:
        return NodeResult(node_outcome(node, started, code, "", outcome=outcome, detail=detail[:300]))

    try:
        batch.create_namespaced_job(ns, job_manifest(fleet, node, index), _request_timeout=10)
    except ApiException as exc:
        return fail("failed", f"Job not created: {exc.status} {exc.reason}: {_api_message(exc)}")
    running.register(node, stop)
    try:
        pod = None
        last = "no pod made by the Job controller"
        while not running.stopped:
            if time.monotonic() > deadline:
                return fail("timeout", f"not started within {fleet.node_timeout_s:g} s ({last}): Job deleted")
            pods = core.list_namespaced_pod(ns, label_selector=f"job-name={name}", _request_timeout=10).items
            pod = pods[0] if pods else None
            if pod is not None:
                phase = pod.status.phase if pod.status else "Pending"
                reason, message = _waiting(pod)
                if _started(pod):
                    break
                if phase == "Failed":  # the kubelet refused or evicted it before the container ran
                    why = (pod.status.reason or "Failed") + (f": {pod.status.message}" if pod.status.message else "")
                    return fail("evicted" if pod.status.reason == "Evicted" else "not_started", why)
                if reason in _NEVER_STARTS:
                    return fail("not_started", f"{reason}: {message}".rstrip(": "))
                if reason in _PULLING and fleet.start_at and time.time() > fleet.start_at + fleet.pull_grace_s:
                    return fail("not_started", f"{reason} (not running {fleet.pull_grace_s:g} s after the shared "
                                               f"start, it cannot share the window)" + (f": {message}" if message else ""))
                last = f"{phase}: {reason}" if reason else f"{phase}: no container started on the node"
            time.sleep(fleet.poll_s)
        if running.stopped or pod is None:
            return fail("failed", "interrupted")
        remaining = max(1.0, deadline - time.monotonic())
        resp = core.read_namespaced_pod_log(pod.metadata.name, ns, container=CONTAINER, follow=True,
                                            _preload_content=False, _request_timeout=(10, remaining))
        stream.append(resp)
        with open(out, "wb") as sink:
            try:
                frame = decode_frame(resp.stream(1 << 16), sink, fleet.max_node_bytes)
            except Exception as exc:  # noqa: BLE001 - urllib3's read timeout or a cut connection, named below
                frame = Frame(error=f"log stream cut: {type(exc).__name__}")
            finally:
                resp.release_conn()
        if running.stopped:
            return fail("failed", "interrupted")
        code, why, pod_reason = _exit(core, pod.metadata.name, ns, deadline, fleet.poll_s)
        stderr = "\n".join(frame.other)
        if code == NETBUNDLE_MISSING:
            return fail("netbundle_missing", f"netbundle not found in the image {fleet.image}", code)
        if not frame.complete and pod_reason.startswith("Evicted"):
            return fail("evicted", pod_reason, code)
        if frame.error or frame.size is None:
            if code is None and time.monotonic() > deadline:
                return fail("timeout", f"no bundle within {fleet.node_timeout_s:g} s: Job deleted")
            detail = frame.error or pod_reason or why or last_line(stderr) or "no bundle in the log"
            return NodeResult(node_outcome(node, started, code, stderr, outcome="failed", detail=detail[:300]))
        return judge_bundle(node, started, code if code is not None else frame.exit_code, stderr, out, frame.sha256)
    except ApiException as exc:
        return fail("failed", f"API: {exc.status} {exc.reason}: {_api_message(exc)}")
    finally:
        running.release(node)
        _delete(batch, name, ns)


def _exit(core: Any, pod: str, ns: str, deadline: float, poll_s: float) -> tuple[int | None, str, str]:
    """The container's exit code, why it ended if the kubelet said (OOMKilled), and the pod's own reason when
    the kubelet ended the pod (Evicted, DeadlineExceeded)."""
    while time.monotonic() < deadline:
        p = core.read_namespaced_pod(pod, ns, _request_timeout=10)
        cs = _container(p)
        pod_reason = ""
        if p.status and p.status.reason:
            pod_reason = p.status.reason + (f": {p.status.message}" if p.status.message else "")
        if cs and cs.state and cs.state.terminated:
            t = cs.state.terminated
            return t.exit_code, (t.reason if t.reason and t.reason not in ("Completed", "Error") else ""), pod_reason
        if p.status and p.status.phase in ("Failed", "Succeeded"):
            return None, p.status.phase, pod_reason
        time.sleep(poll_s)
    return None, "", ""


def _api_message(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message", ""))[:200]
    except (TypeError, ValueError, AttributeError):
        return ""


def _delete(batch: Any, name: str, ns: str) -> None:
    """Delete a Job this run created, its pod with it (Background propagation); gone already is fine."""
    from kubernetes.client.exceptions import ApiException

    try:
        batch.delete_namespaced_job(name, ns, propagation_policy="Background", _request_timeout=10)
    except ApiException as exc:
        if exc.status != 404:
            raise


def collect_kube_fleet(fleet: KubeFleet, client: Any, folder: Path,
                       progress: Callable[[NodeOutcome], None] | None = None) -> list[NodeResult]:
    """Every node's Job at once (at most `parallel` in flight); Ctrl-C deletes the Jobs still there."""
    if not _JOB_NAME.match(fleet.run_id):
        raise ValueError("run id: lowercase letters and digits")
    index = {n: i for i, n in enumerate(fleet.nodes)}
    return run_fleet(fleet.nodes, lambda n, running: collect_job(fleet, client, n, index[n], folder, running),
                     fleet.parallel, progress)
