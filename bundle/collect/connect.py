"""A bounded TCP connect probe: connected, refused (RST), timed out, unreachable, with latency."""

from __future__ import annotations

import errno
import select
import socket
import struct
import time

from bundle.models import ConnectAttempt, ConnectOutcome, ConnectProbe

_RANK = {ConnectOutcome.CONNECTED: 0, ConnectOutcome.REFUSED: 1, ConnectOutcome.UNREACHABLE: 2,
         ConnectOutcome.PROHIBITED: 3, ConnectOutcome.TIMEOUT: 4, ConnectOutcome.ERROR: 5}
_ERRNO = {
    errno.ECONNREFUSED: (ConnectOutcome.REFUSED, "RST (or ICMP port unreachable)"),
    errno.ETIMEDOUT: (ConnectOutcome.TIMEOUT, "no answer"),
    errno.EHOSTUNREACH: (ConnectOutcome.UNREACHABLE, "host unreachable (ICMP, or no ARP/ND answer)"),
    errno.ENETUNREACH: (ConnectOutcome.UNREACHABLE, "network unreachable"),
    errno.EACCES: (ConnectOutcome.PROHIBITED, "prohibited by a local rule"),
    errno.EPERM: (ConnectOutcome.PROHIBITED, "prohibited by a local rule"),
}


def _attempt(address: str, port: int, timeout: float) -> ConnectAttempt:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Close with RST: a probe should leave no TIME-WAIT behind on either side.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.setblocking(False)
    start = time.monotonic()
    try:
        code = sock.connect_ex((address, port))
        if code == errno.EINPROGRESS:
            _, writable, _ = select.select([], [sock], [], timeout)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if writable else errno.ETIMEDOUT
        latency = round((time.monotonic() - start) * 1000, 3)
    finally:
        sock.close()
    if code == 0:
        return ConnectAttempt(outcome=ConnectOutcome.CONNECTED, latency_ms=latency)
    outcome, detail = _ERRNO.get(code, (ConnectOutcome.ERROR, None))
    return ConnectAttempt(outcome=outcome, latency_ms=latency, errno_name=errno.errorcode.get(code, str(code)),
                          detail=detail or f"connect failed: errno {code}")


def probe(target: str, address: str, port: int, attempts: int = 2, timeout: float = 2.0) -> ConnectProbe:
    """Up to `attempts` connects; a definite answer (connected, refused) ends the probe early."""
    done: list[ConnectAttempt] = []
    for _ in range(attempts):
        done.append(_attempt(address, port, timeout))
        if done[-1].outcome in (ConnectOutcome.CONNECTED, ConnectOutcome.REFUSED):
            break
    best = min((a.outcome for a in done), key=_RANK.__getitem__)
    return ConnectProbe(target=target, address=address, port=port, outcome=best, attempts=done, timeout_s=timeout)
