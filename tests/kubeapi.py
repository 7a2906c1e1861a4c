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
}
CLUSTER_SCOPED = {"nodes", "namespaces", "adminnetworkpolicies"}


@dataclass
class FakeApi:
    objects: dict[tuple[str, str | None, str], dict[str, Any]] = field(default_factory=dict)
    logs: dict[tuple[str, str], list[tuple[int, str]]] = field(default_factory=dict)  # (ns, pod) -> (age s, line)
    forbidden: set[tuple[str, str]] = field(default_factory=set)  # (verb, resource)
    requests: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)
    url: str = ""

    def add(self, resource: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        ns = None if resource in CLUSTER_SCOPED else meta.get("namespace", "default")
        self.objects[(resource, ns, meta["name"])] = obj

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

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.api.requests.append((url.path, query))
        if self.headers.get("Authorization") != "Bearer nbt-token":
            return self._send(401, _status(401, "Unauthorized", "Unauthorized"))
        parts = [p for p in url.path.split("/") if p]
        # /api/v1/... or /apis/GROUP/VERSION/...
        rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
        ns = None
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        served = "/" + "/".join(parts[:2] if parts[:1] == ["api"] else parts[:3])
        if not rest or rest[0] not in RESOURCES or RESOURCES[rest[0]][0] != served:  # a group this server lacks
            return self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
        resource = rest[0]
        prefix, kind = RESOURCES[resource]
        group = prefix.split("/")[2] if prefix.startswith("/apis") else ""
        qualified = f"{resource}.{group}" if group else resource
        if len(rest) == 3 and resource == "pods" and rest[2] == "log":
            return self._log(ns, rest[1], query)
        verb = "get" if len(rest) == 2 else "list"
        if (verb, qualified) in self.api.forbidden:
            return self._send(403, _status(
                403, "Forbidden", f'{qualified} is forbidden: User "system:serviceaccount:netbundle:collector" cannot '
                                  f'{verb} resource "{resource}" in API group "{group}"'
                                  + (f' in the namespace "{ns}"' if ns else "")))
        if verb == "get":
            obj = self.api.objects.get((resource, ns, rest[1]))
            if obj is None:
                return self._send(404, _status(404, "NotFound", f'{qualified} "{rest[1]}" not found'))
            return self._send(200, obj)
        selector = (query.get("labelSelector") or [None])[0]
        items = [o for (r, n, _), o in sorted(self.api.objects.items(), key=lambda kv: kv[0][2])
                 if r == resource and (ns is None or n == ns)
                 and _matches((o.get("metadata") or {}).get("labels") or {}, selector)]
        start = int(base64.b64decode((query.get("continue") or ["MA=="])[0]).decode())
        limit = int((query.get("limit") or [0])[0]) or len(items)
        page = items[start:start + limit]
        meta: dict[str, Any] = {"resourceVersion": "4242"}
        if start + limit < len(items):
            meta["continue"] = base64.b64encode(str(start + limit).encode()).decode()
        return self._send(200, {"kind": f"{kind}List", "apiVersion": prefix.split("/", 2)[-1] if group else "v1",
                                "metadata": meta, "items": page})

    def _log(self, ns: str | None, pod: str, query: dict[str, list[str]]) -> None:
        if ("log", "pods/log") in self.api.forbidden:
            return self._send(403, _status(403, "Forbidden", "pods/log is forbidden"))
        lines = self.api.logs.get((ns or "", pod))
        if lines is None:
            return self._send(404, _status(404, "NotFound", f'pods "{pod}" not found'))
        since = int((query.get("sinceSeconds") or [10**9])[0])
        kept = [line for age, line in lines if age <= since]
        tail = int((query.get("tailLines") or [len(kept)])[0])
        text = "".join(line + "\n" for line in kept[-tail:] if tail)
        limit = int((query.get("limitBytes") or [len(text)])[0])
        return self._send(200, text[:limit], text=True)


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
