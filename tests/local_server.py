"""A fault-injecting HTTP server on 127.0.0.1 for download tests (standard library only)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest


@dataclass
class Route:
    """What the server answers for one path.

    ``faults`` are consumed one per request: ``"500"``, ``"cut:K"`` (send K body bytes then close),
    ``"stall:S"`` (say nothing for S s), ``"stallbody:K"`` (send K bytes then stall),
    ``"norange"`` (ignore Range, answer 200). ``status`` != 200 is answered on every request.
    """

    body: bytes
    status: int = 200
    faults: list[str] = field(default_factory=list)
    honor_range: bool = True


class _Handler(http.server.BaseHTTPRequestHandler):
    server: LocalServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _answer(self) -> None:
        route = self.server.routes.get(self.path)
        rng = self.headers.get("Range")
        self.server.log.append((self.path, rng))
        if route is None:
            self.send_error(404)
            return
        fault = route.faults.pop(0) if route.faults else ""
        if route.status != 200 or fault == "500":
            self.send_error(route.status if route.status != 200 else 500)
            return
        if fault.startswith("stall:"):
            self.server.stop.wait(float(fault.split(":")[1]))
            return
        body, start = route.body, 0
        if rng and route.honor_range and fault != "norange":
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')
        self.end_headers()
        if fault.startswith(("cut:", "stallbody:")):
            k = int(fault.split(":")[1])
            self.wfile.write(payload[:k])
            self.wfile.flush()
            if fault.startswith("stallbody:"):
                self.server.stop.wait(5)
            self.close_connection = True
            return
        self.wfile.write(payload)


class LocalServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.log: list[tuple[str, str | None]] = []
        self.stop = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def add(self, path: str, body: bytes, **kw: object) -> str:
        self.routes[path] = Route(body, **kw)  # type: ignore[arg-type]
        return self.url(path)

    def hits(self, path: str) -> list[str | None]:
        return [r for p, r in self.log if p == path]


@pytest.fixture
def server() -> Iterator[LocalServer]:
    srv = LocalServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()


