"""A tiny HTTP service for demos and tests: `python -m federation.demo PORT`.

Answers `/health` (200 once started, or 503 while FAIL_HEALTH is set) and `/`
with who it is: service, region, instance and epoch from the FEDERATION_* environment.
With DEMO_ANNOUNCE=HOST:PORT it tells a listener, once serving, one JSON line: its
instance, port and a random id of this life of the process (the driver contract tests
identify instances by it, whatever namespaces the driver puts them in).
Standard library only, so any instance can run it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            ok = not os.environ.get("FAIL_HEALTH")
            body = b"ok\n" if ok else b"failing on purpose\n"
            self.send_response(200 if ok else 503)
        else:
            body = json.dumps(
                {
                    k.removeprefix("FEDERATION_").lower(): v
                    for k, v in os.environ.items()
                    if k.startswith("FEDERATION_")
                }
            ).encode()
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: instance logs are for the service's own messages


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    announce = os.environ.get("DEMO_ANNOUNCE")
    if announce:
        host, _, listener = announce.rpartition(":")
        line = {"instance": os.environ.get("FEDERATION_INSTANCE"), "port": port}
        line["life"] = secrets.token_hex(8)
        with socket.create_connection((host, int(listener)), timeout=5) as conn:
            conn.sendall(json.dumps(line).encode() + b"\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
