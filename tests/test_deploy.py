"""docs/deploy/ against the Kubernetes API's own schema (the OpenAPI-generated models of the `kubernetes`
client: every field must exist where it is written, with the right type, and required ones present), and the
RBAC rules against the calls the Kubernetes slice really makes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy"
_LIST = re.compile(r"^[Ll]ist\[(.+)\]$")
_DICT = re.compile(r"^(?:dict\(str, |Dict\[str, )(.+)[)\]]$")


def _check(value: Any, type_name: str, path: str, errors: list[str]) -> None:
    if m := _LIST.match(type_name):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            _check(item, m.group(1), f"{path}[{i}]", errors)
        return
    if m := _DICT.match(type_name):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map")
            return
        for key, item in value.items():
            _check(item, m.group(1), f"{path}.{key}", errors)
        return
    simple = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str}
    if type_name in simple:
        if not isinstance(value, simple[type_name]) or (type_name == "int" and isinstance(value, bool)):
            errors.append(f"{path}: expected {type_name}, got {type(value).__name__}")
        return
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a {type_name} object")
        return
    by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json:
            errors.append(f"{path}.{key}: not a field of {type_name}")
            continue
        _check(item, model.openapi_types[by_json[key]], f"{path}.{key}", errors)
    # required fields: the generated constructor refuses None for them
    try:
        model(**{by_json[k]: v for k, v in value.items() if k in by_json})
    except ValueError as exc:
        errors.append(f"{path}: {exc}")


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


@pytest.mark.parametrize("name,doc", _docs(), ids=lambda v: v if isinstance(v, str) else v.get("kind"))
def test_manifest_matches_the_api_schema(name, doc):
    kind = doc["kind"]
    version = doc["apiVersion"].split("/")[-1].capitalize()
    errors: list[str] = []
    _check(doc, f"{version}{kind}", kind, errors)
    assert not errors, errors


def test_schema_check_catches_mistakes():
    """The checker itself: a misspelt field, a wrong type and a missing required field are all reported."""
    errors: list[str] = []
    _check({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "imagee": "x"}], "hostPID": "yes"}}}},
           "V1Job", "Job", errors)
    _check({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"},
            "rules": [{"resources": ["pods"]}]}, "V1ClusterRole", "ClusterRole", errors)
    text = "\n".join(errors)
    assert "imagee: not a field of V1Container" in text and "hostPID: expected bool" in text and "verbs" in text


def _grants(docs) -> set[tuple[str, str, str]]:
    """(verb, resource.group, namespace or *) the RBAC documents allow."""
    out = set()
    for _name, doc in docs:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        scope = doc["metadata"].get("namespace", "*")
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add((verb, f"{resource}.{group}" if group else resource, scope))
    return out


def test_rbac_grants_exactly_what_the_slice_reads(tmp_path):
    """Every call the slice makes against the test API server is allowed by the manifests, and every rule is
    used by some call: nothing missing, nothing extra."""
    from bundle.collect.kube import KubeRequest, api_client, collect_kube
    from tests import kubeapi
    from tests.collect.test_kube import cluster

    with kubeapi.serve(cluster()) as api:
        client, server, context = api_client(str(api.kubeconfig(tmp_path)), None)
        doc = collect_kube(KubeRequest(services=(("default", "payments"),), pods=(("default", "client"),)),
                           client, server, context).doc
    grants = _grants([(n, d) for n, d in _docs() if n == "rbac.yaml"])
    used = set()
    for call in doc.calls:
        verb = "get" if call.verb == "log" else call.verb
        key = next(((verb, call.resource, scope) for scope in ("*", call.namespace) if (verb, call.resource, scope)
                    in grants), None)
        assert key is not None, f"not granted: {call.verb} {call.resource} in {call.namespace}"
        used.add(key)
    assert grants == used, grants - used
