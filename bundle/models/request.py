"""What a collect was asked for, beyond targets and vantages: one typed, serialisable value that travels
unchanged from the command line to each vantage's agent (and, for a fleet, to each node). A field left None
means the slice's own default, so the defaults stay with the slices that own them."""

from __future__ import annotations

from pydantic import Field

from bundle.models._base import Model


class CollectOptions(Model):
    # sockets
    socket_samples: int | None = Field(default=None, ge=1)
    socket_interval: float | None = Field(default=None, ge=0)
    socket_rows: int | None = Field(default=None, ge=0)
    # capture
    capture_packets: int | None = Field(default=None, ge=1)
    capture_bytes: int | None = Field(default=None, ge=4096)
    capture_seconds: float | None = Field(default=None, gt=0)
    snaplen: int | None = Field(default=None, ge=16, le=262144)
    capture_filter: str | None = None
    capture_iface: str | None = None
    capture_min_seconds: float | None = Field(default=None, gt=0, description="keep capturing at least this long, "
                                              "even once the other slices are done: a fleet's nodes share one window")
    # DNS
    dns_names: list[str] = Field(default_factory=list)
    dns_server: str | None = None
    dns_timeout: float | None = Field(default=None, gt=0)
    # route
    route_from: str | None = None
    route_iif: str | None = None
    # NAT / conntrack
    nat_keep: int | None = Field(default=None, ge=0)
    nat_samples: int | None = Field(default=None, ge=1)
    nat_interval: float | None = Field(default=None, ge=0)
    endpointslices: str | None = Field(default=None, description="a file of EndpointSlices (kubectl -o json)")
    # counters
    counter_interval: float | None = Field(default=None, gt=0)
