"""A base for the small stand-in HTTP servers of the client tests (no State Server behind)."""

from __future__ import annotations

import http.server
import json


class JSONStubHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive: read a JSON body, answer with JSON, log nothing."""

    protocol_version = "HTTP/1.1"

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers["Content-Length"]))

    def read_json(self) -> dict:
        return json.loads(self.read_body())

    def reply(self, body: bytes | dict, status: int = 200) -> None:
        """One answer with a Content-Length (a dict is sent as JSON)."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass
