"""Test image: an HTTP server on $POD_IP:$PORT that reports its environment.

GET /healthz -> 200 once READY_AFTER seconds have passed; GET /env -> the environment as
JSON. SIGTERM is logged and the server exits 0 promptly, as a well-behaved pod should.
"""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.monotonic()
READY_AFTER = float(os.environ.get("READY_AFTER", "0"))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            ok = time.monotonic() - STARTED >= READY_AFTER
            body, code = (b"ok", 200) if ok else (b"warming up", 503)
        elif self.path == "/env":
            body, code = json.dumps(dict(os.environ)).encode(), 200
        else:
            body, code = os.environ.get("POD_NAME", "?").encode(), 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


server = ThreadingHTTPServer((os.environ["POD_IP"], int(os.environ.get("PORT", "8080"))), Handler)


def on_sigterm(signum: int, frame: object) -> None:
    print("got SIGTERM, shutting down", flush=True)
    threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGTERM, on_sigterm)
print(f"listening on {server.server_address}", flush=True)
server.serve_forever()
print("exited cleanly", flush=True)
sys.exit(0)
