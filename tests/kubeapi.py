"""A small, honest Kubernetes API server on loopback for tests: real paths, real object JSON, label selectors,
`limit`/`continue` pagination, pod logs with sinceSeconds/tailLines/limitBytes, and Status objects for 403/404.

It serves what a test puts in it; `objects.py`-style builders below make the lab's cluster (payments Service,
its EndpointSlice and pods, kube-dns with CoreDNS pods and Corefile, kube-proxy's ConfigMap and DaemonSet).
Every request is recorded so tests can check what the client asked.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

# resource plural -> (API prefix, kind); the paths the real API server uses
RESOURCES = {
    "services": ("/api/v1", "Service"), "pods": ("/api/v1", "Pod"), "nodes": ("/api/v1", "Node"),
    "namespaces": ("/api/v1", "Namespace"),
    "configmaps": ("/api/v1", "ConfigMap"),
    "endpointslices": ("/apis/discovery.k8s.io/v1", "EndpointSlice"),
    "daemonsets": ("/apis/apps/v1", "DaemonSet"),
    "networkpolicies": ("/apis/networking.k8s.io/v1", "NetworkPolicy"),
    "adminnetworkpolicies": ("/apis/policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy"),
    "ciliumnetworkpolicies": ("/apis/cilium.io/v2", "CiliumNetworkPolicy"),
    "jobs": ("/apis/batch/v1", "Job"),
}
CLUSTER_SCOPED = {"nodes", "namespaces", "adminnetworkpolicies"}


@dataclass
class LogStream:
    """A running container's output as the kubelet serves it: grows while it runs, ends when it exits."""
    data: bytearray = field(default_factory=bytearray)
    done: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)

    def write(self, chunk: bytes) -> None:
        with self.cond:
            self.data += chunk
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()


@dataclass
class FakeApi:
    objects: dict[tuple[str, str | None, str], dict[str, Any]] = field(default_factory=dict)
    logs: dict[tuple[str, str], list[tuple[int, str]]] = field(default_factory=dict)  # (ns, pod) -> (age s, line)
    forbidden: set[tuple[str, str]] = field(default_factory=set)  # (verb, resource)
    requests: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)
    verbs: list[tuple[str, str, str | None]] = field(default_factory=list)  # (verb, resource.group, namespace)
    streams: dict[tuple[str, str], LogStream] = field(default_factory=dict)  # (ns, pod) -> a container's output
    lock: threading.RLock = field(default_factory=threading.RLock)
    url: str = ""

    def add(self, resource: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        ns = None if resource in CLUSTER_SCOPED else meta.get("namespace", "default")
        with self.lock:
            self.objects[(resource, ns, meta["name"])] = obj

    def of(self, resource: str) -> list[dict[str, Any]]:
        with self.lock:
            return [o for (r, _, _), o in list(self.objects.items()) if r == resource]

    def kubeconfig(self, folder: Path) -> Path:
        path = folder / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "nbt",
            "clusters": [{"name": "nbt", "cluster": {"server": self.url}}],
            "users": [{"name": "nbt", "user": {"token": "nbt-token"}}],
            "contexts": [{"name": "nbt", "context": {"cluster": "nbt", "user": "nbt"}}],
        }))
        return path


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        else:
            k, _, v = term.partition("=")
            if labels.get(k) != v.lstrip("="):
                return False
    return True


class _Handler(BaseHTTPRequestHandler):
    api: FakeApi

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any, text: bool = False) -> None:
        data = body.encode() if text else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> tuple[str, str | None, list[str], dict[str, list[str]]] | None:
        """(resource, namespace, path rest, query) of a request the server serves; otherwise answered here."""
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.api.requests.append((url.path, query))
        if self.headers.get("Authorization") != "Bearer nbt-token":
            self._send(401, _status(401, "Unauthorized", "Unauthorized"))
            return None
        parts = [p for p in url.path.split("/") if p]
        # /api/v1/... or /apis/GROUP/VERSION/...
        rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
        ns = None
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        served = "/" + "/".join(parts[:2] if parts[:1] == ["api"] else parts[:3])
        if not rest or rest[0] not in RESOURCES or RESOURCES[rest[0]][0] != served:  # a group this server lacks
            self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
            return None
        resource = rest[0]
        sub = "/log" if len(rest) == 3 and rest[2] == "log" else ""
        verb = {"POST": "create", "DELETE": "delete"}.get(method) or ("get" if len(rest) >= 2 else "list")
        qualified = _qualified(resource) if not sub else "pods/log"
        self.api.verbs.append((verb, qualified, ns))
        if (verb, qualified) in self.api.forbidden or (sub and ("log", "pods/log") in self.api.forbidden):
            group = RESOURCES[resource][0].split("/")[2] if RESOURCES[resource][0].startswith("/apis") else ""
            self._send(403, _status(
                403, "Forbidden", f'{qualified} is forbidden: User "system:serviceaccount:netbundle:collector" cannot '
                                  f'{verb} resource "{resource}{sub}" in API group "{group}"'
                                  + (f' in the namespace "{ns}"' if ns else "")))
            return None
        return resource, ns, rest, query

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        routed = self._route("GET")
        if routed is None:
            return None
        resource, ns, rest, query = routed
        prefix, kind = RESOURCES[resource]
        if len(rest) == 3 and resource == "pods" and rest[2] == "log":
            return self._log(ns, rest[1], query)
        if len(rest) == 2:
            with self.api.lock:
                obj = copy.deepcopy(self.api.objects.get((resource, ns, rest[1])))
            if obj is None:
                return self._send(404, _status(404, "NotFound", f'{_qualified(resource)} "{rest[1]}" not found'))
            return self._send(200, obj)
        selector = (query.get("labelSelector") or [None])[0]
        with self.api.lock:
            items = [copy.deepcopy(o) for (r, n, _), o in sorted(self.api.objects.items(), key=lambda kv: kv[0][2])
                     if r == resource and (ns is None or n == ns)
                     and _matches((o.get("metadata") or {}).get("labels") or {}, selector)]
        start = int(base64.b64decode((query.get("continue") or ["MA=="])[0]).decode())
        limit = int((query.get("limit") or [0])[0]) or len(items)
        page = items[start:start + limit]
        meta: dict[str, Any] = {"resourceVersion": "4242"}
        if start + limit < len(items):
            meta["continue"] = base64.b64encode(str(start + limit).encode()).decode()
        return self._send(200, {"kind": f"{kind}List", "apiVersion": prefix.split("/", 2)[-1] if prefix != "/api/v1" else "v1",
                                "metadata": meta, "items": page})

    def do_POST(self) -> None:  # noqa: N802
        routed = self._route("POST")
        if routed is None:
            return None
        resource, ns, rest, _query = routed
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        name = (body.get("metadata") or {}).get("name")
        if len(rest) != 1 or not name or body.get("kind") != RESOURCES[resource][1]:
            return self._send(400, _status(400, "BadRequest", "a named object of the collection's kind is required"))
        with self.api.lock:
            if (resource, ns, name) in self.api.objects:
                return self._send(409, _status(409, "AlreadyExists", f'{_qualified(resource)} "{name}" already exists'))
            body["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion="4243",
                                    creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            body.setdefault("status", {})
            self.api.objects[(resource, ns, name)] = body
        return self._send(201, body)

    def do_DELETE(self) -> None:  # noqa: N802
        routed = self._route("DELETE")
        if routed is None:
            return None
        resource, ns, rest, query = routed
        length = int(self.headers.get("Content-Length") or 0)
        options = json.loads(self.rfile.read(length) or b"{}") if length else {}
        policy = (query.get("propagationPolicy") or [options.get("propagationPolicy") or "Orphan"])[0]
        with self.api.lock:
            obj = self.api.objects.pop((resource, ns, rest[1]), None) if len(rest) == 2 else None
            if obj is None:
                return self._send(404, _status(404, "NotFound", f'{_qualified(resource)} "{rest[-1]}" not found'))
            if resource == "jobs" and policy in ("Background", "Foreground"):  # the garbage collector's part
                for key, o in list(self.api.objects.items()):
                    if key[0] == "pods" and key[1] == ns and o["metadata"].get("labels", {}).get("job-name") == rest[1]:
                        del self.api.objects[key]
        return self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                "details": {"name": rest[1], "kind": resource, "uid": obj["metadata"].get("uid")}})

    def _log(self, ns: str | None, pod: str, query: dict[str, list[str]]) -> None:
        stream = self.api.streams.get((ns or "", pod))
        if stream is not None:
            return self._stream(stream, (query.get("follow") or ["false"])[0] == "true")
        lines = self.api.logs.get((ns or "", pod))
        if lines is None:
            return self._send(404, _status(404, "NotFound", f'pods "{pod}" not found'))
        since = int((query.get("sinceSeconds") or [10**9])[0])
        kept = [line for age, line in lines if age <= since]
        tail = int((query.get("tailLines") or [len(kept)])[0])
        text = "".join(line + "\n" for line in kept[-tail:] if tail)
        limit = int((query.get("limitBytes") or [len(text)])[0])
        return self._send(200, text[:limit], text=True)


    def _stream(self, stream: LogStream, follow: bool) -> None:
        """The body as the kubelet sends it: what is there, then (follow) more as it comes, ending when the
        container exits; the connection closes to end it (HTTP/1.0, no length)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        pos = 0
        try:
            while True:
                with stream.cond:
                    stream.cond.wait_for(lambda: len(stream.data) > pos or stream.done, timeout=0.5)
                    chunk, done = bytes(stream.data[pos:]), stream.done
                if chunk:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    pos += len(chunk)
                if not follow or (done and pos == len(stream.data)):
                    return
        except OSError:  # the client went away
            return


def _qualified(resource: str) -> str:
    prefix = RESOURCES[resource][0]
    return f"{resource}.{prefix.split('/')[2]}" if prefix.startswith("/apis") else resource


@contextmanager
def serve(api: FakeApi) -> Iterator[FakeApi]:
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()


# --- the lab's cluster as API objects ------------------------------------------------------------------------

def _meta(name: str, ns: str | None, labels: dict[str, str] | None = None, uid: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": uid or f"00000000-0000-4000-8000-{abs(hash(name)) % 10**12:012d}",
                            "resourceVersion": "4242", "creationTimestamp": "2026-11-26T03:00:00Z"}
    if ns is not None:
        meta["namespace"] = ns
    if labels:
        meta["labels"] = labels
    return meta


def service(ns: str, name: str, cluster_ip: str, ports: list[tuple[str, int, int, str]],
            selector: dict[str, str], corpus: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ClusterIP Service; `corpus` (the API's own round-trip fixture) lends the field layout."""
    base = copy.deepcopy(corpus) if corpus else {"kind": "Service", "apiVersion": "v1"}
    base["metadata"] = _meta(name, ns, {"app": name})
    base["spec"] = {"ports": [{"name": n, "protocol": proto, "port": port, "targetPort": target}
                              for n, port, target, proto in ports],
                    "selector": selector, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "type": "ClusterIP",
                    "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                    "internalTrafficPolicy": "Cluster"}
    base["status"] = {"loadBalancer": {}}
    return base


def endpoint_slice(ns: str, service_name: str, endpoints: list[tuple[str, bool, str]],
                   ports: list[tuple[str, int, str]], suffix: str = "abcde") -> dict[str, Any]:
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "addressType": "IPv4",
            "metadata": _meta(f"{service_name}-{suffix}", ns, {"kubernetes.io/service-name": service_name,
                                                               "endpointslice.kubernetes.io/managed-by":
                                                                   "endpointslice-controller.k8s.io"}),
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": False},
                           "nodeName": node, "targetRef": {"kind": "Pod", "namespace": ns, "name": f"{service_name}-{ip}"}}
                          for ip, ready, node in endpoints],
            "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]}


def pod(ns: str, name: str, ip: str, node: str, labels: dict[str, str], ports: list[int], uid: str,
        ready: bool = True, restarts: int = 0, host_network: bool = False,
        port_names: dict[int, str] | None = None, protocol: str = "TCP") -> dict[str, Any]:
    names = port_names or {}
    return {"kind": "Pod", "apiVersion": "v1", "metadata": _meta(name, ns, labels, uid),
            "spec": {"nodeName": node, "hostNetwork": host_network, "dnsPolicy": "ClusterFirst",
                     "containers": [{"name": "main", "image": "registry.example/app:1",
                                     "ports": [{"containerPort": p, "protocol": protocol,
                                                **({"name": names[p]} if p in names else {})} for p in ports]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "containerStatuses": [{"name": "main", "ready": ready, "restartCount": restarts,
                                              "image": "registry.example/app:1", "imageID": "", "started": True,
                                              "state": {"running": {}}, "lastState": {}}]}}


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Namespace as the API serves it: the apiserver always adds kubernetes.io/metadata.name."""
    return {"kind": "Namespace", "apiVersion": "v1",
            "metadata": _meta(name, None, {"kubernetes.io/metadata.name": name, **(labels or {})}),
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def network_policy(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1", "metadata": _meta(name, ns),
            "spec": spec}


def node(name: str, internal_ip: str, pod_cidr: str) -> dict[str, Any]:
    return {"kind": "Node", "apiVersion": "v1", "metadata": _meta(name, None),
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}]}}


def config_map(ns: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"kind": "ConfigMap", "apiVersion": "v1", "metadata": _meta(name, ns), "data": data}


def daemon_set(ns: str, name: str, ready: int, desired: int) -> dict[str, Any]:
    return {"kind": "DaemonSet", "apiVersion": "apps/v1", "metadata": _meta(name, ns, {"k8s-app": name}),
            "spec": {"selector": {"matchLabels": {"k8s-app": name}}, "template": {"metadata": {}, "spec": {}}},
            "status": {"numberReady": ready, "desiredNumberScheduled": desired, "currentNumberScheduled": desired,
                       "numberMisscheduled": 0}}


def load(path: Path) -> FakeApi:
    """A cluster a lab scenario wrote (`files["cluster"]`: {"items": [{"resource", "object"}]})."""
    api = FakeApi()
    for item in json.loads(path.read_text())["items"]:
        api.add(item["resource"], item["object"])
    return api
