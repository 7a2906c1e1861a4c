"""Which vantage is what to one target's flow: the client (whose verdict it is), the path (vantages that forward
the client's traffic: each next hop's owner, followed hop by hop), the servers (vantages holding the target's
address, or a translated endpoint's) and the rest (context).

A failure seen from a context vantage is that vantage's own: the node's host-side route to a ClusterIP is a path
the pod's traffic never takes."""

from __future__ import annotations

from dataclasses import dataclass, field

from bundle.analyze._common import VantageDocs
from bundle.models import Manifest, Role, VantageKind


@dataclass(frozen=True)
class Flow:
    """One target's flow from the client, with the evidence's vantages placed on it."""

    spec: str
    client: str | None
    addresses: frozenset[str]      # what the client dials (a name target: what its resolver answered)
    names: frozenset[str]
    port: int | None
    endpoints: frozenset[str]      # what a Service frontend among the addresses is translated to, on the path
    path: tuple[str, ...] = ()     # in hop order
    servers: frozenset[str] = frozenset()
    roles: dict[str, Role] = field(default_factory=dict)

    def role(self, vantage: str) -> Role:
        return self.roles.get(vantage, Role.CONTEXT)

    def upstream(self) -> set[str]:
        """The client and its path: where a cause of the client's failure can sit."""
        return ({self.client} if self.client else set()) | set(self.path)

    def covers(self, address: str | None) -> bool:
        return address is not None and (address in self.addresses or address in self.endpoints)


def client_of(manifest: Manifest) -> str | None:
    """The manifest's client (1.2), else the first vantage that is a netns or the host."""
    if manifest.client and any(v.id == manifest.client for v in manifest.vantages):
        return manifest.client
    return next((v.id for v in manifest.vantages if v.kind is not VantageKind.KUBERNETES_API and v.error is None),
                None)


def frontends(docs: list[VantageDocs]) -> dict[str, set[str]]:
    """Service frontend address -> the endpoint addresses any vantage's dataplane translates it to."""
    out: dict[str, set[str]] = {}
    for d in docs:
        if d.nat is None:
            continue
        for s in d.nat.services:
            if s.address:
                out.setdefault(s.address, set()).update(e.address for e in s.endpoints)
    return out


def place(spec: str, client: str | None, addresses: set[str], names: set[str], port: int | None,
          docs: list[VantageDocs], translated: dict[str, set[str]]) -> Flow:
    by_id = {d.vantage: d for d in docs}
    endpoints = {e for a in addresses for e in translated.get(a, set())}
    # IPVS puts every ClusterIP on the node's kube-ipvs0: a vantage that translates the address is on the path
    translators = {d.vantage for d in docs if any(d.translates(a) for a in addresses)}
    servers = {d.vantage for d in docs if any(d.holds(a) for a in addresses | endpoints)} - translators
    path: list[str] = []
    here = by_id.get(client) if client else None
    while here is not None and here.route is not None and len(path) < len(docs):
        hop = next((lk.gateway for lk in here.route.lookups if lk.ok and lk.target in addresses
                    and lk.source is None and lk.iif is None and lk.gateway), None)
        nxt = next((d for d in docs if hop and d.holds(hop) and d.vantage != client), None)
        if nxt is None or nxt.vantage in path or nxt.vantage in servers:
            break
        path.append(nxt.vantage)
        # a vantage that translates the frontend sends the flow to the endpoints: the hop chain ends there
        if nxt.vantage in translators:
            break
        here = nxt
    roles = {d.vantage: Role.CONTEXT for d in docs}
    roles.update({v: Role.SERVER for v in servers})
    roles.update({v: Role.PATH for v in path})
    if client:
        roles[client] = Role.CLIENT
    return Flow(spec=spec, client=client, addresses=frozenset(addresses), names=frozenset(names), port=port,
                endpoints=frozenset(endpoints), path=tuple(path), servers=frozenset(servers - {client}),
                roles=roles)
