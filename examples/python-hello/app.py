"""Gilgal's bundled example: a tiny Python web app (standard library only).

It serves on $PORT, reports which release answered, and exits cleanly on SIGTERM so a
rollout can drain it.
"""
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASE = os.environ.get("GILGAL_RELEASE", "dev")
GREETING = os.environ.get("GREETING", "Hello from Gilgal")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/sleep/"):
            # A slow request, to show that a rollout lets in-flight requests finish.
            time.sleep(min(float(self.path.rsplit("/", 1)[1] or 0), 30))
        if self.path == "/health":
            body = b"ok"
            content_type = "text/plain"
        else:
            body = json.dumps({"message": GREETING, "release": RELEASE, "path": self.path}).encode()
            content_type = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(json.dumps({"level": "info", "msg": fmt % args, "release": RELEASE}), flush=True)


def main():
    port = int(os.environ.get("PORT", "5000"))
    server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(json.dumps({"level": "info", "msg": f"listening on {port}", "release": RELEASE}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
