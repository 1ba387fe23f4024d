"""A real HTTP file server on 127.0.0.1 for the download tests, with a cut connection on demand.

``FileServer(payload, cut={1})`` serves ``payload`` at ``/files/<name>``; the
requests numbered in ``cut`` (1 = the first) send half of what they promise
and then close the connection, as a dropped transfer does. ``ranges=False``
makes it ignore ``Range`` headers (some servers do). Every request's ``Range``
header is recorded in ``requests``.
"""
from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional, Set


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv: "FileServer" = self.server.owner
        with srv.lock:
            srv.requests.append(self.headers.get("Range"))
            number = len(srv.requests)
        if self.path != srv.path:
            self.send_error(404, "no such file")
            return
        data, start = srv.payload, 0
        m = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if m and srv.ranges:
            start = int(m.group(1))
            if start >= len(data):
                self.send_error(416, "range not satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes" if srv.ranges else "none")
        self.end_headers()
        if number in srv.cut:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True  # the client sees fewer bytes than Content-Length
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output clean
        pass


class FileServer:
    def __init__(self, payload: bytes, name: str = "model.pth", cut: Optional[Set[int]] = None, ranges: bool = True):
        self.payload = payload
        self.path = f"/files/{name}"
        self.cut = set(cut or ())
        self.ranges = ranges
        self.requests: List[Optional[str]] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
