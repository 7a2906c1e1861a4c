"""Every registered collector declares itself, and the engine survives it failing."""

from __future__ import annotations

from bundle.collect.base import Collector, Needs
from bundle.collect.registry import collectors
from bundle.collect.targets import parse_target
from bundle.collect import vantage

import pytest

from bundle.errors import UsageError


def test_collectors_declare_name_description_needs():
    table = collectors()
    assert "route" in table
    for name, cls in table.items():
        assert issubclass(cls, Collector) and cls.name == name and cls.description
        assert isinstance(cls.needs, Needs)


def test_needs_are_values():
    assert Needs(capabilities=("CAP_NET_ADMIN",)).unmet(["CAP_NET_RAW"]) == ["needs CAP_NET_ADMIN"]
    assert Needs(capabilities=("CAP_NET_ADMIN",)).unmet(["CAP_NET_ADMIN"]) == []


@pytest.mark.parametrize("spec, address, port", [
    ("10.96.0.10", "10.96.0.10", None),
    ("10.96.0.10:53", "10.96.0.10", 53),
    ("[fd00::a]:443", "fd00::a", 443),
    ("fd00::a", "fd00::a", None),
])
def test_targets(spec, address, port):
    t = parse_target(spec)
    assert (t.address, t.port, t.spec) == (address, port, spec)


def test_name_targets():
    t = parse_target("payments.default:443")
    assert (t.name, t.address, t.port) == ("payments.default", None, 443)
    assert parse_target("kubernetes.default.svc.cluster.local.").name == "kubernetes.default.svc.cluster.local."


@pytest.mark.parametrize("spec", ["-bad", "10.0.0.1:0", "[fd00::1", "10.0.0.1:http", "[fd00::1]x", "a..b",
                                  "x" * 64, "has space", "10.1.2"])
def test_bad_targets(spec):
    with pytest.raises(UsageError):
        parse_target(spec)


def test_vantage_ids_are_unique_and_safe():
    specs = vantage.dedupe([vantage.host(), vantage.named("a b"), vantage.named("a_b"), vantage.named("a b")])
    assert [s.id for s in specs] == ["host", "netns-a_b", "netns-a_b-2"]
    with pytest.raises(UsageError):
        vantage.named("../x")
    with pytest.raises(UsageError):
        vantage.pid("-1")
