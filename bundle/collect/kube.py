"""The Kubernetes slice: the Services and pods the operator names, their EndpointSlices and backing pods, cluster
DNS (kube-dns Service, CoreDNS pods, Corefile, recent logs) and kube-proxy's configuration, read through the
`kubernetes` client. Every call is a read (get, list, log), has its own timeout and fits one overall budget;
a 401/403/404 or a timeout becomes a recorded ApiCall, never an exception. The API's JSON is kept as-is.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bundle.collect.kubeproxy import endpoint_slices
from bundle.collect.netpol import admin_policy_view, policy_view
from bundle.models import MediaType
from bundle.models.kube import (
    ApiCall,
    ClusterDns,
    ContainerPort,
    ContainerView,
    KubeProxyConfig,
    KubeSlice,
    NodeView,
    PodView,
    ServicePortView,
    ServiceView,
    target_port,
)
from bundle.models.policy import NamespaceView

MAX_PAGES = 10
# Policy APIs that decide beside or before NetworkPolicy (admin tiers first), where a cluster serves them:
# (group, version, plural, namespaced). Kept as the API's raw lists; a 404 means this cluster does not serve it.
OTHER_POLICIES = (
    ("policy.networking.k8s.io", "v1alpha1", "adminnetworkpolicies", False),
    ("policy.networking.k8s.io", "v1alpha1", "baselineadminnetworkpolicies", False),
    ("projectcalico.org", "v3", "globalnetworkpolicies", False),
    ("projectcalico.org", "v3", "networkpolicies", True),
    ("cilium.io", "v2", "ciliumclusterwidenetworkpolicies", False),
    ("cilium.io", "v2", "ciliumnetworkpolicies", True),
)
PAGE = 200
MAX_OBJECT_BYTES = 8 << 20
MAX_LOG_BYTES = 256 << 10
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
ROOT = "vantages/kubernetes-api"


@dataclass(frozen=True)
class KubeRequest:
    services: tuple[tuple[str, str], ...] = ()
    pods: tuple[tuple[str, str], ...] = ()
    kubeconfig: str | None = None
    context: str | None = None
    budget_s: float = 20.0
    call_timeout_s: float = 5.0
    log_since_s: int = 300
    log_lines: int = 500


@dataclass
class KubeResult:
    doc: KubeSlice
    members: list[tuple[str, bytes, str, str]] = field(default_factory=list)  # path, data, media type, source
    raw_endpoint_slices: list[dict[str, Any]] = field(default_factory=list)  # as the API sent them (for the NAT slice)


class KubeConfigError(Exception):
    """No usable kubeconfig or in-cluster configuration."""


def api_client(kubeconfig: str | None, context: str | None) -> tuple[Any, str, str | None]:
    """(ApiClient, server URL, context) from a kubeconfig (or in-cluster when there is none and we run in a pod).
    A client of our own: the library's global default configuration is never touched."""
    import yaml
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    cfg.retries = 0  # one try per call: the budget, not urllib3, decides how long we wait
    try:
        if kubeconfig is None and not context:
            try:
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                return client.ApiClient(configuration=cfg), cfg.host, None
            except ConfigException:
                pass
        config.load_kube_config(config_file=kubeconfig, context=context,  # type: ignore[no-untyped-call]
                                client_configuration=cfg, persist_config=False)
    except (ConfigException, OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KubeConfigError(f"no usable Kubernetes configuration: {first}") from None
    return client.ApiClient(configuration=cfg), cfg.host, context


def _name(value: str) -> str:
    return _SAFE.sub("_", value)[:120] or "_"


class _Api:
    """Calls with a per-call timeout inside one budget; each one recorded, its answer kept as a member."""

    def __init__(self, req: KubeRequest, result: KubeResult) -> None:
        self.req = req
        self.result = result
        self.deadline = time.monotonic() + req.budget_s

    @property
    def calls(self) -> list[ApiCall]:
        return self.result.doc.calls

    def _timeout(self) -> float:
        return min(self.req.call_timeout_s, self.deadline - time.monotonic())

    def _record(self, call: ApiCall, started: float) -> None:
        call.duration_s = round(time.monotonic() - started, 6)
        self.calls.append(call)

    def request(self, verb: str, resource: str, fn: Callable[..., Any], *args: Any, namespace: str | None = None,
                name: str | None = None, selector: str | None = None, text: bool = False, member: str | None = None,
                absent_ok: bool = False, **kwargs: Any) -> Any:
        """One call; the decoded answer (JSON, or text for logs) or None when it failed (and says why)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        call = ApiCall(verb=verb, resource=resource, namespace=namespace, name=name, selector=selector, outcome="ok")
        started = time.monotonic()
        left = self._timeout()
        if left < 0.2:
            call.outcome, call.detail = "skipped", "the Kubernetes budget was spent"
            self.result.doc.truncated = True
            self._record(call, started)
            return None
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=(min(2.0, left), left), **kwargs)
            raw = resp.data[:MAX_OBJECT_BYTES if not text else MAX_LOG_BYTES]
            call.status = resp.status
        except ApiException as exc:
            call.status = exc.status
            call.outcome = {401: "unauthorized", 403: "forbidden", 404: "not_served" if absent_ok else "not_found"}.get(
                exc.status or 0, "error")
            call.detail = _api_message(exc)
            self._record(call, started)
            return None
        except (HTTPError, OSError) as exc:
            call.outcome = "timeout" if "timed out" in str(exc).lower() else "error"
            call.detail = str(exc)[:300]
            self._record(call, started)
            return None
        if text:
            value: Any = raw.decode(errors="replace")
        else:
            try:
                value = json.loads(raw)
            except ValueError:
                call.outcome, call.detail = "error", "the answer is not JSON"
                self._record(call, started)
                return None
            if isinstance(value, dict) and isinstance(value.get("items"), list):
                call.items = len(value["items"])
        if member:
            call.member = f"{ROOT}/{member}"
            self.result.members.append((call.member, raw, MediaType.TEXT if text else MediaType.JSON,
                                        f"kubernetes API {verb} {resource}"))
        self._record(call, started)
        return value

    def get(self, resource: str, fn: Callable[..., Any], namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.request("get", resource, fn, name, namespace, namespace=namespace, name=name,
                           member=f"objects/{_name(resource)}/{_name(namespace)}/{_name(name)}.json")
        return obj if isinstance(obj, dict) else None

    def get_cluster(self, resource: str, fn: Callable[..., Any], name: str) -> dict[str, Any] | None:
        obj = self.request("get", resource, fn, name, name=name,
                           member=f"objects/{_name(resource)}/_cluster/{_name(name)}.json")
        return obj if isinstance(obj, dict) else None

    def list(self, resource: str, fn: Callable[..., Any], namespace: str, selector: str | None) -> list[dict[str, Any]]:
        """Every page (`continue`), up to MAX_PAGES; the items, each page kept as a member."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        for page in range(MAX_PAGES):
            kwargs: dict[str, Any] = {"limit": PAGE}
            if selector:
                kwargs["label_selector"] = selector
            if token:
                kwargs["_continue"] = token
            tag = _name(selector or "all")
            obj = self.request("list", resource, fn, namespace, namespace=namespace, selector=selector,
                               member=f"objects/{_name(resource)}/{_name(namespace)}/list-{tag}-{page}.json", **kwargs)
            if not isinstance(obj, dict):
                break
            items += [i for i in obj.get("items") or [] if isinstance(i, dict)]
            token = (obj.get("metadata") or {}).get("continue")
            if not token:
                break
        return items


def _api_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or exc.reason or "")[:300]
    except (ValueError, TypeError, AttributeError):
        return str(getattr(exc, "reason", "") or "")[:300]


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def service_view(obj: dict[str, Any]) -> ServiceView:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ports = []
    for p in spec.get("ports") or []:
        if isinstance(p, dict) and _int(p.get("port")) is not None:
            tp = p.get("targetPort")
            ports.append(ServicePortView(name=_str(p.get("name")), protocol=_str(p.get("protocol")) or "TCP",
                                         port=p["port"], target_port=None if tp is None else str(tp),
                                         node_port=_int(p.get("nodePort"))))
    ips = [i for i in spec.get("clusterIPs") or [] if isinstance(i, str)] or \
        ([spec["clusterIP"]] if isinstance(spec.get("clusterIP"), str) else [])
    selector = {str(k): str(v) for k, v in (spec.get("selector") or {}).items()}
    return ServiceView(namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
                       type=_str(spec.get("type")), cluster_ips=ips, ports=ports, selector=selector,
                       session_affinity=_str(spec.get("sessionAffinity")),
                       internal_traffic_policy=_str(spec.get("internalTrafficPolicy")),
                       external_traffic_policy=_str(spec.get("externalTrafficPolicy")))


def pod_view(obj: dict[str, Any]) -> PodView:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    statuses = {s.get("name"): s for s in status.get("containerStatuses") or [] if isinstance(s, dict)}
    containers = []
    for c in spec.get("containers") or []:
        if not isinstance(c, dict):
            continue
        st = statuses.get(c.get("name"), {})
        ports = [p for p in c.get("ports") or [] if isinstance(p, dict) and _int(p.get("containerPort")) is not None]
        containers.append(ContainerView(
            name=str(c.get("name", "")),
            ports=[p["containerPort"] for p in ports],
            named_ports=[ContainerPort(name=p["name"], port=p["containerPort"],
                                       protocol=str(p.get("protocol") or "TCP").upper())
                         for p in ports if isinstance(p.get("name"), str) and p["name"]],
            ready=st.get("ready") if isinstance(st.get("ready"), bool) else None,
            restarts=_int(st.get("restartCount")) or 0))
    ips = [str(p["ip"]) for p in status.get("podIPs") or [] if isinstance(p, dict) and isinstance(p.get("ip"), str)]
    if not ips and isinstance(status.get("podIP"), str):
        ips = [status["podIP"]]
    ready = next((c.get("status") == "True" for c in status.get("conditions") or []
                  if isinstance(c, dict) and c.get("type") == "Ready"), None)
    dns_config = spec.get("dnsConfig") if isinstance(spec.get("dnsConfig"), dict) else None
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()} if isinstance(meta.get("labels"), dict) \
        else {}
    return PodView(namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")), uid=_str(meta.get("uid")),
                   labels=labels,
                   node=_str(spec.get("nodeName")), pod_ips=ips, host_network=spec.get("hostNetwork") is True,
                   dns_policy=_str(spec.get("dnsPolicy")), dns_config=dns_config, phase=_str(status.get("phase")),
                   ready=ready, containers=containers)


def node_view(obj: dict[str, Any]) -> NodeView:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    addresses: dict[str, list[str]] = {}
    for a in status.get("addresses") or []:
        if isinstance(a, dict) and isinstance(a.get("type"), str) and isinstance(a.get("address"), str):
            addresses.setdefault(a["type"], []).append(a["address"])
    cidrs = [c for c in spec.get("podCIDRs") or [] if isinstance(c, str)] or \
        ([spec["podCIDR"]] if isinstance(spec.get("podCIDR"), str) else [])
    return NodeView(name=str(meta.get("name", "")), pod_cidrs=cidrs, addresses=addresses)


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


_LOG_PLUGIN = re.compile(r"^\s*log(\s|$)", re.MULTILINE)


def _kube_proxy_config(cm: dict[str, Any] | None, ds: dict[str, Any] | None) -> KubeProxyConfig | None:
    if cm is None and ds is None:
        return None
    out = KubeProxyConfig()
    text = ((cm or {}).get("data") or {}).get("config.conf")
    if isinstance(text, str):
        import yaml

        try:
            conf = yaml.safe_load(text)
        except yaml.YAMLError:
            conf = None
        if isinstance(conf, dict):
            out.mode = str(conf.get("mode") or "")
            ct = conf.get("conntrack")
            if isinstance(ct, dict):
                out.conntrack = {str(k): v for k, v in ct.items() if isinstance(v, (str, int, float, bool)) or v is None}
    status = (ds or {}).get("status") or {}
    if ds is not None:
        out.daemonset_ready = f"{status.get('numberReady', '?')}/{status.get('desiredNumberScheduled', '?')}"
    return out


def _other_policies(api: _Api, doc: KubeSlice, fn: Callable[..., Any], group: str, version: str, plural: str,
                    ns: str | None) -> None:
    """One policy API's objects, kept raw and counted (`other_policies`: resource -> count); not served (404) is
    the cluster's answer, not a failure."""
    resource = f"{plural}.{group}"
    member = f"objects/{_name(resource)}/{_name(ns or '_cluster')}/list.json"
    args = (group, version, ns, plural) if ns is not None else (group, version, plural)
    items = api.request("list", resource, fn, *args, namespace=ns, member=member, limit=PAGE, absent_ok=True)
    if isinstance(items, dict):
        key = resource if ns is None else f"{resource} -n {ns}"
        objects = [i for i in items.get("items") or [] if isinstance(i, dict)]
        doc.other_policies[key] = len(objects)
        if group == "policy.networking.k8s.io":  # the admin tiers are evaluated with NetworkPolicy
            kind = "AdminNetworkPolicy" if plural == "adminnetworkpolicies" else "BaselineAdminNetworkPolicy"
            doc.admin_policies += [v for o in objects if (v := admin_policy_view(o, kind)) is not None]


def collect_kube(req: KubeRequest, client: Any, server: str, context: str | None) -> KubeResult:
    """Everything the request asks for, in order of importance, until the budget is spent."""
    from kubernetes import client as k

    result = KubeResult(doc=KubeSlice(server=server, context=context, calls=[]))
    api = _Api(req, result)
    core, discovery = k.CoreV1Api(client), k.DiscoveryV1Api(client)
    apps, networking = k.AppsV1Api(client), k.NetworkingV1Api(client)
    custom = k.CustomObjectsApi(client)
    doc = result.doc
    namespaces: list[str] = []
    raw_slices: list[dict[str, Any]] = []
    pods: dict[tuple[str, str], PodView] = {}

    for ns, name in req.services:
        namespaces.append(ns)
        svc = api.get("services", core.read_namespaced_service, ns, name)
        if svc is not None:
            view = service_view(svc)
            doc.services.append(view)
        raw_slices += api.list("endpointslices.discovery.k8s.io", discovery.list_namespaced_endpoint_slice, ns,
                               f"kubernetes.io/service-name={name}")
        if svc is not None and doc.services[-1].selector:
            for p in api.list("pods", core.list_namespaced_pod, ns, _selector(doc.services[-1].selector)):
                v = pod_view(p)
                pods[(v.namespace, v.name)] = v
    nodes: list[str] = []
    for ns, name in req.pods:
        namespaces.append(ns)
        obj = api.get("pods", core.read_namespaced_pod, ns, name)
        if obj is not None:
            v = pod_view(obj)
            pods[(v.namespace, v.name)] = v
            if v.node and v.node not in nodes:
                nodes.append(v.node)
    for node in nodes:
        obj = api.get_cluster("nodes", core.read_node, node)
        if obj is not None:
            doc.nodes.append(node_view(obj))

    dns = ClusterDns()
    svc = api.get("services", core.read_namespaced_service, "kube-system", "kube-dns")
    dns.service = service_view(svc) if svc is not None else None
    raw_slices += api.list("endpointslices.discovery.k8s.io", discovery.list_namespaced_endpoint_slice, "kube-system",
                           "kubernetes.io/service-name=kube-dns")
    dns.pods = [pod_view(p) for p in api.list("pods", core.list_namespaced_pod, "kube-system", "k8s-app=kube-dns")]
    cm = api.get("configmaps", core.read_namespaced_config_map, "kube-system", "coredns")
    corefile = ((cm or {}).get("data") or {}).get("Corefile")
    if isinstance(corefile, str):
        dns.corefile = corefile
        dns.log_enabled = bool(_LOG_PLUGIN.search(corefile))
    for dns_pod in dns.pods[:3]:
        member = f"logs/kube-system/{_name(dns_pod.name)}.log"
        text = api.request("log", "pods/log", core.read_namespaced_pod_log, dns_pod.name, "kube-system",
                           namespace="kube-system", name=dns_pod.name, text=True, member=member,
                           since_seconds=req.log_since_s, tail_lines=req.log_lines, limit_bytes=MAX_LOG_BYTES)
        if isinstance(text, str):
            dns.log_members.append(f"{ROOT}/{member}")
    doc.cluster_dns = dns

    doc.kube_proxy = _kube_proxy_config(
        api.get("configmaps", core.read_namespaced_config_map, "kube-system", "kube-proxy"),
        api.get("daemonsets.apps", apps.read_namespaced_daemon_set, "kube-system", "kube-proxy"))
    # NetworkPolicies decide flows by the labels of pods and namespaces: the policies of every namespace involved
    # (the client's, the Services' and their endpoints', the cluster DNS's) and those namespaces' labels
    for ns in dict.fromkeys([*namespaces, "kube-system"]):
        member = f"objects/networkpolicies.networking.k8s.io/{_name(ns)}/list.json"
        items = api.request("list", "networkpolicies.networking.k8s.io", networking.list_namespaced_network_policy, ns,
                            namespace=ns, member=member, limit=PAGE)
        if isinstance(items, dict):
            objects = [i for i in items.get("items") or [] if isinstance(i, dict)]
            doc.network_policies[ns] = len(objects)
            for obj in objects:
                pol = policy_view(obj, member=f"{ROOT}/{member}")
                if pol is not None:
                    doc.policies.append(pol)
        for group, version, plural, namespaced in OTHER_POLICIES:
            if namespaced:
                _other_policies(api, doc, custom.list_namespaced_custom_object, group, version, plural, ns)
        obj = api.get_cluster("namespaces", core.read_namespace, ns)
        if obj is not None:
            labels = (obj.get("metadata") or {}).get("labels")
            doc.namespaces.append(NamespaceView(name=ns, labels={str(k): str(v) for k, v in labels.items()}
                                                if isinstance(labels, dict) else {}))
    for group, version, plural, namespaced in OTHER_POLICIES:
        if not namespaced:
            _other_policies(api, doc, custom.list_cluster_custom_object, group, version, plural, None)
    doc.endpoint_slices = endpoint_slices(raw_slices)
    result.raw_endpoint_slices = raw_slices
    doc.pods = list(pods.values())
    return result


MAX_ENDPOINT_TARGETS = 8


def service_targets(doc: KubeSlice) -> tuple[list[tuple[str, int]], list[str]]:
    """What the three hops need probing, from the Services asked about: each ClusterIP:port, each ready
    endpoint's IP:port (at most MAX_ENDPOINT_TARGETS per Service), and the Service's cluster DNS name."""
    addresses: list[tuple[str, int]] = []
    names: list[str] = []
    for svc in doc.services:
        names.append(f"{svc.name}.{svc.namespace}.svc.cluster.local")
        for ip in svc.cluster_ips:
            if ip and ip != "None":
                addresses += [(ip, p.port) for p in svc.ports]
        kept = 0
        for view in [v for v in doc.endpoint_slices if v.service == f"{svc.namespace}/{svc.name}"]:
            for port in svc.ports:
                target = target_port(port, [view])
                if target is None:
                    continue
                for ep in view.endpoints:
                    if ep.ready is False:
                        continue
                    for a in ep.addresses:
                        if kept < MAX_ENDPOINT_TARGETS:
                            addresses.append((a, target))
                            kept += 1
    return list(dict.fromkeys(addresses)), list(dict.fromkeys(names))
