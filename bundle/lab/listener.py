"""A tiny TCP server for lab scenarios: accept, send N bytes, close (or, with --hold, echo until the client
closes). Exits by itself."""

from __future__ import annotations

import argparse
import socket
import socketserver
import threading


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        size = self.server.send_bytes  # type: ignore[attr-defined]
        try:
            self.request.settimeout(10)
            self.request.sendall(b"x" * size)
            if self.server.hold:  # type: ignore[attr-defined]
                self.request.settimeout(None)  # a long-lived connection: echo until the client closes
                while data := self.request.recv(4096):
                    self.request.sendall(data)
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--send", type=int, default=64)
    p.add_argument("--hold", action="store_true", help="keep each connection open, echoing")
    p.add_argument("--lifetime", type=float, default=3600.0, help="seconds before exiting on its own")
    args = p.parse_args()
    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    _Server.address_family = family
    with _Server((args.bind, args.port), _Handler) as srv:
        srv.send_bytes = args.send  # type: ignore[attr-defined]
        srv.hold = args.hold  # type: ignore[attr-defined]
        threading.Timer(args.lifetime, srv.shutdown).start()
        srv.serve_forever()


if __name__ == "__main__":
    main()
