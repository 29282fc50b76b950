"""A simulated ACME meter (a TCP server in a thread), for the example's tests and demos."""

from __future__ import annotations

import socketserver
import threading


class AcmeMeter:
    def __init__(self, meter_id: str, values: dict[str, str]):
        self.meter_id, self.values = meter_id, values
        self.requests = 0
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline().decode("ascii", "replace").strip()
                outer.requests += 1
                if line != f"READ {outer.meter_id}":
                    self.wfile.write(b"ERR unknown meter\n")
                    return
                body = ";".join(f"{k}={v}" for k, v in outer.values.items())
                self.wfile.write(f"OK {body}\n".encode())

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
