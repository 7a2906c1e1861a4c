"""Open many sockets in mixed states inside the current netns, then wait: for tests and benchmarks.

    python -m bundle.lab.socketfarm --total 10000 --ready FILE [--lifetime S]
    with running("nbt-x", 10000): ...      # the same inside a named netns, from tests and benchmarks

Mix (of --total): ~40% ESTAB (both ends held), ~20% TIME-WAIT, ~20% CLOSE-WAIT (and the peer's
FIN-WAIT-2), ~10% UDP (bound, some connected), the rest LISTEN on distinct ports. Both families: every
fifth listener is on ::1, one more listens on [::] dual-stack and takes IPv4 clients (rows read
::ffff:127.0.0.1, as a Java server's do), and connections and UDP sockets are spread over all three.
Everything is on 127.0.0.1/::1 inside the netns; nothing leaves it.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bundle.errors import LabError

BASE_PORT = 20000
PER_PROCESS = 8000


def _listeners(n: int, base: int, backlog: int = 4096) -> list[socket.socket]:
    out = []
    for i in range(n):
        s = socket.socket(socket.AF_INET6 if i % 5 == 4 else socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::1" if i % 5 == 4 else "127.0.0.1", base + i))
        s.listen(backlog)
        out.append(s)
    return out


def _dual_stack_listener(port: int, backlog: int = 4096) -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(backlog)
    return s


def build(total: int, base: int = BASE_PORT) -> list[socket.socket]:
    hold: list[socket.socket] = []
    n_listen = max(5, total // 100)
    listeners = _listeners(n_listen, base)
    mapped = _dual_stack_listener(base + n_listen)  # the next port; workers' ranges leave a gap of 10
    hold += [*listeners, mapped]
    # (listener, client family, address the client dials): IPv4, IPv6, and IPv4 into the dual-stack one
    targets = [(s, s.family, s.getsockname()[:2]) for s in listeners]
    targets.append((mapped, socket.AF_INET, ("127.0.0.1", base + n_listen)))

    def pair(i: int) -> tuple[socket.socket, socket.socket]:
        lst, family, address = targets[i % len(targets)]
        c = socket.socket(family, socket.SOCK_STREAM)
        c.connect(address)
        srv, _ = lst.accept()
        return c, srv

    n_estab = int(total * 0.4) // 2
    n_tw = int(total * 0.2)
    n_cw = int(total * 0.2) // 2
    n_udp = int(total * 0.1)
    k = 0
    for _ in range(n_estab):
        hold += pair(k)
        k += 1
    for _ in range(n_tw):
        c, srv = pair(k)
        k += 1
        c.close()  # the client closes first: it ends in TIME-WAIT once the server closes too
        srv.close()
    for _ in range(n_cw):
        c, srv = pair(k)
        k += 1
        c.shutdown(socket.SHUT_WR)  # FIN from the client: the server side sits in CLOSE-WAIT
        hold += [c, srv]
    for i in range(n_udp):
        six = i % 3 == 2  # a third of them IPv6, connected and not
        u = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("::1" if six else "127.0.0.1", 0))
        if i % 2:
            u.connect(("::1" if six else "127.0.0.1", base + (i % n_listen)))
        hold.append(u)
    return hold


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--total", type=int, required=True)
    p.add_argument("--ready", type=Path, required=True)
    p.add_argument("--lifetime", type=float, default=600.0)
    args = p.parse_args()
    # Each process holds at most PER_PROCESS sockets, so the farm fits any fd limit a machine sets.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    per_process = max(1000, min(PER_PROCESS, hard - 1024))
    shares = [min(per_process, args.total - i) for i in range(0, args.total, per_process)]
    children = []
    done_r, done_w = os.pipe()
    for k, share in enumerate(shares[1:], start=1):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(done_r)
            held = build(share, BASE_PORT + k * (per_process // 100 + 10))  # the sockets live while this does
            os.write(done_w, b"+")
            time.sleep(args.lifetime)
            held.clear()
            os._exit(0)
        children.append(pid)
    os.close(done_w)
    held = build(shares[0])  # the sockets live as long as this list
    got = 0
    while got < len(children):  # each child writes one byte once its sockets are open
        chunk = os.read(done_r, 64)
        if not chunk:
            raise SystemExit("a farm worker died before it was ready")
        got += len(chunk)
    args.ready.write_text(str(args.total))
    try:
        time.sleep(args.lifetime)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        held.clear()


@contextmanager
def running(netns_name: str, total: int, lifetime: float = 600.0, timeout_s: float = 120.0) -> Iterator[int]:
    """A farm of `total` sockets inside a named netns while the block runs (killed after); yields its pid."""
    with tempfile.TemporaryDirectory(prefix="nbt-farm-") as tmp:
        ready = Path(tmp) / "ready"
        proc = subprocess.Popen(["ip", "netns", "exec", netns_name, sys.executable, "-m", "bundle.lab.socketfarm",
                                 "--total", str(total), "--ready", str(ready), "--lifetime", str(lifetime)],
                                cwd=Path(__file__).resolve().parents[2])
        try:
            deadline = time.monotonic() + timeout_s
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise LabError(f"socket farm of {total} in {netns_name} did not start")
                time.sleep(0.05)
            yield proc.pid
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
