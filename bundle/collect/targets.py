"""Parse the operator's targets: IP, IP:PORT, [IPv6]:PORT."""

from __future__ import annotations

import ipaddress

from bundle.errors import UsageError
from bundle.models import Target


def parse_target(spec: str) -> Target:
    text = spec.strip()
    port: int | None = None
    host = text
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise UsageError(f"bad target {spec!r}: missing ']'")
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"bad target {spec!r}: expected [IPv6]:PORT")
            port = _port(spec, rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(spec, p)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"bad target {spec!r}: {host!r} is not an IP address (names come with the DNS slice)") from None
    return Target(spec=spec, address=str(addr), port=port)


def _port(spec: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"bad target {spec!r}: port must be 1-65535")
    return int(text)
