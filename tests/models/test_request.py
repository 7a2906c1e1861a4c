"""The collect options as one typed value: what the CLI builds travels as JSON to each agent (and, for a fleet,
to each node) and comes back equal; a value of the wrong type or an option a node does not know is refused
there, never silently dropped."""

from __future__ import annotations

import pydantic
import pytest

from bundle.models.request import CollectOptions


def test_round_trip_is_exact():
    opts = CollectOptions(socket_samples=3, socket_interval=0.5, socket_rows=0, capture_bytes=1 << 20,
                          capture_filter="tcp port 443", dns_names=["payments", "api.example.com"],
                          dns_timeout=1.5, route_from="fd00:10:244:1::2", nat_keep=0, endpointslices="/tmp/s.json")
    again = CollectOptions.model_validate_json(opts.model_dump_json())
    assert again == opts and again.socket_rows == 0 and again.nat_keep == 0  # zero is a value, not "unset"
    assert CollectOptions.model_validate(opts.model_dump(mode="json")) == opts


def test_unknown_or_mistyped_options_are_refused():
    with pytest.raises(pydantic.ValidationError):
        CollectOptions.model_validate({"socket_sample": 3})  # a typo, or an option from a newer netbundle
    with pytest.raises(pydantic.ValidationError):
        CollectOptions.model_validate({"socket_samples": "3"})  # strings parsed back are gone
    with pytest.raises(pydantic.ValidationError):
        CollectOptions(capture_bytes=1024)  # under the capture's floor
