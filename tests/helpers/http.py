"""A local HTTP server that answers from a script: for testing retries and probes."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

# One scripted answer: (status, headers, body); after the script, 200 b"ok".
Answer = tuple[int, dict[str, str], bytes]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, ScriptServer)
        server.hits.append(time.monotonic())
        status, headers, body = server.script.pop(0) if server.script else (200, {}, b"ok")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class ScriptServer(http.server.ThreadingHTTPServer):
    def __init__(self, script: list[Answer]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.hits: list[float] = []  # monotonic time of every request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


@contextlib.contextmanager
def scripted_server(script: list[Answer]) -> Iterator[ScriptServer]:
    server = ScriptServer(script)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
