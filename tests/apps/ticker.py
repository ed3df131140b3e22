"""A ``command:`` replica that prints ``ticker started``, then ``tick N`` every
``TICK_SECONDS`` (0.2), and answers 200 to every GET on ``$PORT`` (its probes).

Run: ``PORT=8001 python -m tests.apps.ticker``.
"""

from __future__ import annotations

import http.server
import os
import threading
import time

INTERVAL = float(os.environ.get("TICK_SECONDS", "0.2"))


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _tick() -> None:
    n = 0
    while True:
        time.sleep(INTERVAL)
        n += 1
        print(f"tick {n}", flush=True)


if __name__ == "__main__":
    print("ticker started", flush=True)
    threading.Thread(target=_tick, daemon=True).start()
    http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])),
                                    _Ok).serve_forever()
