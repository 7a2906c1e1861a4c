"""The explicit list of collectors, keyed by name; a duplicate name is an error."""

from __future__ import annotations

from bundle.collect.base import Collector
from bundle.collect.capture import CaptureCollector
from bundle.collect.counters import CountersCollector
from bundle.collect.dns import DnsCollector
from bundle.collect.nat import NatCollector
from bundle.collect.route import RouteCollector
from bundle.collect.sockets import SocketsCollector

_COLLECTORS: tuple[type[Collector], ...] = (RouteCollector, SocketsCollector, DnsCollector, NatCollector,
                                             CaptureCollector, CountersCollector)


def collectors() -> dict[str, type[Collector]]:
    table: dict[str, type[Collector]] = {}
    for cls in _COLLECTORS:
        if cls.name in table:
            raise KeyError(f"two collectors named {cls.name!r}")
        table[cls.name] = cls
    return table
