"""An incident set: the bundles of several nodes collected for one incident, each kept unchanged (its own
hashes inside), with a set manifest saying which engine asked which node, when, and what came of it."""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import Field, field_validator

from bundle.models._base import Model

SET_FORMAT = "netbundle-set"
SET_FORMAT_VERSION = "1.0"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class NodeOutcome(Model):
    node: str = Field(description="the node as named (an SSH host alias, a Kubernetes node)")
    outcome: str = Field(description="collected, incomplete (written, some slice partial), unreachable, "
                                     "netbundle_missing, sudo_refused, not_started (Kubernetes: the pod never ran "
                                     "its container: image pull, config), evicted, timeout, failed, invalid")
    detail: str = ""
    member: str | None = Field(default=None, description="nodes/<node>.tar.zst: the node's bundle, unchanged")
    sha256: str | None = Field(default=None, description="of the node's bundle file as it arrived")
    remote_sha256: str | None = Field(default=None, description="what the node said it wrote")
    bundle_id: str | None = None
    exit_code: int | None = Field(default=None, description="the remote collect's (or the engine's) exit code")
    started: datetime
    finished: datetime
    duration_s: float

    @field_validator("sha256", "remote_sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not _SHA256.match(v):
            raise ValueError("not a lowercase hex SHA-256")
        return v


class SetManifest(Model):
    format: str = SET_FORMAT
    format_version: str = SET_FORMAT_VERSION
    set_id: str
    engine: str = Field(description="ssh or kubernetes")
    created: datetime
    finished: datetime
    user: str
    argv: list[str]
    start_at: datetime | None = Field(default=None, description="the shared start every node was given, so the "
                                                                "windows and captures overlap")
    nodes: list[NodeOutcome]
