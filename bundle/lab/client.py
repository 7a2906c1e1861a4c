"""A lab client that keeps connecting, like an application retrying: each attempt is held until it
connects (then closed) or its age limit passes. Exits by itself."""

from __future__ import annotations

import argparse
import errno
import select
import socket
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True, help="IP:PORT")
    p.add_argument("--interval", type=float, default=0.25)
    p.add_argument("--max-age", type=float, default=120.0, help="give up on an attempt after this long")
    p.add_argument("--max-open", type=int, default=1000)
    p.add_argument("--lifetime", type=float, default=3600.0)
    p.add_argument("--read", action="store_true", help="after connecting, read until EOF (a download)")
    p.add_argument("--hold", action="store_true", help="keep each connection open once it connects (a pool)")
    args = p.parse_args()
    host, _, port = args.target.rpartition(":")
    pending: dict[socket.socket, float] = {}
    readers: dict[socket.socket, float] = {}
    held: list[socket.socket] = []
    end = time.monotonic() + args.lifetime
    while time.monotonic() < end:
        if len(pending) + len(readers) + len(held) < args.max_open:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            if s.connect_ex((host, int(port))) in (0, errno.EINPROGRESS):
                pending[s] = time.monotonic()
            else:
                s.close()
        _, done, _ = select.select([], list(pending), [], args.interval) if pending else ([], [], [])
        now = time.monotonic()
        for s in list(pending):
            if args.read and s in done and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                readers[s] = pending.pop(s)  # connected: now it downloads
                continue
            if args.hold and s in done and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                pending.pop(s)
                held.append(s)  # connected: kept open, established, for as long as the client lives
                continue
            if s in done or now - pending[s] > args.max_age:
                pending.pop(s)
                s.close()
        if readers:
            readable, _, _ = select.select(list(readers), [], [], 0)
            for s in list(readers):
                gone = False
                if s in readable:
                    try:
                        gone = not s.recv(65536)
                    except OSError:
                        gone = True
                if gone or now - readers[s] > args.max_age:
                    readers.pop(s)
                    s.close()
        if not pending:
            time.sleep(args.interval)


if __name__ == "__main__":
    main()
