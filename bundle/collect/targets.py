"""Parse the operator's targets: IP, IP:PORT, [IPv6]:PORT, NAME, NAME:PORT."""

from __future__ import annotations

import ipaddress
import re

from bundle.errors import UsageError
from bundle.models import Target

_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def valid_name(name: str) -> bool:
    """A DNS name as a resolver would accept it (an optional trailing dot makes it absolute)."""
    body = name[:-1] if name.endswith(".") else name
    return 0 < len(body) <= 253 and all(_LABEL.match(label) for label in body.split("."))


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
        return Target(spec=spec, address=str(ipaddress.ip_address(host)), port=port)
    except ValueError:
        pass
    if not valid_name(host) or host.replace(".", "").isdigit():
        raise UsageError(f"bad target {spec!r}: {host!r} is neither an IP address nor a DNS name")
    return Target(spec=spec, name=host, port=port)


def parse_address(spec: str, option: str) -> str:
    """An option that takes an IP address only; a bad one is named with its option."""
    try:
        return str(ipaddress.ip_address(spec.strip()))
    except ValueError:
        raise UsageError(f"{option} {spec!r}: not an IP address") from None


def _port(spec: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"bad target {spec!r}: port must be 1-65535")
    return int(text)
